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
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench import preamble

NAME = "fleet"
FLEET_SIZES = (100, 1000)
WORKERS = 4
"""Processes that hold the recorders (N / WORKERS paho clients each)."""
STEADY_S = 40.0
STEADY_PERIOD_S = 5.0
"""One event per recorder this often in the steady phase, s."""
RESTART_AT_S = 12.0
OUTAGE_S = 3.0
BURST_EVENTS = 10
CONNECT_S = 120.0
DRAIN_S = 120.0
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"

BROKER_CONF = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence true
persistence_location {folder}/
autosave_interval 60
# A collector that falls behind a burst, or is away for a restart, must not lose events:
# Mosquitto's default queue per client (1000 QoS 1 messages) is far too small for a fleet.
max_queued_messages 1000000
max_inflight_messages 100
set_tcp_nodelay true
"""


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (a paho client holds 3 descriptors); the new one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (KiB) and Threads of a process."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return out


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Broker:
    """One Mosquitto with the fleet configuration; keeps its port and CPU total over restarts."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        conf = BROKER_CONF.format(port=self.port, folder=folder)
        if os.geteuid() == 0:
            conf += "user root\n"  # as tests/broker.py: keep the bench's own permissions
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(conf)
        self.proc: subprocess.Popen | None = None
        self.cpu_before_s = 0.0
        """CPU seconds of earlier (stopped) broker processes."""
        self.hwm_kib = 0

    def start(self) -> None:
        log = (self.folder / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start on port {self.port}")

    def cpu_s(self) -> float:
        return self.cpu_before_s + (_proc_cpu_s(self.proc.pid) if self.proc else 0.0)

    def status(self) -> dict[str, int]:
        return _proc_status(self.proc.pid)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.cpu_before_s += _proc_cpu_s(self.proc.pid)
        self.hwm_kib = max(self.hwm_kib, self.status()["VmHWM"])
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


# --- the recorders (run in worker processes) ---------------------------------------------------

class Recorder:
    """One simulated field recorder: a paho client with the daemon's topics, will and QoS."""

    def __init__(self, device_id: str, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.device_id = device_id
        self.base = f"callwatch/{device_id}"
        self.seq = 0
        self.connects = 0
        self.connected = threading.Event()
        self.sent: list[tuple[str, int]] = []
        """(event_id, message id) of every event published."""
        self.acked: set[int] = set()
        """Message ids the broker acknowledged (PUBACK); ids do not wrap in a bench run."""
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"callwatch-{device_id}", protocol=mqtt.MQTTv311,
                                  clean_session=True)
        self.client.will_set(f"{self.base}/availability", "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(0.5, 4.0)
        self.client.max_inflight_messages_set(100)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.on_publish = lambda c, u, mid, rc, p: self.acked.add(mid)
        self.client.connect_async("127.0.0.1", port, keepalive=30)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return
        self.connects += 1
        client.publish(f"{self.base}/availability", "online", qos=1, retain=True)
        client.publish(f"{self.base}/state", json.dumps(
            {"device_id": self.device_id, "uptime_s": time.monotonic(), "outbox_depth": 0,
             "dropped_events": 0, "mqtt": {"connects": self.connects}}), qos=1, retain=True)
        self.connected.set()

    def publish_event(self) -> None:
        from device.events import Event

        self.seq += 1
        event = Event(event_id=uuid.uuid4().hex, seq=self.seq, device_id=self.device_id,
                      label="capuchinbird", start_s=self.seq * 10.0, end_s=self.seq * 10.0 + 1.5,
                      peak_score=0.97, source="mic", start_utc="2026-11-29T05:30:00.000Z",
                      clock_synced=True, mono_s=time.monotonic())
        info = self.client.publish(f"{self.base}/events", event.to_json(), qos=1)
        self.sent.append((event.event_id, info.mid))

    def unacked(self) -> int:
        # A publish while the broker is away returns "not connected" but stays queued in
        # paho, which sends it on reconnect: its PUBACK is what counts.
        return sum(mid not in self.acked for _, mid in self.sent)


def _self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _worker(device_ids: list[str], port: int, conn) -> None:
    """Hold ``device_ids``' recorders and run the parent's commands (see :func:`_fleet`)."""
    # Imported before the baseline: the cost per recorder is the clients', not the interpreter's.
    import paho.mqtt.client  # noqa: F401

    import device.events  # noqa: F401

    raise_fd_limit()
    rss0 = _proc_status(os.getpid())["VmRSS"]
    cpu0 = _self_cpu_s()
    recorders = [Recorder(device_id, port) for device_id in device_ids]
    for recorder in recorders:
        recorder.client.loop_start()
    deadline = time.monotonic() + CONNECT_S
    for recorder in recorders:
        recorder.connected.wait(max(0.0, deadline - time.monotonic()))
    connected = sum(r.connected.is_set() for r in recorders)
    conn.send({"connected": connected, "rss_kib": _proc_status(os.getpid())["VmRSS"] - rss0,
               "threads": _proc_status(os.getpid())["Threads"], "connect_cpu_s": _self_cpu_s() - cpu0})
    while True:
        command, arg = conn.recv()
        cpu = _self_cpu_s()
        if command == "steady":
            start = time.monotonic()
            offsets = sorted((i * STEADY_PERIOD_S / len(recorders) + k * STEADY_PERIOD_S, i)
                             for i in range(len(recorders))
                             for k in range(int(arg / STEADY_PERIOD_S)))
            for offset, i in offsets:
                delay = start + offset - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                recorders[i].publish_event()
        elif command == "burst":
            for _ in range(arg):
                for recorder in recorders:
                    recorder.publish_event()
        elif command == "drain":
            deadline = time.monotonic() + arg
            while time.monotonic() < deadline and sum(r.unacked() for r in recorders):
                time.sleep(0.2)
        elif command == "stop":  # a clean shutdown, as the daemon's: offline, then disconnect
            for recorder in recorders:
                recorder.client.publish(f"{recorder.base}/availability", "offline", qos=1,
                                        retain=True).wait_for_publish(5)
                recorder.client.disconnect()
                recorder.client.loop_stop()
            conn.send({})
            return
        conn.send({"cpu_s": _self_cpu_s() - cpu,
                   "unacked": sum(r.unacked() for r in recorders),
                   "sent": [event_id for r in recorders for event_id, _ in r.sent],
                   "connects": sum(r.connects for r in recorders),
                   "rss_kib": _proc_status(os.getpid())["VmRSS"] - rss0})


# --- the parent: broker, collector, phases -----------------------------------------------------

class Collector:
    """A persistent-session subscriber to every recorder's events; keeps (payload, arrival)."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.received: list[tuple[bytes, float]] = []
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fleet-collector",
                                  clean_session=False)
        self.client.reconnect_delay_set(0.2, 1.0)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("callwatch/+/events", qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = lambda c, u, m: self.received.append(
            (m.payload, time.monotonic()))
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("the collector could not subscribe")

    def unique(self) -> int:
        return len({json.loads(p)["event_id"] for p, _ in list(self.received)})

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _retained(port: int, topic_filter: str, seconds: float = 3.0) -> dict[str, str]:
    """topic -> payload of the retained messages under ``topic_filter``."""
    import paho.mqtt.client as mqtt

    found: dict[str, str] = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic_filter, qos=1)
    client.on_message = lambda c, u, m: found.__setitem__(m.topic, m.payload.decode())
    client.connect("127.0.0.1", port)
    client.loop_start()
    time.sleep(seconds)
    client.disconnect()
    client.loop_stop()
    return dict(found)


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
        proc = ctx.Process(target=_worker, args=(ids[w::WORKERS], broker.port, child_end),
                           daemon=True)
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
            phase = ("burst" if mono >= burst_start else
                     "restart" if outage_start - 1.0 <= mono <= outage_end + 1.0 else "steady")
            by_phase[phase].append(first.pop(event["event_id"]) * 1000)
        out["sent"] = len(sent)
        out["received_unique"] = len({e["event_id"] for e, _ in received})
        out["lost"] = len(sent - {e["event_id"] for e, _ in received})
        out["duplicates"] = len(received) - out["received_unique"]
        out["latency_ms"] = {phase: (_percentile(v, 50), _percentile(v, 99), max(v, default=0.0),
                                     len(v)) for phase, v in by_phase.items()}

        # Retained messages over the restart, then last wills and clean disconnects.
        out["retained_online"] = sum(p == "online" for p in
                                     _retained(broker.port, "callwatch/+/availability").values())
        out["retained_state"] = len(_retained(broker.port, "callwatch/+/state"))
        killed = len(ids[0::WORKERS])
        os.kill(workers[0].pid, signal.SIGKILL)
        workers[0].join(10)
        _ask(conns[1:], "stop")
        offline = _retained(broker.port, "callwatch/+/availability")
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
            f"{lat['burst'][0]:.0f} / {lat['burst'][1]:.0f} ms | {r['reconnects']} |")
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
            f"{r['retained_state']} | {r['offline_after_stop']} ({r['killed']}) |")
    return "\n".join(rows)


def _verdict(results: list[dict]) -> str:
    """What the counts say about loss, in one sentence."""
    lost = sum(r["lost"] + r["unacked"] for r in results)
    if lost == 0:
        return ("Nothing is lost: every event published was received, the restart included "
                "(paho keeps unacknowledged QoS 1 messages and sends them again on reconnect; the "
                "broker keeps the collector's queue over its restart).")
    return (f"**{lost} events were lost or never acknowledged** (see the table): look at "
            "`max_queued_messages` and the broker log before trusting this broker with a fleet.")


def run() -> str:
    limit = raise_fd_limit()
    results = []
    with tempfile.TemporaryDirectory(prefix="callwatch-fleet-") as tmp:
        for n in FLEET_SIZES:
            print(f"bench fleet: {n} recorders ...", file=sys.stderr, flush=True)
            results.append(_fleet(n, Path(tmp) / f"n{n}"))
            print(f"bench fleet: {json.dumps(results[-1])}", file=sys.stderr, flush=True)
    version = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True).stdout.split("\n")[0]
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
