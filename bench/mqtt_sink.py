"""The MQTT sink on its own: what ``on_event`` costs the sink thread, and how fast the outbox
pump empties into a real Mosquitto on localhost.

``EVENTS`` events are handed to one ``MqttSink`` (state on the local disk, so each
``on_event`` is one fsynced sqlite commit) as fast as the sink thread can, then the bench
waits until every one is acknowledged. Then the same with the broker frozen (SIGSTOP) while
``EVENTS`` more arrive into an outbox bounded at ``FROZEN_MAX_ROWS`` rows: the rows in flight
are kept, the oldest others dropped, and delivered + dropped must equal what was sent.
"""

from __future__ import annotations

import json
import logging
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import preamble

NAME = "mqtt_sink"
REPO = Path(__file__).resolve().parents[1]
EVENTS = 2000
FROZEN_MAX_ROWS = 200


def _sink(broker, state: Path, **outbox):
    from device.config import validate
    from device.mqtt import MqttSink

    cfg = validate({"mqtt": broker.mqtt_config(discovery={"enabled": False}, outbox=outbox)})
    return MqttSink(cfg.mqtt, device_id="bench", labels=["tone"], state_dir=state, health=dict)


def _delivered(sink) -> int:
    return sink.counters["events_published"]


def run() -> str:
    sys.path.insert(0, str(REPO / "tests"))
    from broker import MOSQUITTO, Broker, sample_event

    logging.getLogger("device.mqtt").setLevel(logging.ERROR)  # 1800 "outbox full" lines
    title = "## MQTT sink: on_event cost and outbox throughput to a local Mosquitto\n\n"
    if not Path(MOSQUITTO).exists():
        return title + "Not run: Mosquitto is not installed.\n"
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(Path(tmp) / "broker").start()
        try:
            sink = _sink(broker, Path(tmp) / "state")
            costs = []
            started = time.perf_counter()
            for i in range(EVENTS):
                t0 = time.perf_counter()
                sink.on_event(sample_event(i, device_id="bench"))
                costs.append(time.perf_counter() - t0)
            while _delivered(sink) < EVENTS and time.perf_counter() - started < 120:
                time.sleep(0.01)
            wall = time.perf_counter() - started
            delivered = _delivered(sink)
            sink.close()

            frozen = _sink(broker, Path(tmp) / "frozen", max_rows=FROZEN_MAX_ROWS)
            frozen.on_event(sample_event(0, device_id="bench"))
            while _delivered(frozen) < 1:
                time.sleep(0.01)
            broker._proc.send_signal(signal.SIGSTOP)
            try:
                for i in range(1, EVENTS + 1):
                    frozen.on_event(sample_event(i, device_id="bench"))
            finally:
                broker._proc.send_signal(signal.SIGCONT)
            deadline = time.perf_counter() + 60
            while time.perf_counter() < deadline:
                state = frozen.state()
                if _delivered(frozen) + state["outbox_dropped"] >= EVENTS + 1:
                    break
                time.sleep(0.05)
            state = frozen.state()
            frozen_delivered, frozen_dropped = _delivered(frozen), state["outbox_dropped"]
            frozen.close()
        finally:
            broker.stop()
    costs_ms = sorted(c * 1000 for c in costs)
    p99 = costs_ms[int(0.99 * (len(costs_ms) - 1))]
    figures = {
        "events": EVENTS,
        "delivered": delivered,
        "on_event_p50_ms": round(statistics.median(costs_ms), 3),
        "on_event_p99_ms": round(p99, 3),
        "all_acked_s": round(wall, 2),
        "events_per_s": round(delivered / wall),
        "frozen_sent": EVENTS + 1,
        "frozen_delivered": frozen_delivered,
        "frozen_dropped": frozen_dropped,
    }
    return (
        title
        + preamble(NAME)
        + "\n"
        + "| events | on_event p50 | on_event p99 | all acknowledged | events/s |\n"
        + "|---|---|---|---|---|\n"
        + f"| {EVENTS} | {figures['on_event_p50_ms']} ms | {figures['on_event_p99_ms']} ms | "
        + f"{figures['all_acked_s']} s | {figures['events_per_s']} |\n\n"
        + f"Broker frozen (SIGSTOP) while {EVENTS + 1} events arrive into an outbox of "
        + f"{FROZEN_MAX_ROWS} rows: {frozen_delivered} delivered, {frozen_dropped} counted "
        + f"dropped, {EVENTS + 1 - frozen_delivered - frozen_dropped} unaccounted for.\n\n"
        + "Wall-clock figures (the sink thread waits for an fsync per event), on the disk the "
        + "temporary folder is on.\n\n"
        + "```json\n"
        + json.dumps(figures)
        + "\n```\n"
    )
