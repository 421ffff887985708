"""A fleet on one broker: N recorders through a real Mosquitto, with a broker restart in the middle.

Each simulated recorder is a real paho-mqtt 2 client speaking the daemon's MQTT contract: client
id ``callwatch-<device_id>``, last will ``offline`` (retained) on ``…/availability``, retained
``online`` and health JSON on ``…/state`` at every connect, and events (the daemon's
:class:`device.events.Event` JSON) at QoS 1 on ``…/events``. The recorders live in
:data:`WORKERS` processes, one paho network thread per recorder, as a daemon has. One collector
(a persistent session, as a fleet's database writer would have) subscribes to
``callwatch/+/events``.

The run, for each fleet size in :data:`FLEET_SIZES`:

1. every recorder connects (a connect storm);
2. steady traffic for :data:`STEADY_S` s, one event per recorder every :data:`STEADY_PERIOD_S`
   s (a busy dawn chorus: an event opens and closes, two messages, every 10 s), and
   :data:`RESTART_AT_S` s into it the broker is stopped (SIGTERM) and started again
   :data:`OUTAGE_S` s later; recorders keep publishing, paho keeps unacknowledged QoS 1 messages
   and sends them again on reconnect;
3. a burst: every recorder publishes :data:`BURST_EVENTS` events at once;
4. drain: until every event is acknowledged and received (bounded by :data:`DRAIN_S`);
5. a fresh subscriber counts the retained ``online`` and state messages (kept over the restart);
   then one worker process is killed (SIGKILL: its recorders' last wills must fire) and the
   others disconnect cleanly, and every recorder must read ``offline``.

Latency is publish-to-receive on one machine's monotonic clock: the publisher puts
``time.monotonic()`` into the event's ``mono_s`` field, the collector reads the clock when the
message arrives. Broker CPU and memory come from ``/proc/<pid>/{stat,status}``, the recorders'
from their processes' ``getrusage`` and ``VmRSS``. Loopback only, every wait bounded.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import preamble
from bench._fleet_parts import (
    MOSQUITTO,
    STEADY_PERIOD_S,
    Broker,
    Collector,
    raise_fd_limit,
    recorder_worker,
    retained_messages,
)

NAME = "fleet"
FLEET_SIZES = (100, 1000)
WORKERS = 4
"""Processes that hold the recorders (N / WORKERS paho clients each)."""
STEADY_S = 40.0
RESTART_AT_S = 12.0
OUTAGE_S = 3.0
BURST_EVENTS = 10
DRAIN_S = 120.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def _ask(conns, command: str, arg=None) -> list[dict]:
    for conn in conns:
        conn.send((command, arg))
    return [conn.recv() for conn in conns]


def _fleet(n: int, folder: Path) -> dict:
    """One run with ``n`` recorders; the figures as a dict."""
    folder.mkdir(parents=True)
    broker = Broker(folder)
    broker.start()
    collector = Collector(broker.port)
    ctx = multiprocessing.get_context("spawn")
    ids = [f"rec{i:04d}" for i in range(n)]
    workers, conns = [], []
    for w in range(WORKERS):
        parent_end, child_end = ctx.Pipe()
        proc = ctx.Process(
            target=recorder_worker, args=(ids[w::WORKERS], broker.port, child_end), daemon=True
        )
        proc.start()
        workers.append(proc)
        conns.append(parent_end)
    out: dict = {"n": n}
    try:
        cpu0, t0 = broker.cpu_s(), time.monotonic()
        ready = [conn.recv() for conn in conns]
        out["connected"] = sum(r["connected"] for r in ready)
        out["connect_s"] = time.monotonic() - t0
        out["client_rss_kib"] = sum(r["rss_kib"] for r in ready)
        out["client_threads"] = sum(r["threads"] for r in ready)
        out["broker_rss_connected_kib"] = broker.status()["VmRSS"]
        out["broker_connect_cpu_s"] = broker.cpu_s() - cpu0

        # Steady traffic, with the broker restarted in the middle.
        cpu0 = broker.cpu_s()
        for conn in conns:
            conn.send(("steady", STEADY_S))
        steady_start = time.monotonic()
        time.sleep(RESTART_AT_S)
        outage_start = time.monotonic()
        broker.stop()
        time.sleep(OUTAGE_S)
        broker.start()
        outage_end = time.monotonic()
        steady = [conn.recv() for conn in conns]
        out["steady_client_cpu_s"] = sum(r["cpu_s"] for r in steady)
        out["steady_broker_cpu_s"] = broker.cpu_s() - cpu0
        out["steady_wall_s"] = time.monotonic() - steady_start
        out["reconnects"] = sum(r["connects"] for r in steady) - n

        # Burst.
        cpu0, burst_start = broker.cpu_s(), time.monotonic()
        _ask(conns, "burst", BURST_EVENTS)
        drained = _ask(conns, "drain", DRAIN_S)
        deadline = time.monotonic() + DRAIN_S
        sent = {event_id for r in drained for event_id in r["sent"]}
        while time.monotonic() < deadline and collector.unique() < len(sent):
            time.sleep(0.2)
        time.sleep(1.0)  # late duplicates, if any, arrive now
        out["burst_broker_cpu_s"] = broker.cpu_s() - cpu0
        out["burst_drain_s"] = time.monotonic() - burst_start - 1.0
        out["broker_rss_kib"] = broker.status()["VmRSS"]
        out["broker_hwm_kib"] = max(broker.hwm_kib, broker.status()["VmHWM"])
        out["unacked"] = sum(r["unacked"] for r in drained)
        out["client_rss_end_kib"] = sum(r["rss_kib"] for r in drained)

        received = [(json.loads(p), t) for p, t in collector.received]
        first: dict[str, float] = {}
        for event, t in received:
            first.setdefault(event["event_id"], t - event["mono_s"])
        by_phase: dict[str, list[float]] = {"steady": [], "restart": [], "burst": []}
        for event, _ in received:
            if event["event_id"] not in first:
                continue
            mono = event["mono_s"]
            phase = (
                "burst"
                if mono >= burst_start
                else "restart"
                if outage_start - 1.0 <= mono <= outage_end + 1.0
                else "steady"
            )
            by_phase[phase].append(first.pop(event["event_id"]) * 1000)
        out["sent"] = len(sent)
        out["received_unique"] = len({e["event_id"] for e, _ in received})
        out["lost"] = len(sent - {e["event_id"] for e, _ in received})
        out["duplicates"] = len(received) - out["received_unique"]
        out["latency_ms"] = {
            phase: (_percentile(v, 50), _percentile(v, 99), max(v, default=0.0), len(v))
            for phase, v in by_phase.items()
        }

        # Retained messages over the restart, then last wills and clean disconnects.
        out["retained_online"] = sum(
            p == "online"
            for p in retained_messages(broker.port, "callwatch/+/availability").values()
        )
        out["retained_state"] = len(retained_messages(broker.port, "callwatch/+/state"))
        killed = len(ids[0::WORKERS])
        workers[0].kill()  # SIGKILL: its recorders' last wills must fire
        workers[0].join(10)
        _ask(conns[1:], "stop")
        offline = retained_messages(broker.port, "callwatch/+/availability")
        out["offline_after_stop"] = sum(p == "offline" for p in offline.values())
        out["killed"] = killed
        return out
    finally:
        collector.close()
        for proc in workers:
            if proc.is_alive():
                proc.kill()
            proc.join(10)
        broker.stop()


def _table(results: list[dict]) -> str:
    rows = [
        "| recorders | events sent | received (unique) | lost | duplicates | steady p50 / p99 | "
        "across the restart p50 / p99 / max | burst p50 / p99 | reconnects |",
        "|---:|---:|---:|---:|---:|---|---|---|---:|",
    ]
    for r in results:
        lat = r["latency_ms"]
        rows.append(
            f"| {r['n']} | {r['sent']} | {r['received_unique']} | {r['lost']} | "
            f"{r['duplicates']} | {lat['steady'][0]:.1f} / {lat['steady'][1]:.1f} ms | "
            f"{lat['restart'][0]:.0f} / {lat['restart'][1]:.0f} / {lat['restart'][2]:.0f} ms | "
            f"{lat['burst'][0]:.0f} / {lat['burst'][1]:.0f} ms | {r['reconnects']} |"
        )
    rows += [
        "",
        "| recorders | connect storm | broker RSS connected / end / peak | broker CPU: steady, "
        "per recorder-hour | broker CPU: burst | client RSS per recorder | client CPU per "
        "recorder-hour (steady) | retained online / state after restart | offline after stop "
        "(of them by last will) |",
        "|---:|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        n, hours = r["n"], r["n"] * r["steady_wall_s"] / 3600
        rows.append(
            f"| {n} | {r['connected']} in {r['connect_s']:.1f} s | "
            f"{r['broker_rss_connected_kib'] / 1024:.1f} / {r['broker_rss_kib'] / 1024:.1f} / "
            f"{r['broker_hwm_kib'] / 1024:.1f} MiB | {r['steady_broker_cpu_s']:.2f} s, "
            f"{r['steady_broker_cpu_s'] / hours * 1000:.0f} ms | "
            f"{r['burst_broker_cpu_s']:.2f} s | {r['client_rss_kib'] / n:.0f} KiB | "
            f"{r['steady_client_cpu_s'] / hours:.1f} s | {r['retained_online']} / "
            f"{r['retained_state']} | {r['offline_after_stop']} ({r['killed']}) |"
        )
    return "\n".join(rows)


def _verdict(results: list[dict]) -> str:
    """What the counts say about loss, in one sentence."""
    lost = sum(r["lost"] + r["unacked"] for r in results)
    if lost == 0:
        return (
            "Nothing is lost: every event published was received, the restart included "
            "(paho keeps unacknowledged QoS 1 messages and sends them again on reconnect; the "
            "broker keeps the collector's queue over its restart)."
        )
    return (
        f"**{lost} events were lost or never acknowledged** (see the table): look at "
        "`max_queued_messages` and the broker log before trusting this broker with a fleet."
    )


def run() -> str:
    limit = raise_fd_limit()
    results = []
    with tempfile.TemporaryDirectory(prefix="callwatch-fleet-") as tmp:
        for n in FLEET_SIZES:
            print(f"bench fleet: {n} recorders ...", file=sys.stderr, flush=True)
            results.append(_fleet(n, Path(tmp) / f"n{n}"))
            print(f"bench fleet: {json.dumps(results[-1])}", file=sys.stderr, flush=True)
    version = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True).stdout.split("\n")[
        0
    ]
    return f"""## Fleet: {max(FLEET_SIZES)} recorders on one Mosquitto

{preamble(NAME)}
Broker: {version}, the configuration in README "Running a fleet" (`max_queued_messages`
raised), persistence on, loopback. Recorders: real paho-mqtt 2 clients, one network thread each,
in {WORKERS} processes (file descriptors raised to {limit}); each has its own client id, last will
and retained `online` + state, and publishes the event JSON at QoS 1. Steady: one event per
recorder every {STEADY_PERIOD_S:g} s for {STEADY_S:g} s (an event opens and closes, two messages,
every {2 * STEADY_PERIOD_S:g} s: a busy dawn chorus); the broker is stopped (SIGTERM) {RESTART_AT_S:g} s
in and started {OUTAGE_S:g} s later. Burst: then every recorder publishes {BURST_EVENTS} events at
once. One collector (persistent session, QoS 1) subscribes to `callwatch/+/events`. Latency is
publish to receive (the event's `mono_s` is the publisher's monotonic clock); "across the restart"
is the events published from 1 s before the stop to 1 s after the broker was back. Recorder-hour:
one recorder connected for one hour at the steady rate. At the end one recorder process is
killed (SIGKILL) and the others stop cleanly: every recorder must then read `offline`.

{_table(results)}

{_verdict(results)} Duplicates are what QoS 1 allows (a message sent again whose PUBACK was
lost in the restart); subscribers drop them by `event_id`. Both processors here are shared with
the recorders' {WORKERS} processes, so the latencies are an upper bound for a broker on a machine
of its own.
"""
