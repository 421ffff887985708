"""python -m device --monitor: a first look at a broker in the field.

Subscribes to ``<mqtt.topic_prefix>/#`` with the connection settings of config.yaml (host,
port, TLS, user and password) and prints one line per message, for every device on the
broker: availability changes, events (each opening and closing once, however often QoS 1 delivers
it) and health states. Ctrl-C (or SIGTERM) ends it with exit status 0.

The broker is not trusted: any payload (wrong types, Infinity, deep nesting, not JSON) gives
a line, never a crash, and control characters in topics, labels and sources are printed
escaped (``\x1b``), so a message cannot drive the terminal.

    23:00:01 pi-garden   online
    23:00:01 pi-garden   state    rtf 0.0007  overflows 0  outbox 0  dropped 0  up 3600 s
    23:00:06 pi-garden   event    #7 call 2.50-5.00 s  peak 0.97  a.mp3  2026-11-22T23:00:05.500Z
"""

from __future__ import annotations

import json
import logging
import math
import re
import signal
import sys
import threading
import time
from collections import OrderedDict
from typing import Any, TextIO

from device.config import Config, ConfigError
from device.mqtt import describe_connect_error, make_client

SEEN_IDS = 10000
"""Event ids remembered for de-duplication."""


MAX_FIELD = 120
"""Characters of one printed field at most (a label, a source)."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def clean(value: Any) -> str:
    """``value`` as printable text: control characters (C0, C1, line and bidi controls)
    escaped as ``\\xNN`` / ``\\uNNNN``, at most MAX_FIELD characters."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_FIELD:
        text = text[:MAX_FIELD] + "..."
    return _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)


def _number(value: Any, fmt: str) -> str:
    """``value`` formatted, or "-" when it is not a finite number of the expected kind."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        if fmt == "d":
            if not value.is_integer():
                return "-"
            value = int(value)
    try:
        return format(value, fmt)
    except (ValueError, OverflowError):
        return "-"


def format_state(state: dict) -> str:
    """The health fields worth a glance, in one line."""
    parts = [f"rtf {_number(state.get('realtime_factor'), '.4f')}",
             f"overflows {_number(state.get('overflows'), 'd')}",
             f"outbox {_number(state.get('outbox_depth'), 'd')}",
             f"dropped {_number(state.get('dropped_events'), 'd')}"]
    if _number(state.get("uptime_s"), ".0f") != "-":
        parts.append(f"up {_number(state['uptime_s'], '.0f')} s")
    if _number(state.get("cpu_temp_c"), ".1f") != "-":
        parts.append(f"cpu {_number(state['cpu_temp_c'], '.1f')} C")
    degraded = state.get("degraded")
    if isinstance(degraded, dict) and degraded:
        parts.append("degraded: " + clean(", ".join(map(str, degraded))))
    stalled = state.get("stalled")
    if isinstance(stalled, list) and stalled:
        parts.append("STALLED: " + clean("; ".join(map(str, stalled))))
    return "  ".join(parts)


def format_event(event: dict) -> str:
    return (f"#{_number(event.get('seq'), 'd')} {clean(event.get('label'))} "
            f"{_number(event.get('start_s'), '.2f')}-{_number(event.get('end_s'), '.2f')} s  "
            f"peak {_number(event.get('peak_score'), '.2f')}  {clean(event.get('source'))}  "
            f"{clean(event.get('start_utc'))}")


class Monitor:
    """Turns messages into lines (separate from the connection, so tests can feed it)."""

    def __init__(self, prefix: str, out: TextIO) -> None:
        self.prefix = prefix.rstrip("/")
        self.out = out
        self._seen: OrderedDict[str, None] = OrderedDict()

    def line(self, device: str, kind: str, text: str = "") -> None:
        print(f"{time.strftime('%H:%M:%S')} {clean(device):<12} {clean(kind):<8} {text}".rstrip(),
              file=self.out, flush=True)

    def on_message(self, topic: str, payload: bytes) -> None:
        """One line for a message of ``<prefix>/<device>/<kind>``; never raises."""
        try:
            self._on_message(topic, payload)
        except Exception as exc:  # noqa: BLE001 - a hostile message must not end the monitor
            self.line("?", "invalid", clean(f"{topic}: {type(exc).__name__}"))

    def _on_message(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        if len(parts) != len(self.prefix.split("/")) + 2:
            return
        device, kind = parts[-2], parts[-1]
        text = payload.decode("utf-8", errors="replace")
        if kind == "availability":
            self.line(device, clean(text) or "(cleared)")
            return
        if kind not in ("events", "state"):
            return
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            self.line(device, kind, f"(not JSON: {text[:80]!r})")  # repr escapes controls
            return
        if not isinstance(data, dict):
            return
        if kind == "state":
            self.line(device, "state", format_state(data))
            return
        # An event comes twice, opening and closing (schema 2); older daemons send it once.
        event_id = f"{data.get('event_id')}/{data.get('state', 'closed')}"
        if event_id in self._seen:
            return  # a QoS 1 repeat
        self._seen[event_id] = None
        while len(self._seen) > SEEN_IDS:
            self._seen.popitem(last=False)
        self.line(device, "open" if data.get("state") == "open" else "event", format_event(data))


def run_monitor(cfg: Config, *, out: TextIO | None = None) -> int:
    """Subscribe and print until interrupted. Returns the exit status (0; 2 for bad settings)."""
    out = sys.stdout if out is None else out
    mqtt_cfg = cfg.mqtt
    prefix = mqtt_cfg.topic_prefix.rstrip("/")
    monitor = Monitor(prefix, out)
    try:
        client, _ = make_client(mqtt_cfg, client_id="")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    where = f"{mqtt_cfg.host}:{mqtt_cfg.port}"
    last_error: list[str] = []

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            report(f"{where} refused the connection: {reason_code}")
            return
        last_error.clear()
        print(f"connected to {where}, watching {prefix}/# (Ctrl-C ends)", file=sys.stderr,
              flush=True)
        client.subscribe(f"{prefix}/#", qos=1)

    def on_connect_fail(client, userdata):
        report(describe_connect_error(sys.exception(), host=mqtt_cfg.host))

    def report(reason: str) -> None:
        if last_error != [reason]:  # once per reason, not once per retry
            print(f"monitor: {reason}; retrying", file=sys.stderr, flush=True)
            last_error[:] = [reason]

    client.on_connect = on_connect
    client.on_connect_fail = on_connect_fail
    client.on_message = lambda c, u, msg: monitor.on_message(msg.topic, msg.payload)
    client.reconnect_delay_set(*mqtt_cfg.reconnect_s)  # type: ignore[arg-type]  # paho stubs say int; it waits float seconds
    logging.getLogger("paho").setLevel(logging.WARNING)
    # Ctrl-C and SIGTERM only set a flag: paho's network thread may hold its locks at the
    # moment a signal lands, so the client is stopped from here, never from the handler.
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: stop.set())
    client.connect_async(mqtt_cfg.host, mqtt_cfg.port, keepalive=mqtt_cfg.keepalive_s)
    client.loop_start()  # connects, retries and reconnects in paho's thread
    try:
        while not stop.wait(0.5):
            pass
    finally:
        client.disconnect()
        client.loop_stop()
    return 0
