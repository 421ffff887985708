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

:class:`Discovery` publishes them after each connect; it lives on the MQTT publisher thread
(device/mqtt/pump.py) and is called from nowhere else.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt

from device import __version__
from device.config import DiscoverySection
from device.fileio import write_atomic
from device.names import ID_CHARS, safe_name

if TYPE_CHECKING:
    from device.health import Degradations

log = logging.getLogger("device.mqtt")

STATE_FILE = "discovery.json"

DIAGNOSTIC_SENSORS = (
    # (state key, name, unit, state_class, icon)
    ("realtime_factor", "Real-time factor", None, "measurement", "mdi:speedometer"),
    ("overflows", "Audio overflows", None, "total_increasing", "mdi:waveform"),
    ("outbox_depth", "Outbox depth", "events", "measurement", "mdi:tray-full"),
    ("dropped_events", "Dropped events", "events", "total_increasing", "mdi:delete-alert"),
)
"""Keys of the state JSON that become diagnostic sensors (device/mqtt/state.py)."""

EVENT_ATTRIBUTES = ("peak_score", "start_utc", "start_s", "end_s", "source", "event_id", "seq")
"""Event fields an ``event`` entity carries as attributes."""


def object_id(name: str) -> str:
    """``name`` reduced to what Home Assistant allows in a discovery topic: [a-zA-Z0-9_-]."""
    return safe_name(name, allowed=ID_CHARS, squeeze=False, fallback="_")


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
            config["value_template"] = (
                f"{{% if {opening} %}}{{{{ {fields} | tojson }}}}{{% endif %}}"
            )
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
    write_atomic(path, json.dumps({"labels": labels, "topics": sorted(topics)}, indent=1))


class Discovery:
    """The discovery messages of one detector on the broker, and their record on disk.

    Publisher thread only. ``settings``: the ``mqtt.discovery`` section. ``storage``: where a
    state folder that cannot be written is reported, or None (logged only)."""

    def __init__(
        self,
        settings: DiscoverySection,
        *,
        base_topic: str,
        device_id: str,
        labels: list[str],
        state_dir: Path,
        storage: Degradations | None = None,
    ) -> None:
        self._settings = settings
        self._base_topic = base_topic
        self._device_id = device_id
        self._labels = list(labels)
        self._state_dir = Path(state_dir)
        self._storage = storage
        self._removals: set[int] = set()
        """Message ids of removals (empty retained configs) not yet acknowledged."""
        self._topics: set[str] = set()
        """The config topics of this run."""

    def publish(self, client: mqtt.Client) -> None:
        """Publish every config (retained) and an empty config for each entity the last run
        had and this one has not (after each connect)."""
        if not self._settings.enabled:
            return
        configs = discovery_configs(
            prefix=self._settings.prefix,
            base_topic=self._base_topic,
            device_id=self._device_id,
            labels=self._labels,
            entity=self._settings.entity,
        )
        stale = load_published(self._state_dir) - configs.keys()
        self._topics = set(configs)
        self._removals = set()
        for topic in sorted(stale):
            # An empty retained config removes the entity (a label left the model).
            self._removals.add(client.publish(topic, "", qos=1, retain=True).mid)
        for topic, config in configs.items():
            client.publish(topic, json.dumps(config), qos=1, retain=True)
        # Stale topics stay remembered until their removal is acknowledged.
        self._save(set(configs) | stale)
        if stale:
            log.info("mqtt discovery: removing %d entities no longer in the model", len(stale))

    def acked(self, mid: int) -> None:
        """A PUBACK that is not an event's: once every removal is acknowledged, the record
        forgets the removed topics."""
        if mid in self._removals:
            self._removals.discard(mid)
            if not self._removals:
                self._save(self._topics)

    def _save(self, topics: set[str]) -> None:
        """Remember the published discovery topics; a state folder that cannot be written only
        costs the removal of stale entities after a later model change."""
        try:
            save_published(self._state_dir, topics, labels=self._labels)
        except OSError as exc:
            if self._storage is not None:
                self._storage.failed(
                    "discovery record", exc, fallback="discovery topics are not remembered"
                )
            else:
                log.warning("mqtt discovery: cannot write its record (%s)", exc.strerror or exc)
        else:
            if self._storage is not None:
                self._storage.ok("discovery record")
