"""The retained state message: the daemon's health plus what the MQTT sink knows.

Called on the publisher thread (every ``mqtt.state_interval_s`` and at close) and by anyone
asking ``MqttSink.state()``; it only reads (the outbox under its own lock, counters that one
thread each writes), so it may run on any thread.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from device import __version__
from device.mqtt.outbox import Outbox

log = logging.getLogger("device.mqtt")


def state_payload(
    health: Callable[[], dict[str, Any]],
    *,
    device_id: str,
    outbox: Outbox,
    counters: dict[str, int],
    connected: bool,
    sink_uptime_s: float,
) -> dict[str, Any]:
    """The state JSON: the daemon's health (``health()``), plus ``device_id``, ``time_utc``,
    ``outbox_depth``, ``outbox_dropped`` (persisted), ``dropped_events`` (the daemon's queue
    drops + ``outbox_dropped``) and ``mqtt`` (connection counters, ``connected``,
    ``sink_uptime_s`` in seconds, ``version``). NaN and infinities become null."""
    try:
        snapshot = dict(health())
    except Exception as exc:  # noqa: BLE001 - a health bug must not stop publishing
        log.warning("mqtt: health() failed (%s); publishing the state without it", exc)
        snapshot = {}
    outbox_dropped = outbox.dropped
    queue_dropped = snapshot.get("dropped_events") or 0
    payload = {
        **snapshot,
        "device_id": device_id,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "outbox_depth": outbox.depth,
        # Every event lost on the way: the daemon's sink queue had no room, or the outbox.
        "dropped_events": queue_dropped + outbox_dropped,
        "outbox_dropped": outbox_dropped,
        "mqtt": {
            **counters,
            "connected": connected,
            "sink_uptime_s": round(sink_uptime_s, 1),
            "version": __version__,
        },
    }
    return finite(payload)


def finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null (json.dumps would write invalid JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value
