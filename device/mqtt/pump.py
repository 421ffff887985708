"""The outbox pump: the publisher thread that hands outbox rows to paho and deletes them on
PUBACK.

Delivery: the sink thread commits each event to the durable outbox (:meth:`Publisher.store`)
and wakes this thread, which hands the oldest rows to paho, at most ``window`` at a time, and
deletes a row when its PUBACK arrives (paho mid -> row id). Paho keeps unacknowledged QoS 1
messages of its session in memory and sends them again, in order and with the DUP flag, after
a reconnect; the publisher waits for those to be acknowledged before it hands over newer rows,
so the order holds. After a restart, everything left in the outbox is published again from the
oldest row. A subscriber may see an event twice (QoS 1, or a kill between PUBACK and delete),
always with the same ``event_id``.

Threads: this thread owns the connection view (``Connected``/``Disconnected`` notes), the
in-flight window's message ids, the state timer and discovery, and is the only one to call
``publish`` while it runs. Other threads only post notes (device/mqtt/notes.py), except the
sink thread's :meth:`Publisher.store`, which takes :attr:`InFlight.lock` so that a row being
handed to paho is never dropped from a full outbox as "oldest" (the drop count would claim an
event lost that may still arrive).
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt

from device.mqtt.discovery import Discovery
from device.mqtt.notes import (
    Acked,
    Connected,
    Disconnected,
    Finish,
    Note,
    PublishDirect,
    Wake,
)
from device.mqtt.outbox import Outbox
from device.mqtt.topics import Topics

log = logging.getLogger("device.mqtt")

WINDOW = 100
"""Events handed to paho at once (also its in-flight limit): bounds memory while the broker
is away."""
HOLD_LIMIT_S = 10.0
"""After a reconnect, newer rows wait at most this long for paho's re-sent rows to be acked."""
STALL_S = 120.0
"""Connected, events waiting, and no PUBACK for this long: publishing is reported stalled (the
systemd watchdog is then no longer fed)."""
BATCH = 1000
"""Notes taken from the queue at once, so a burst of PUBACKs costs one outbox transaction."""


class InFlight:
    """The in-flight window: outbox rows handed to paho and not yet deleted.

    The publisher thread changes it; ``protected`` is also read by the sink thread, so every
    change to it and every read of it happens with ``lock`` held."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._by_mid: dict[int, int] = {}
        """Paho mid -> outbox row id, not yet acknowledged (publisher thread only)."""
        self._protected: frozenset[int] = frozenset()

    def __len__(self) -> int:
        return len(self._by_mid)

    @property
    def protected(self) -> frozenset[int]:
        """Row ids the outbox must not drop (call with ``lock`` held)."""
        return self._protected

    def protect(self, row_ids: Iterable[int]) -> None:
        """Rows about to be handed to paho (call with ``lock`` held)."""
        self._protected = self._protected | frozenset(row_ids)

    def handed(self, mid: int, row_id: int) -> None:
        self._by_mid[mid] = row_id

    def acked(self, mid: int) -> int | None:
        """The row of an acknowledged mid (None: not an event's). It stays protected until
        :meth:`settle`, after the row is deleted."""
        return self._by_mid.pop(mid, None)

    def settle(self) -> None:
        """Protect exactly the rows still waiting for a PUBACK."""
        with self.lock:
            self._protected = frozenset(self._by_mid.values())

    def clear(self) -> None:
        self._by_mid.clear()


class Publisher:
    """The publisher thread and the outbox rows it carries (see the module docstring).

    ``client``: the paho client (connected by its own thread). ``notes``: the queue the
    connection callbacks and the sink thread post to. ``link_up``: set while paho is
    connected. ``state``: the state payload (device/mqtt/state.py), published retained every
    ``state_interval_s`` seconds; ``discovery``: None for a replay, which publishes neither.
    ``counters``: this thread writes ``connects``, ``disconnects`` and ``events_published``.
    """

    def __init__(
        self,
        client: mqtt.Client,
        *,
        notes: queue.Queue[Note],
        outbox: Outbox,
        topics: Topics,
        window: int,
        link_up: threading.Event,
        state: Callable[[], dict[str, Any]],
        state_interval_s: float,
        discovery: Discovery | None,
        counters: dict[str, int],
        replay: bool,
    ) -> None:
        self._client = client
        self._notes = notes
        self._outbox = outbox
        self._topics = topics
        self._window = window
        self._link_up = link_up
        self._state = state
        self._state_interval_s = state_interval_s
        self._discovery = discovery
        self._counters = counters
        self._replay = replay
        self.in_flight = InFlight()
        self._generation = outbox.generation
        self._connected = False  # this thread's view of the connection
        self._acked_rows: list[int] = []  # acknowledged, to be deleted in one transaction
        self._handed = 0  # highest row id handed to paho
        self._hold_until = 0.0  # paho re-sends its in-flight rows first, after a reconnect
        self.progress_mono = time.monotonic()
        """Last PUBACK of an event, or the last connect (written here, read by stalled())."""
        self._thread = threading.Thread(target=self._run, name="mqtt-publisher", daemon=True)

    # -- other threads ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def store(self, topic: str, payload: str) -> int:
        """Sink thread: commit one message to the outbox (durable when this returns), never
        dropping a row in flight; returns how many old rows were dropped to make room.
        Raises sqlite3.Error when the outbox cannot store it."""
        with self.in_flight.lock:
            dropped = self._outbox.put(topic, payload, keep=self.in_flight.protected)
        self._notes.put(Wake())
        return dropped

    def on_publish(
        self, client: Any, userdata: Any, mid: int, reason_code: Any, props: Any
    ) -> None:
        """Paho's thread: a PUBACK."""
        self._notes.put(Acked(mid))

    def stalled(self, *, closed: bool) -> str | None:
        """Why publishing is not making progress, or None (any thread)."""
        if not self._thread.is_alive() and not closed:
            return "mqtt publisher thread stopped"
        if (
            self._link_up.is_set()
            and self._outbox.depth
            and time.monotonic() - self.progress_mono > STALL_S
        ):
            return f"mqtt: connected but no event acknowledged for {STALL_S:g} s"
        return None

    def join(self, timeout: float) -> None:
        self._thread.join(timeout=timeout)

    def drain_notes(self) -> None:
        """After the thread ended: apply the PUBACKs waiting on the queue (deleting their
        rows); drop other notes."""
        while True:
            try:
                note = self._notes.get_nowait()
            except queue.Empty:
                break
            if isinstance(note, Acked):
                self._acked(note.mid)
        self._remove_acked()

    # -- the publisher thread ---------------------------------------------------------------

    def _run(self) -> None:
        next_state = math.inf
        while True:
            wake_at = min(next_state, self._hold_until or math.inf)
            timeout = max(0.0, wake_at - time.monotonic()) if self._connected else None
            notes: list[Note] = []
            try:
                notes.append(self._notes.get(timeout=timeout))
            except queue.Empty:
                pass  # a timer is due
            while len(notes) < BATCH:
                try:
                    notes.append(self._notes.get_nowait())
                except queue.Empty:
                    break
            for i, note in enumerate(notes):
                if isinstance(note, Finish):
                    try:
                        self._finish(note.deadline, pending=notes[i + 1 :])
                    except Exception:  # noqa: BLE001
                        log.exception("mqtt publisher: final state not published")
                    return
                try:
                    self._handle(note)
                except Exception:  # noqa: BLE001 - one note must not cost the others
                    log.exception(
                        "mqtt publisher: unexpected error on %s (continuing)", type(note).__name__
                    )
                if self._connected and isinstance(note, Connected):
                    next_state = time.monotonic()
            try:
                self._outbox.retry_disk()  # from memory back onto the disk (rate-limited)
                self._remove_acked()
                if self._connected and not self._replay and time.monotonic() >= next_state:
                    self._publish_state()
                    next_state = time.monotonic() + self._state_interval_s
                self._pump()
            except Exception:  # noqa: BLE001 - the publisher must outlive any one failure
                log.exception("mqtt publisher: unexpected error (continuing)")
                time.sleep(1.0)  # not a busy loop when the same error comes back at once

    def _handle(self, note: Note) -> None:
        if isinstance(note, Acked):
            self._acked(note.mid)
        elif isinstance(note, Connected):
            self._connected = True
            self._counters["connects"] += 1
            self.progress_mono = time.monotonic()
            # Paho sends its unacknowledged events again by itself; newer rows wait until
            # one of those is acknowledged, which proves the re-sending is under way first.
            if len(self.in_flight):
                self._hold_until = time.monotonic() + HOLD_LIMIT_S
            if not self._replay:
                self._client.publish(self._topics.availability, "online", qos=1, retain=True)
            if self._discovery is not None:
                self._discovery.publish(self._client)
        elif isinstance(note, Disconnected):
            self._connected = False
            self._counters["disconnects"] += 1
        elif isinstance(note, PublishDirect):
            self._client.publish(self._topics.events, note.payload, qos=1)

    def _acked(self, mid: int) -> None:
        row_id = self.in_flight.acked(mid)
        if row_id is not None:
            self._hold_until = 0.0
            self.progress_mono = time.monotonic()
            self._acked_rows.append(row_id)
            self._counters["events_published"] += 1
        elif self._discovery is not None:
            self._discovery.acked(mid)

    def _remove_acked(self) -> None:
        if self._acked_rows:
            self._outbox.remove(self._acked_rows)
            self._acked_rows = []
            self.in_flight.settle()

    def _pump(self) -> None:
        """Hand the oldest rows not yet handed to paho, up to the window."""
        if not self._connected:
            return
        if self._outbox.generation != self._generation:
            # The outbox renumbered its rows (it came back from memory onto a disk that had
            # rows of its own): hand everything again; paho's copies may arrive twice.
            self._generation = self._outbox.generation
            self.in_flight.clear()
            self._handed = 0
            self._hold_until = 0.0
        if self._hold_until:
            if time.monotonic() < self._hold_until:
                return
            self._hold_until = 0.0
        room = self._window - len(self.in_flight)
        if room <= 0:
            return
        with self.in_flight.lock:
            rows = self._outbox.peek(after=self._handed, limit=room)
            self.in_flight.protect(row.id for row in rows)
        if not rows:
            return
        for row in rows:
            info = self._client.publish(row.topic, row.payload, qos=1)
            # NO_CONN: paho keeps the message and sends it after the reconnect.
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                log.warning(
                    "mqtt: publish of outbox row %d refused (%s); retrying later",
                    row.id,
                    mqtt.error_string(info.rc),
                )
                break
            self.in_flight.handed(info.mid, row.id)
            self._handed = row.id
        self.in_flight.settle()

    def _publish_state(self) -> None:
        self._client.publish(self._topics.state, json.dumps(self._state()), qos=1, retain=True)

    def _finish(self, deadline: float, *, pending: list[Note]) -> None:
        """Last acts of the publisher: final state and "offline", each waited for briefly."""
        for note in pending:
            self._handle(note)
        self.drain_notes()
        if not self._link_up.is_set() or self._replay:
            return
        infos = [
            self._client.publish(self._topics.state, json.dumps(self._state()), qos=1, retain=True),
            self._client.publish(self._topics.availability, "offline", qos=1, retain=True),
        ]
        for info in infos:
            try:
                info.wait_for_publish(timeout=max(0.2, deadline - time.monotonic()))
            except RuntimeError:
                break  # the connection went away meanwhile
