"""Home Assistant MQTT discovery: config payloads, their templates, and removal of old labels."""

from __future__ import annotations

import json

import pytest
from broker import Broker, Subscriber, sample_event

from device.config import validate
from device.mqtt import MqttSink
from device.mqtt.discovery import discovery_configs

BASE = "callwatch/pi-1"


def configs(entity: str = "event", labels=("capuchin", "frog call")) -> dict[str, dict]:
    return discovery_configs(prefix="homeassistant", base_topic=BASE, device_id="pi-1",
                             labels=list(labels), entity=entity)


def test_one_device_an_entity_per_label_and_diagnostic_sensors():
    found = configs()
    assert sorted(found) == [
        "homeassistant/event/callwatch_pi-1/capuchin/config",
        "homeassistant/event/callwatch_pi-1/frog_call/config",
        "homeassistant/sensor/callwatch_pi-1/dropped_events/config",
        "homeassistant/sensor/callwatch_pi-1/outbox_depth/config",
        "homeassistant/sensor/callwatch_pi-1/overflows/config",
        "homeassistant/sensor/callwatch_pi-1/realtime_factor/config",
    ]
    unique_ids = [c["unique_id"] for c in found.values()]
    assert len(set(unique_ids)) == len(unique_ids)
    for config in found.values():
        assert config["device"]["identifiers"] == ["callwatch_pi-1"]
        assert config["availability_topic"] == f"{BASE}/availability"
        assert config["payload_available"] == "online"
        assert config["payload_not_available"] == "offline"
    event = found["homeassistant/event/callwatch_pi-1/frog_call/config"]
    assert event["state_topic"] == f"{BASE}/events" and event["event_types"] == ["frog call"]
    sensor = found["homeassistant/sensor/callwatch_pi-1/outbox_depth/config"]
    assert sensor["state_topic"] == f"{BASE}/state" and sensor["entity_category"] == "diagnostic"


def test_binary_sensor_variant_needs_no_off_delay():
    found = configs("binary_sensor", labels=["capuchin"])
    config = found["homeassistant/binary_sensor/callwatch_pi-1/capuchin/config"]
    assert "off_delay" not in config and config["device_class"] == "sound"
    assert config["state_topic"] == f"{BASE}/events"


def render(template: str, payload: dict) -> str:
    """Render a value_template as Home Assistant does (Jinja2, the payload as value_json)."""
    sandbox = pytest.importorskip("jinja2.sandbox")  # test-only; HA's templates are Jinja2
    env = sandbox.ImmutableSandboxedEnvironment()
    return env.from_string(template).render(value_json=payload, value=json.dumps(payload))


def test_templates_select_their_own_label():
    event = {**sample_event(7, label="frog call").to_dict(), "state": "open"}
    closed = {**event, "state": "closed"}
    found = configs()

    def template(kind: str, name: str) -> str:
        return configs(kind)[f"homeassistant/{kind}/callwatch_pi-1/{name}/config"]["value_template"]

    mine = json.loads(render(template("event", "frog_call"), event))
    assert mine["event_type"] == "frog call" and mine["peak_score"] == event["peak_score"]
    assert mine["event_id"] == event["event_id"] and mine["seq"] == 7
    assert render(template("event", "capuchin"), event) == ""  # HA ignores an empty result
    assert render(template("binary_sensor", "frog_call"), event) == "ON"
    assert render(template("binary_sensor", "capuchin"), event) == ""
    # The event entity fires at onset only; the binary sensor turns off when the event closes.
    assert render(template("event", "frog_call"), closed) == ""
    assert render(template("binary_sensor", "frog_call"), closed) == "OFF"
    assert render(template("binary_sensor", "capuchin"), closed) == ""

    depth = found["homeassistant/sensor/callwatch_pi-1/outbox_depth/config"]["value_template"]
    assert render(depth, {"outbox_depth": 3}) == "3"
    assert render(depth, {}) == "None"  # Home Assistant shows "unknown"


@pytest.fixture
def broker(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    yield broker
    broker.stop()


def run_sink(broker: Broker, state_dir, labels, **discovery) -> None:
    cfg = validate({"mqtt": broker.mqtt_config(discovery=discovery)})
    sub = Subscriber(broker, "callwatch/pi-1/events")
    sink = MqttSink(cfg.mqtt, device_id="pi-1", labels=labels, state_dir=state_dir, health=dict)
    sink.on_event(sample_event(0, device_id="pi-1", label=labels[0]))
    assert sub.wait_for(lambda s: s.messages, 5)  # connected, discovery sent before the event
    sink.close()
    sub.close()


def retained(broker: Broker, topic: str = "homeassistant/#") -> dict[str, dict]:
    """What a newcomer (Home Assistant after a restart) gets from the broker."""
    sub = Subscriber(broker, topic)
    sub.wait_for(lambda s: False, 0.5)
    sub.close()
    return {m.topic: json.loads(m.payload) for m in sub.messages if m.retain and m.payload}


def test_retained_configs_and_removal_of_labels_gone_from_the_model(broker, tmp_path):
    state = tmp_path / "state"
    run_sink(broker, state, ["capuchin", "frog"])
    first = retained(broker)
    assert set(first) == set(configs(labels=["capuchin", "frog"]))

    run_sink(broker, state, ["capuchin"])  # the new model lost "frog"
    second = retained(broker)
    assert "homeassistant/event/callwatch_pi-1/frog/config" not in second
    assert set(second) == set(configs(labels=["capuchin"]))
    assert json.loads((state / "discovery.json").read_text())["labels"] == ["capuchin"]

    run_sink(broker, state, ["capuchin"], entity="binary_sensor")  # entity kind changed
    third = retained(broker)
    assert set(third) == set(configs("binary_sensor", labels=["capuchin"]))


def test_discovery_can_be_turned_off(broker, tmp_path):
    run_sink(broker, tmp_path / "state", ["capuchin"], enabled=False)
    assert retained(broker) == {}
    assert retained(broker, "callwatch/pi-1/state")["callwatch/pi-1/state"]["device_id"] == "pi-1"
