"""The MQTT sink: events, health and availability to a broker, losing nothing on the way.

Topics (``<p>`` = ``<mqtt.topic_prefix>/<device_id>``)::

    <p>/availability   retained "online" on connect; "offline" as last will and on shutdown
    <p>/events         QoS 1, not retained: Event.to_json() (event_id and seq for de-duplication)
    <p>/state          retained health JSON every mqtt.state_interval_s

:class:`MqttSink` is the facade the daemon sees (a :class:`device.events.Sink`); the work is
done by its parts, each in its own file:

- ``outbox.py`` (and ``store.py``): the durable, bounded queue on disk (memory while the disk
  cannot be written);
- ``pump.py``: the publisher thread, which hands outbox rows to paho within the in-flight
  window and deletes them on PUBACK;
- ``connection.py``: credentials, TLS, and the connection callbacks on paho's thread
  (backoff jitter, one log line per reason);
- ``discovery.py``: Home Assistant discovery; ``state.py``: the state payload;
- ``notes.py``: the messages the other threads leave for the publisher thread.

Threads: ``on_event`` and ``close`` run on the sink thread; paho's network thread runs the
callbacks; the publisher thread does all outbox reading and publishing. ``stalled`` and
``state`` may be called from any thread.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device.config import MqttSection
from device.events import Event, SinkBase
from device.mqtt.connection import Connection, make_client
from device.mqtt.discovery import Discovery
from device.mqtt.notes import Finish, Note, PublishDirect, Wake
from device.mqtt.outbox import Outbox
from device.mqtt.pump import WINDOW, Publisher
from device.mqtt.state import state_payload
from device.mqtt.topics import Topics, device_topics

if TYPE_CHECKING:
    from device.health import Degradations

log = logging.getLogger("device.mqtt")

FLUSH_TIMEOUT_S = 2.0
"""close() waits at most this long for the outbox to drain before it disconnects."""
MIB = 1024 * 1024


class MqttSink(SinkBase):
    """The ``device.events.Sink`` that publishes to MQTT (see the module docstring)."""

    wants_open_events = True
    """Events are published as they open (a dashboard sees the call while it happens) and
    again, same event_id, when they close."""

    def __init__(
        self,
        mqtt: MqttSection,
        *,
        device_id: str,
        labels: list[str],
        state_dir: Path,
        health: Callable[[], dict[str, Any]],
        replay: bool = False,
        storage: Degradations | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        """``mqtt``: the config's ``mqtt`` section. ``replay``: events of a replay (python -m
        device --replay --mqtt), which never speak for the live recorder: topic
        ``<prefix>/<device_id>/replay/events``, a client id of their own, no availability,
        state or discovery messages, no last will. ``labels``: the model's labels (for Home
        Assistant discovery). ``state_dir``: folder for ``outbox.sqlite`` and
        ``discovery.json``. ``health``: returns the daemon's health counters (called from the
        publisher thread every ``mqtt.state_interval_s``). ``storage``: where a state folder
        that cannot be written is reported, or None. ``outbox``: the durable queue to use
        (the sink closes it); default ``<state_dir>/outbox.sqlite`` within ``mqtt.outbox``'s
        bounds."""
        self._cfg = mqtt
        self._device_id = device_id
        self._health = health
        self._topics = device_topics(mqtt.topic_prefix, device_id)
        if replay:
            self._topics = Topics(f"{self._topics.base}/replay")
        self._outbox = (
            outbox
            if outbox is not None
            else Outbox(
                Path(state_dir) / "outbox.sqlite",
                max_rows=mqtt.outbox.max_rows,
                max_bytes=int(mqtt.outbox.max_mb * MIB),
                storage=storage,
            )
        )
        self._started = time.monotonic()
        self._closed = False
        self.counters = {
            "connects": 0,
            "connect_failures": 0,
            "disconnects": 0,
            "events_published": 0,
            "outbox_write_errors": 0,
        }
        """Each written by one thread: connect_failures by paho's, outbox_write_errors by the
        sink thread, the others by the publisher thread."""
        if self._outbox.depth:
            log.info(
                "mqtt outbox holds %d events from before; they are published first",
                self._outbox.depth,
            )

        # One client id per device: after a power cut the broker may still hold the old
        # connection; taking its id over ends it now, instead of its last will overwriting
        # our "online" a keepalive later. (Two processes with one device_id would take turns.)
        client_id = (
            f"callwatch-{device_id}-replay-{os.getpid()}" if replay else f"callwatch-{device_id}"
        )
        self._client, password_source = make_client(mqtt, client_id=client_id)
        notes: queue.Queue[Note] = queue.Queue()
        self._connection = Connection(
            mqtt, password_source=password_source, counters=self.counters, post=notes.put
        )
        discovery = None
        if not replay:
            discovery = Discovery(
                mqtt.discovery,
                base_topic=self._topics.base,
                device_id=device_id,
                labels=labels,
                state_dir=Path(state_dir),
                storage=storage,
            )
        window = max(1, min(WINDOW, mqtt.outbox.max_rows // 2))
        self._notes = notes
        self._publisher = Publisher(
            self._client,
            notes=notes,
            outbox=self._outbox,
            topics=self._topics,
            window=window,
            link_up=self._connection.link_up,
            state=self.state,
            state_interval_s=mqtt.state_interval_s,
            discovery=discovery,
            counters=self.counters,
            replay=replay,
        )
        client = self._client
        if not replay:
            client.will_set(self._topics.availability, "offline", qos=1, retain=True)
        self._connection.attach(client)
        client.max_inflight_messages_set(window)
        client.on_publish = self._publisher.on_publish
        self._publisher.start()
        client.connect_async(mqtt.host, mqtt.port, keepalive=mqtt.keepalive_s)
        client.loop_start()

    # -- Sink protocol (sink thread) --------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Commit the event to the outbox (durable before this returns), then wake the
        publisher."""
        payload = event.to_json()
        try:
            dropped = self._publisher.store(self._topics.events, payload)
        except sqlite3.Error as exc:
            # The outbox cannot store it, not even in memory: hand it to paho's memory
            # instead (delivered if this process lives until the broker is back).
            self.counters["outbox_write_errors"] += 1
            log.error(
                "mqtt outbox %s cannot store event seq %d (%s); publishing it from memory only",
                self._outbox.path,
                event.seq,
                exc,
            )
            self._notes.put(PublishDirect(payload))
            return
        if dropped:
            log.warning(
                "mqtt outbox full (mqtt.outbox.max_rows %d, max_mb %g): dropped the %d oldest "
                "events, %d dropped in all",
                self._outbox.max_rows,
                self._cfg.outbox.max_mb,
                dropped,
                self._outbox.dropped,
            )

    def close(self) -> None:
        """Publish what can be published within FLUSH_TIMEOUT_S, the final state and
        "offline", then disconnect. What is not acknowledged stays in the outbox."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        self._notes.put(Wake())
        while time.monotonic() < deadline and self._outbox.depth:
            if not self._connection.link_up.is_set() and self._connection.first_result.is_set():
                break  # the broker is away: nothing will drain now
            time.sleep(0.02)
        self._notes.put(Finish(deadline))
        self._publisher.join(timeout=FLUSH_TIMEOUT_S + 1)
        self._connection.stopping.set()
        self._client.disconnect()
        self._client.loop_stop()
        self._publisher.drain_notes()  # PUBACKs that came in after the publisher stopped
        if self._outbox.depth:
            log.info("mqtt: %d events stay in the outbox for the next start", self._outbox.depth)
        self._outbox.close()

    # -- any thread -------------------------------------------------------------------------

    def stalled(self) -> str | None:
        """Why publishing is not making progress, or None: the publisher thread is gone, or
        the broker is connected, events wait and none was acknowledged for pump.STALL_S."""
        return self._publisher.stalled(closed=self._closed)

    def state(self) -> dict[str, Any]:
        """The state JSON (device/mqtt/state.py)."""
        return state_payload(
            self._health,
            device_id=self._device_id,
            outbox=self._outbox,
            counters=self.counters,
            connected=self._connection.link_up.is_set(),
            sink_uptime_s=time.monotonic() - self._started,
        )
