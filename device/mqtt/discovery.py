"""Home Assistant MQTT discovery: the retained config messages that make a detector appear.

One Home Assistant *device* per detector (``service.device_id``), with

- one entity per model label, reading the events topic: an ``event`` entity that fires when an
  event of its label opens (event type = the label, attributes peak_score, start_utc, event_id,
  seq, source), or a ``binary_sensor`` (device class ``sound``) that turns on when an event of
  its label opens and off when it closes (events are sent at both, schema 2);
- diagnostic sensors reading the state topic: real-time factor (processing seconds per second
  of audio), audio overflows, outbox depth and dropped events.

Every entity is linked to the availability topic, so it shows "unavailable" when the daemon is
gone (last will). The format is Home Assistant's single-component discovery:
``<prefix>/<component>/<node_id>/<object_id>/config``, retained, JSON; an empty retained
payload removes the entity. Since every label shares one events topic, each label's
``value_template`` renders nothing for other labels' events, which Home Assistant ignores.

The config topics published last time are kept in ``<state_dir>/discovery.json``, so that an
entity whose label left the model (or whose entity kind changed) is removed on the next start.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from device import __version__

STATE_FILE = "discovery.json"

DIAGNOSTIC_SENSORS = (
    # (state key, name, unit, state_class, icon)
    ("realtime_factor", "Real-time factor", None, "measurement", "mdi:speedometer"),
    ("overflows", "Audio overflows", None, "total_increasing", "mdi:waveform"),
    ("outbox_depth", "Outbox depth", "events", "measurement", "mdi:tray-full"),
    ("dropped_events", "Dropped events", "events", "total_increasing", "mdi:delete-alert"),
)
"""Keys of the state JSON that become diagnostic sensors (see device/mqtt.py for the state)."""

EVENT_ATTRIBUTES = ("peak_score", "start_utc", "start_s", "end_s", "source", "event_id", "seq")
"""Event fields an ``event`` entity carries as attributes."""


def object_id(name: str) -> str:
    """``name`` reduced to what Home Assistant allows in a discovery topic: [a-zA-Z0-9_-]."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", name) or "_"


def discovery_configs(
    *,
    prefix: str,
    base_topic: str,
    device_id: str,
    labels: list[str],
    entity: str,
) -> dict[str, dict]:
    """Config topic -> config payload for every entity of one detector.

    ``prefix``: the discovery prefix (``homeassistant``). ``base_topic``: ``<topic_prefix>/
    <device_id>``. ``entity``: ``"event"`` or ``"binary_sensor"``.
    """
    node = f"callwatch_{object_id(device_id)}"
    availability = {
        "availability_topic": f"{base_topic}/availability",
        "payload_available": "online",
        "payload_not_available": "offline",
    }
    common = {
        **availability,
        "device": {
            "identifiers": [node],
            "name": f"callwatch {device_id}",
            "manufacturer": "callwatch",
            "model": "call detector",
            "sw_version": __version__,
        },
        "origin": {"name": "callwatch", "sw_version": __version__},
        "qos": 1,
    }
    configs: dict[str, dict] = {}
    for label in labels:
        match = f"value_json.label == {json.dumps(label)}"
        opening = f"{match} and value_json.state != 'closed'"
        config = {
            **common,
            "name": label,
            "unique_id": f"{node}_label_{object_id(label)}",
            "state_topic": f"{base_topic}/events",
        }
        if entity == "event":
            attributes = ", ".join(f"'{key}': value_json.{key}" for key in EVENT_ATTRIBUTES)
            config["event_types"] = [label]
            fields = f"{{'event_type': value_json.label, {attributes}}}"
            config["value_template"] = f"{{% if {opening} %}}{{{{ {fields} | tojson }}}}{{% endif %}}"
            config["icon"] = "mdi:bird"
        else:
            config["device_class"] = "sound"
            config["value_template"] = (
                f"{{% if {match} %}}{{{{ 'OFF' if value_json.state == 'closed' else 'ON' }}}}{{% endif %}}"
            )
        configs[f"{prefix}/{entity}/{node}/{object_id(label)}/config"] = config
    for key, name, unit, state_class, icon in DIAGNOSTIC_SENSORS:
        config = {
            **common,
            "name": name,
            "unique_id": f"{node}_{key}",
            "state_topic": f"{base_topic}/state",
            # .get: a key the daemon does not report renders "None", which HA shows as unknown.
            "value_template": f"{{{{ value_json.get('{key}') }}}}",
            "entity_category": "diagnostic",
            "state_class": state_class,
            "icon": icon,
        }
        if unit:
            config["unit_of_measurement"] = unit
        configs[f"{prefix}/sensor/{node}/{key}/config"] = config
    return configs


def load_published(state_dir: Path) -> set[str]:
    """Config topics published by the last run (empty if none or unreadable)."""
    try:
        data = json.loads((Path(state_dir) / STATE_FILE).read_text())
        return set(data.get("topics", []))
    except (OSError, ValueError, AttributeError):
        return set()


def save_published(state_dir: Path, topics: set[str], *, labels: list[str]) -> None:
    """Remember the config topics now on the broker (atomically: write, then rename)."""
    path = Path(state_dir) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps({"labels": labels, "topics": sorted(topics)}, indent=1))
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)  # a full disk leaves no half-written file behind
        except OSError:
            pass
        raise
