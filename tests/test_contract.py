"""The MQTT contract, frozen: event JSON keys, the schema file, topic names, state keys.

Dashboards, Node-RED flows and Home Assistant read these names. Changing one here means a
new ``schema`` number and a line in the README, not a quiet edit.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from broker import Broker, sample_event

from device.config import validate
from device.events import EVENT_SCHEMA, Event
from device.health import Health
from device.mqtt import MqttSink, device_topics
from device.mqtt.discovery import DIAGNOSTIC_SENSORS

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "docs" / "event.schema.json"

EVENT_KEYS = ["schema", "event_id", "seq", "device_id", "label", "start_s", "end_s",
              "peak_score", "source", "start_utc", "clock_synced", "mono_s", "site", "time_source",
              "replay", "state"]
STATE_KEYS = {"device_id", "time_utc", "outbox_depth", "outbox_dropped", "dropped_events", "mqtt"}
STATE_MQTT_KEYS = {"connects", "connect_failures", "disconnects", "events_published",
                   "outbox_write_errors", "connected", "sink_uptime_s", "version"}


def test_event_json_keys_are_frozen():
    event = sample_event(3)
    assert list(json.loads(event.to_json())) == EVENT_KEYS
    assert Event.from_json(event.to_json()) == event
    assert EVENT_SCHEMA == 3


def test_topics_are_frozen():
    topics = device_topics("callwatch", "pi-garden")
    assert (topics.availability, topics.events, topics.state) == (
        "callwatch/pi-garden/availability", "callwatch/pi-garden/events",
        "callwatch/pi-garden/state")
    assert device_topics("site/a/", "pi").events == "site/a/pi/events"


def _check(schema: dict, value, path: str = "$") -> list[str]:
    """The subset of JSON Schema the event schema uses (no third-party validator needed)."""
    errors = []
    types = {"object": dict, "string": str, "boolean": bool, "number": (int, float), "integer": int,
             "null": type(None)}
    kinds = schema.get("type")
    if kinds:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        is_bool = isinstance(value, bool)
        if not any(isinstance(value, types[kind]) and not (kind in ("number", "integer") and is_bool)
                   for kind in kinds):
            return [f"{path}: not {' or '.join(kinds)}"]
        if value is None:
            return []
        kind = next(k for k in kinds if isinstance(value, types[k]))
    else:
        kind = None
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: not one of {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: not {schema['const']!r}")
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{path}: below {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        errors.append(f"{path}: above {schema['maximum']}")
    if "minLength" in schema and len(value) < schema["minLength"]:
        errors.append(f"{path}: too short")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(f"{path}: does not match {schema['pattern']}")
    if kind == "object":
        errors += [f"{path}.{k}: missing" for k in schema.get("required", []) if k not in value]
        if schema.get("additionalProperties") is False:
            errors += [f"{path}.{k}: not allowed" for k in value if k not in schema["properties"]]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += _check(sub, value[key], f"{path}.{key}")
    return errors


def test_schema_file_matches_the_event():
    schema = json.loads(SCHEMA_FILE.read_text())
    assert list(schema["properties"]) == EVENT_KEYS
    assert schema["required"] == EVENT_KEYS and schema["additionalProperties"] is False
    assert schema["properties"]["schema"]["const"] == EVENT_SCHEMA
    for name, prop in schema["properties"].items():
        assert prop.get("description"), f"{name} needs a description"
    assert _check(schema, json.loads(sample_event(0).to_json())) == []
    # A replayed recording whose time is unknown: no invented start_utc.
    unknown = {**sample_event(0).to_dict(), "start_utc": None, "time_source": None,
               "replay": True, "site": "SiteA", "clock_synced": False}
    assert _check(schema, unknown) == []


@pytest.mark.parametrize("change, error", [
    ({"extra": 1}, "$.extra: not allowed"),
    ({"seq": "7"}, "$.seq: not integer"),
    ({"peak_score": 1.5}, "$.peak_score: above 1"),
    ({"start_utc": "2026-11-22 23:00:00"}, "$.start_utc: does not match"),
    ({"clock_synced": 1}, "$.clock_synced: not boolean"),
    ({"time_source": "guess"}, "$.time_source: not one of"),
    ({"replay": None}, "$.replay: not boolean"),
    ({"site": 3}, "$.site: not string or null"),
    ({"state": "half"}, "$.state: not one of"),
    ({"schema": 2}, "$.schema: not 3"),
])
def test_schema_refuses_what_the_contract_does_not_allow(change, error):
    schema = json.loads(SCHEMA_FILE.read_text())
    payload = {**sample_event(0).to_dict(), **change}
    assert any(e.startswith(error) for e in _check(schema, payload))
    missing = sample_event(0).to_dict()
    del missing["label"]
    assert _check(schema, missing) == ["$.label: missing"]


def test_state_keys_and_the_sensors_that_read_them(tmp_path):
    """The state JSON carries the frozen keys, and every Home Assistant diagnostic sensor
    reads a key that the daemon's health or the sink really publishes."""
    cfg = validate({"mqtt": Broker(tmp_path / "b").mqtt_config()})  # no broker: state() only
    sink = MqttSink(cfg.mqtt, device_id="pi-1", labels=["tone"], state_dir=tmp_path / "s",
                    health=Health().snapshot)
    try:
        state = sink.state()
    finally:
        sink.close()
    assert STATE_KEYS <= set(state) and set(state["mqtt"]) == STATE_MQTT_KEYS
    assert {"uptime_s", "realtime_factor", "overflows", "inference_ms_p50", "inference_ms_p99",
            "cpu_temp_c"} <= set(state), "DESIGN.md's health fields"
    assert {key for key, *_ in DIAGNOSTIC_SENSORS} <= set(state)
    json.dumps(state, allow_nan=False)
