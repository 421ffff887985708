"""The MQTT sink: events, health and availability to a broker, losing nothing on the way.

Topics (``<p>`` = ``<mqtt.topic_prefix>/<device_id>``)::

    <p>/availability   retained "online" on connect; "offline" as last will and on shutdown
    <p>/events         QoS 1, not retained: Event.to_json() (event_id and seq for de-duplication)
    <p>/state          retained health JSON every mqtt.state_interval_s

Delivery: :meth:`MqttSink.on_event` commits the event to the durable outbox
(:mod:`device.outbox`) and returns; a publisher thread hands the oldest rows to paho, at most
``WINDOW`` at a time, and deletes a row when its PUBACK arrives (paho mid -> row id). Paho keeps
unacknowledged QoS 1 messages of its session in memory and sends them again, in order and with
the DUP flag, after a reconnect; the publisher waits for those to be acknowledged before it
hands over newer rows, so the order holds. After a restart, everything left in the outbox is
published again from the oldest row. A subscriber may see an event twice (QoS 1, or a kill
between PUBACK and delete), always with the same ``event_id``.

Connection: paho-mqtt 2.x, ``CallbackAPIVersion.VERSION2``, ``connect_async`` + ``loop_start``;
paho's own thread retries a failed first connect and every lost connection, waiting
``reconnect_delay_set(first, longest)`` (paho doubles the wait from ``first`` up to
``longest``, and resets it after a successful CONNACK). Paho adds no jitter, so
``on_pre_connect`` waits a further random 0..50 % of the current step: a fleet that lost its
broker together does not come back in lockstep. A refused login or a TLS failure is logged as
one line naming the setting to check, repeated only when the reason changes or every
``REPEAT_LOG_S``; the daemon keeps running and keeps retrying.

Threads: ``on_event`` / ``close`` from the sink thread; paho callbacks on paho's network
thread only put notes on a queue (a callback runs with paho's locks held, so it must not call
back into paho or wait for us); the publisher thread does all the outbox and publish work.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import random
import socket
import sqlite3
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from device import __version__
from device.config import ConfigError
from device.mqtt.discovery import discovery_configs, load_published, save_published
from device.events import Event, WindowScores
from device.mqtt.outbox import Outbox

log = logging.getLogger(__name__)

WINDOW = 100
"""Events handed to paho at once (also its in-flight limit): bounds memory while the broker
is away."""
FLUSH_TIMEOUT_S = 2.0
"""close() waits at most this long for the outbox to drain before it disconnects."""
JITTER = 0.5
"""Extra random wait before a reconnect, as a fraction of the current backoff step."""
HOLD_LIMIT_S = 10.0
"""After a reconnect, newer rows wait at most this long for paho's re-sent rows to be acked."""
REPEAT_LOG_S = 60.0
"""The same connection failure is logged again (as a warning, with the attempts since) at most
this often."""
STALL_S = 120.0
"""Connected, events waiting, and no PUBACK for this long: publishing is reported stalled (the
systemd watchdog is then no longer fed)."""
MAX_BACKOFF_DOUBLINGS = 30
"""The jitter's backoff step stops doubling here (2**30 steps is beyond any longest wait):
the arithmetic stays small however many connects fail."""
MIB = 1024 * 1024


@dataclass(frozen=True)
class Topics:
    """The topics of one device."""

    base: str
    """``<topic_prefix>/<device_id>``"""

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def state(self) -> str:
        return f"{self.base}/state"


def device_topics(topic_prefix: str, device_id: str) -> Topics:
    return Topics(f"{topic_prefix.rstrip('/')}/{device_id}")


def mqtt_section(cfg: Any) -> Any:
    """The ``mqtt`` section, given either the whole config or the section itself."""
    return cfg.mqtt if "mqtt" in cfg else cfg


def read_password(mqtt_cfg: Any, *,
                  environ: dict[str, str] | None = None) -> tuple[str | None, str]:
    """The broker password and where it came from: ``mqtt.password_file`` if set, else the
    systemd credential ``$CREDENTIALS_DIRECTORY/<mqtt.password_credential>`` if present, else
    None. A trailing newline is not part of the password. Raises ConfigError for a
    password_file that cannot be read."""
    env = os.environ if environ is None else environ
    if mqtt_cfg.password_file:
        path = Path(mqtt_cfg.password_file)
        try:
            password = path.read_text().rstrip("\r\n")
            mode = path.stat().st_mode
        except OSError as exc:
            raise ConfigError(f"mqtt.password_file: cannot read {path} ({exc.strerror})") from None
        if mode & 0o077:
            log.warning("mqtt.password_file %s can be read by group or others (mode %03o): "
                        "chmod 600 it", path, mode & 0o777)
        return password, f"mqtt.password_file ({path})"
    creds = env.get("CREDENTIALS_DIRECTORY")
    if creds:
        path = Path(creds) / mqtt_cfg.password_credential
        if path.is_file():
            # install.sh lays down an empty credential file (LoadCredential= needs one):
            # empty means "no password", not the empty password.
            password = path.read_text().rstrip("\r\n") or None
            return password, f"credential {mqtt_cfg.password_credential}"
    return None, "nowhere (no mqtt.password_file, no $CREDENTIALS_DIRECTORY credential)"


def make_client(mqtt_cfg: Any, *, client_id: str) -> tuple[mqtt.Client, str]:
    """A paho client (VERSION2 callbacks, MQTT 3.1.1) with credentials and TLS set from the
    ``mqtt`` config section; returns it and where the password came from (for messages).
    Raises ConfigError for unreadable password, certificate or key files."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv311, clean_session=True)
    source = "none (no mqtt.username)"
    if mqtt_cfg.username:
        password, source = read_password(mqtt_cfg)
        if password is None:
            log.warning("mqtt.username is set but no password was found in %s; connecting "
                        "without one", source)
        client.username_pw_set(mqtt_cfg.username, password)
    tls = mqtt_cfg.tls
    if tls.enabled:
        for key in ("ca_file", "cert_file", "key_file"):
            path = tls[key]
            if path and not os.access(path, os.R_OK):
                raise ConfigError(f"mqtt.tls.{key}: cannot read {path}")
        try:
            client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file,
                           cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"mqtt.tls: cannot load the CA file, certificate or key ({exc})") from None
    return client, source


def describe_connect_error(exc: BaseException | None, *, host: str) -> str:
    """One line saying why a connection attempt failed and what to check."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"the TLS certificate of {host} was not accepted ({exc.verify_message}): check "
                "mqtt.tls.ca_file and that mqtt.host matches the certificate")
    if isinstance(exc, ssl.SSLError):
        return (f"the TLS handshake failed ({exc.reason or exc}): check mqtt.tls (CA, client "
                "certificate and key) and that the broker port speaks TLS")
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: is the broker running and listening on mqtt.port?"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve mqtt.host {host!r} ({exc.strerror})"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "the connection timed out: is the broker reachable?"
    if isinstance(exc, OSError):
        return f"cannot connect ({exc.strerror or exc})"
    return f"cannot connect ({exc})" if exc else "cannot connect"


def _finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null (json.dumps would write invalid JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class MqttSink:
    """The ``device.events.Sink`` that publishes to MQTT (see the module docstring)."""

    wants_open_events = True
    """Events are published as they open (a dashboard sees the call while it happens) and
    again, same event_id, when they close."""

    def __init__(self, cfg: Any, *, device_id: str, labels: list[str], state_dir: Path,
                 health: Callable[[], dict], replay: bool = False,
                 storage=None) -> None:
        """``replay``: events of a replay (python -m device --replay --mqtt), which never speak
        for the live recorder: topic ``<prefix>/<device_id>/replay/events``, a client id of
        their own, no availability, state or discovery messages, no last will.
        ``cfg``: the config (or its ``mqtt`` section). ``labels``: the model's labels (for
        Home Assistant discovery). ``state_dir``: folder for ``outbox.sqlite`` and
        ``discovery.json``. ``health``: returns the daemon's health counters (called from the
        publisher thread every ``mqtt.state_interval_s``). ``storage``: where a state folder
        that cannot be written is reported (device.health.Degradations), or None."""
        self._cfg = mqtt_section(cfg)
        self._device_id = device_id
        self._labels = list(labels)
        self._state_dir = Path(state_dir)
        self._health = health
        self._topics = device_topics(self._cfg.topic_prefix, device_id)
        self._replay = replay
        if replay:
            self._topics = Topics(f"{self._topics.base}/replay")
        self._storage = storage
        self._outbox = Outbox(self._state_dir / "outbox.sqlite", max_rows=self._cfg.outbox.max_rows,
                              max_bytes=int(self._cfg.outbox.max_mb * MIB), storage=storage)
        self._generation = self._outbox.generation
        self._first_s, self._longest_s = self._cfg.reconnect_s
        self._window = max(1, min(WINDOW, self._cfg.outbox.max_rows // 2))
        self._started = time.monotonic()

        self._queue: queue.Queue = queue.Queue()
        self._connected = False          # publisher thread's view
        self._link_up = threading.Event()  # paho thread's view, for close()
        self._first_result = threading.Event()
        self._stopping = threading.Event()
        self._closed = False
        self._in_flight: dict[int, int] = {}   # paho mid -> outbox row id
        self._in_flight_rows: frozenset[int] = frozenset()
        self._acked_rows: list[int] = []  # acknowledged, to be deleted in one transaction
        self._handed = 0                 # highest row id handed to paho
        self._hold_until = 0.0           # paho re-sends its in-flight rows first, after a reconnect
        self._discovery_removals: set[int] = set()
        self._discovery_topics: set[str] = set()
        self._failures = 0
        self._last_reason: str | None = None
        self._last_report = 0.0
        self._progress_mono = time.monotonic()  # last PUBACK of an event, or the last connect
        self.counters = {"connects": 0, "connect_failures": 0, "disconnects": 0,
                         "events_published": 0, "outbox_write_errors": 0}
        if self._outbox.depth:
            log.info("mqtt outbox holds %d events from before; they are published first",
                     self._outbox.depth)

        # One client id per device: after a power cut the broker may still hold the old
        # connection; taking its id over ends it now, instead of its last will overwriting
        # our "online" a keepalive later. (Two processes with one device_id would take turns.)
        client_id = f"callwatch-{device_id}-replay-{os.getpid()}" if replay else f"callwatch-{device_id}"
        self._client, self._password_source = make_client(self._cfg, client_id=client_id)
        client = self._client
        if not replay:
            client.will_set(self._topics.availability, "offline", qos=1, retain=True)
        client.reconnect_delay_set(self._first_s, self._longest_s)
        client.max_inflight_messages_set(self._window)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_pre_connect = self._on_pre_connect
        self._publisher = threading.Thread(target=self._run, name="mqtt-publisher", daemon=True)
        self._publisher.start()
        client.connect_async(self._cfg.host, self._cfg.port, keepalive=self._cfg.keepalive_s)
        client.loop_start()

    # -- Sink protocol (sink thread) ---------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Commit the event to the outbox (durable before this returns), then wake the publisher."""
        payload = event.to_json()
        try:
            dropped = self._outbox.put(self._topics.events, payload, keep=self._in_flight_rows)
        except sqlite3.Error as exc:
            # The disk is full or gone: the event cannot be made durable. Hand it to paho's
            # memory instead (delivered if this process lives until the broker is back).
            self.counters["outbox_write_errors"] += 1
            log.error("mqtt outbox %s cannot store event seq %d (%s); publishing it from "
                      "memory only", self._outbox.path, event.seq, exc)
            self._queue.put(("direct", payload))
            return
        if dropped:
            log.warning("mqtt outbox full (mqtt.outbox.max_rows %d, max_mb %g): dropped the %d "
                        "oldest events, %d dropped in all", self._outbox.max_rows,
                        self._cfg.outbox.max_mb, dropped, self._outbox.dropped)
        self._queue.put(("wake",))

    def on_scores(self, scores: WindowScores) -> None:
        """Window scores do not go to MQTT."""

    def on_source_end(self, source: str) -> None:
        """Nothing per source: events are published as they come."""

    def close(self) -> None:
        """Publish what can be published within FLUSH_TIMEOUT_S, the final state and
        "offline", then disconnect. What is not acknowledged stays in the outbox."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        self._queue.put(("wake",))
        while time.monotonic() < deadline and self._outbox.depth:
            if not self._link_up.is_set() and self._first_result.is_set():
                break  # the broker is away: nothing will drain now
            time.sleep(0.02)
        self._queue.put(("final", deadline))
        self._publisher.join(timeout=FLUSH_TIMEOUT_S + 1)
        self._stopping.set()
        self._client.disconnect()
        self._client.loop_stop()
        self._drain_notes()  # PUBACKs that came in after the publisher stopped
        if self._outbox.depth:
            log.info("mqtt: %d events stay in the outbox for the next start", self._outbox.depth)
        self._outbox.close()

    # -- paho callbacks (paho's thread: only notes on the queue, counters and log lines) -----

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        # An exception here would end paho's network thread for good: never let one out.
        try:
            if self._failures and not self._stopping.is_set():
                self._stopping.wait(random.uniform(0, JITTER * self._backoff_step()))
        except Exception:  # noqa: BLE001
            log.exception("mqtt: reconnect jitter failed (reconnecting without it)")

    def _backoff_step(self) -> float:
        """The current reconnect wait (seconds): first_s doubled per failure, up to longest_s."""
        doublings = min(max(self._failures - 1, 0), MAX_BACKOFF_DOUBLINGS)
        return min(self._first_s * 2.0 ** doublings, self._longest_s)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._first_result.set()
        if reason_code.is_failure:
            self.counters["connect_failures"] += 1
            self._report(f"{self._cfg.host}:{self._cfg.port} refused the connection: "
                         f"{reason_code} (check mqtt.username and the password from "
                         f"{self._password_source})")
            return
        if self._last_reason:
            log.info("mqtt: connected to %s:%d after %d failed attempts", self._cfg.host,
                     self._cfg.port, self._failures)
        else:
            log.info("mqtt: connected to %s:%d", self._cfg.host, self._cfg.port)
        self._failures = 0
        self._last_reason = None
        self._link_up.set()
        self._queue.put(("up",))

    def _on_connect_fail(self, client, userdata) -> None:
        # Paho calls this from inside its `except OSError` block, so the exception is current.
        self._first_result.set()
        self._failures += 1
        self.counters["connect_failures"] += 1
        try:
            self._report(describe_connect_error(sys.exception(), host=self._cfg.host))
        except Exception:  # noqa: BLE001 - paho's thread must survive a logging failure
            pass

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._first_result.set()
        was_up = self._link_up.is_set()
        self._link_up.clear()
        if self._stopping.is_set():
            return
        self._failures += 1
        if was_up:
            log.warning("mqtt: lost the connection to %s:%d (%s); events wait in the outbox",
                        self._cfg.host, self._cfg.port, reason_code)
            self._queue.put(("down",))
        elif self._last_reason is None or self._last_reason.startswith(
                (f"{self._where} accepted", f"{self._where} closed")):
            # (A refused login also ends in a disconnect: its own message stands.)
            if "keep alive" in str(reason_code).lower():
                # We gave up waiting: the port took the TCP connection and said nothing.
                self._report(f"{self._where} accepted the connection but never answered the "
                             f"MQTT handshake ({reason_code}): {self._closed_early_hint()}")
            else:
                self._report(f"{self._where} closed the connection before accepting it "
                             f"({reason_code}): {self._closed_early_hint()}")

    @property
    def _where(self) -> str:
        return f"{self._cfg.host}:{self._cfg.port}"

    def _closed_early_hint(self) -> str:
        if self._cfg.tls.enabled:
            # Typically a client certificate the broker rejects.
            return "check mqtt.tls.cert_file/key_file and the broker's log"
        return ("check that mqtt.port is the broker's plain MQTT port (not a TLS or other "
                "port; else set mqtt.tls.enabled) and the broker's log")

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._queue.put(("ack", mid))

    def _report(self, reason: str) -> None:
        """Log a connection failure once per reason (again, with the count of attempts since,
        after REPEAT_LOG_S), then debug."""
        now = time.monotonic()
        if reason != self._last_reason:
            log.warning("mqtt: %s; retrying with backoff (%g..%g s)", reason, self._first_s,
                        self._longest_s)
        elif now - self._last_report >= REPEAT_LOG_S:
            log.warning("mqtt: still cannot connect after %d attempts: %s; retrying every "
                        "%g s", self._failures, reason, self._backoff_step())
        else:
            log.debug("mqtt: %s", reason)
            return
        self._last_reason, self._last_report = reason, now

    # -- publisher thread ---------------------------------------------------------------------

    def _run(self) -> None:
        next_state = math.inf
        while True:
            wake_at = min(next_state, self._hold_until or math.inf)
            timeout = max(0.0, wake_at - time.monotonic()) if self._connected else None
            try:
                notes = [self._queue.get(timeout=timeout)]
            except queue.Empty:
                notes = [("tick",)]
            # Take what else is waiting, so a burst of PUBACKs costs one outbox transaction.
            while len(notes) < 1000:
                try:
                    notes.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for i, note in enumerate(notes):
                if note[0] == "final":
                    try:
                        self._finish(note[1], pending=notes[i + 1:])
                    except Exception:  # noqa: BLE001
                        log.exception("mqtt publisher: final state not published")
                    return
                try:
                    self._handle(note)
                except Exception:  # noqa: BLE001 - one note must not cost the others
                    log.exception("mqtt publisher: unexpected error on %s (continuing)", note[0])
                if self._connected and note[0] == "up":
                    next_state = time.monotonic()
            try:
                self._outbox.retry_disk()  # from memory back onto the disk (rate-limited)
                self._remove_acked()
                if self._connected and not self._replay and time.monotonic() >= next_state:
                    self._publish_state()
                    next_state = time.monotonic() + self._cfg.state_interval_s
                self._pump()
            except Exception:  # noqa: BLE001 - the publisher must outlive any one failure
                log.exception("mqtt publisher: unexpected error (continuing)")
                time.sleep(1.0)  # not a busy loop when the same error comes back at once

    def _handle(self, note: tuple) -> None:
        kind = note[0]
        if kind == "ack":
            self._acked(note[1])
        elif kind == "up":
            self._connected = True
            self.counters["connects"] += 1
            self._progress_mono = time.monotonic()
            # Paho sends its unacknowledged events again by itself; newer rows wait until
            # one of those is acknowledged, which proves the re-sending is under way first.
            if self._in_flight:
                self._hold_until = time.monotonic() + HOLD_LIMIT_S
            if not self._replay:
                self._client.publish(self._topics.availability, "online", qos=1, retain=True)
                self._publish_discovery()
        elif kind == "down":
            self._connected = False
            self.counters["disconnects"] += 1
        elif kind == "direct":
            self._client.publish(self._topics.events, note[1], qos=1)

    def _acked(self, mid: int) -> None:
        row_id = self._in_flight.pop(mid, None)
        if row_id is not None:
            self._hold_until = 0.0
            self._progress_mono = time.monotonic()
            self._acked_rows.append(row_id)
            self.counters["events_published"] += 1
        elif mid in self._discovery_removals:
            self._discovery_removals.discard(mid)
            if not self._discovery_removals:
                self._save_discovery(self._discovery_topics)

    def _save_discovery(self, topics: set[str]) -> None:
        """Remember the published discovery topics; a state folder that cannot be written only
        costs the removal of stale entities after a later model change."""
        try:
            save_published(self._state_dir, topics, labels=self._labels)
        except OSError as exc:
            if self._storage is not None:
                self._storage.failed("discovery record", exc,
                                     fallback="discovery topics are not remembered")
            else:
                log.warning("mqtt discovery: cannot write its record (%s)", exc.strerror or exc)
        else:
            if self._storage is not None:
                self._storage.ok("discovery record")

    def stalled(self) -> str | None:
        """Why publishing is not making progress, or None: the publisher thread is gone, or
        the broker is connected, events wait and none was acknowledged for STALL_S."""
        if not self._publisher.is_alive() and not self._closed:
            return "mqtt publisher thread stopped"
        if (self._link_up.is_set() and self._outbox.depth
                and time.monotonic() - self._progress_mono > STALL_S):
            return f"mqtt: connected but no event acknowledged for {STALL_S:g} s"
        return None

    def _remove_acked(self) -> None:
        if self._acked_rows:
            self._outbox.remove(self._acked_rows)
            self._acked_rows = []
            self._in_flight_rows = frozenset(self._in_flight.values())

    def _pump(self) -> None:
        """Hand the oldest rows not yet handed to paho, up to the window."""
        if not self._connected:
            return
        if self._outbox.generation != self._generation:
            # The outbox renumbered its rows (it came back from memory onto a disk that had
            # rows of its own): hand everything again; paho's copies may arrive twice.
            self._generation = self._outbox.generation
            self._in_flight.clear()
            self._handed = 0
            self._hold_until = 0.0
        if self._hold_until:
            if time.monotonic() < self._hold_until:
                return
            self._hold_until = 0.0
        room = self._window - len(self._in_flight)
        if room <= 0:
            return
        rows = self._outbox.peek(after=self._handed, limit=room)
        if not rows:
            return
        self._in_flight_rows = frozenset(self._in_flight.values()) | {r.id for r in rows}
        for row in rows:
            info = self._client.publish(row.topic, row.payload, qos=1)
            # NO_CONN: paho keeps the message and sends it after the reconnect.
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                log.warning("mqtt: publish of outbox row %d refused (%s); retrying later",
                            row.id, mqtt.error_string(info.rc))
                break
            self._in_flight[info.mid] = row.id
            self._handed = row.id
        self._in_flight_rows = frozenset(self._in_flight.values())

    def _publish_discovery(self) -> None:
        if not self._cfg.discovery.enabled:
            return
        d = self._cfg.discovery
        configs = discovery_configs(prefix=d.prefix, base_topic=self._topics.base,
                                    device_id=self._device_id, labels=self._labels,
                                    entity=d.entity)
        stale = load_published(self._state_dir) - configs.keys()
        self._discovery_topics = set(configs)
        self._discovery_removals = set()
        for topic in sorted(stale):
            # An empty retained config removes the entity (a label left the model).
            self._discovery_removals.add(self._client.publish(topic, "", qos=1, retain=True).mid)
        for topic, config in configs.items():
            self._client.publish(topic, json.dumps(config), qos=1, retain=True)
        # Stale topics stay remembered until their removal is acknowledged.
        self._save_discovery(set(configs) | stale)
        if stale:
            log.info("mqtt discovery: removing %d entities no longer in the model", len(stale))

    def state(self) -> dict:
        """The state JSON: the daemon's health (``health()``), plus ``device_id``, ``time_utc``,
        ``outbox_depth``, ``outbox_dropped`` (persisted), ``dropped_events`` (the daemon's
        queue drops + ``outbox_dropped``) and ``mqtt`` (connection counters)."""
        try:
            health = dict(self._health())
        except Exception as exc:  # noqa: BLE001 - a health bug must not stop publishing
            log.warning("mqtt: health() failed (%s); publishing the state without it", exc)
            health = {}
        outbox_dropped = self._outbox.dropped
        queue_dropped = health.get("dropped_events") or 0
        return _finite({
            **health,
            "device_id": self._device_id,
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "outbox_depth": self._outbox.depth,
            # Every event lost on the way: the daemon's sink queue had no room, or the outbox.
            "dropped_events": queue_dropped + outbox_dropped,
            "outbox_dropped": outbox_dropped,
            "mqtt": {**self.counters, "connected": self._link_up.is_set(),
                     "sink_uptime_s": round(time.monotonic() - self._started, 1),
                     "version": __version__},
        })

    def _publish_state(self) -> None:
        self._client.publish(self._topics.state, json.dumps(self.state()), qos=1, retain=True)

    def _finish(self, deadline: float, *, pending: list[tuple]) -> None:
        """Last acts of the publisher: final state and "offline", each waited for briefly."""
        for note in pending:
            self._handle(note)
        self._drain_notes()
        if not self._link_up.is_set() or self._replay:
            return
        infos = [
            self._client.publish(self._topics.state, json.dumps(self.state()), qos=1, retain=True),
            self._client.publish(self._topics.availability, "offline", qos=1, retain=True),
        ]
        for info in infos:
            try:
                info.wait_for_publish(timeout=max(0.2, deadline - time.monotonic()))
            except RuntimeError:
                break  # the connection went away meanwhile

    def _drain_notes(self) -> None:
        """Apply the PUBACKs waiting on the queue (deleting their rows); drop other notes."""
        while True:
            try:
                note = self._queue.get_nowait()
            except queue.Empty:
                break
            if note[0] == "ack":
                self._acked(note[1])
        self._remove_acked()
