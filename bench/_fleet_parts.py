"""The fleet bench's moving parts (bench/fleet.py runs the scenario): a Mosquitto process, the
simulated recorders (paho clients in worker processes, driven by commands over a pipe) and the
collector that subscribes to every recorder's events. Not a benchmark itself (its name starts
with an underscore, so ``python -m bench`` does not list it)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

STEADY_PERIOD_S = 5.0
"""One event per recorder this often in the steady phase, s."""
CONNECT_S = 120.0
"""How long the recorders of a worker may take to connect, s."""
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
        assert self.proc is not None, "start() first"
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
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"callwatch-{device_id}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        self.client.will_set(f"{self.base}/availability", "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(0.5, 4.0)  # type: ignore[arg-type]  # seconds; paho takes floats
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
        client.publish(
            f"{self.base}/state",
            json.dumps(
                {
                    "device_id": self.device_id,
                    "uptime_s": time.monotonic(),
                    "outbox_depth": 0,
                    "dropped_events": 0,
                    "mqtt": {"connects": self.connects},
                }
            ),
            qos=1,
            retain=True,
        )
        self.connected.set()

    def publish_event(self) -> None:
        from device.events import Event

        self.seq += 1
        event = Event(
            event_id=uuid.uuid4().hex,
            seq=self.seq,
            device_id=self.device_id,
            label="capuchinbird",
            start_s=self.seq * 10.0,
            end_s=self.seq * 10.0 + 1.5,
            peak_score=0.97,
            source="mic",
            start_utc="2026-11-29T05:30:00.000Z",
            clock_synced=True,
            mono_s=time.monotonic(),
        )
        info = self.client.publish(f"{self.base}/events", event.to_json(), qos=1)
        self.sent.append((event.event_id, info.mid))

    def unacked(self) -> int:
        # A publish while the broker is away returns "not connected" but stays queued in
        # paho, which sends it on reconnect: its PUBACK is what counts.
        return sum(mid not in self.acked for _, mid in self.sent)


def _self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def recorder_worker(device_ids: list[str], port: int, conn) -> None:
    """Hold ``device_ids``' recorders and run the parent's commands (see bench.fleet._fleet)."""
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
    conn.send(
        {
            "connected": connected,
            "rss_kib": _proc_status(os.getpid())["VmRSS"] - rss0,
            "threads": _proc_status(os.getpid())["Threads"],
            "connect_cpu_s": _self_cpu_s() - cpu0,
        }
    )
    while True:
        command, arg = conn.recv()
        cpu = _self_cpu_s()
        if command == "steady":
            start = time.monotonic()
            offsets = sorted(
                (i * STEADY_PERIOD_S / len(recorders) + k * STEADY_PERIOD_S, i)
                for i in range(len(recorders))
                for k in range(int(arg / STEADY_PERIOD_S))
            )
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
                recorder.client.publish(
                    f"{recorder.base}/availability", "offline", qos=1, retain=True
                ).wait_for_publish(5)
                recorder.client.disconnect()
                recorder.client.loop_stop()
            conn.send({})
            return
        conn.send(
            {
                "cpu_s": _self_cpu_s() - cpu,
                "unacked": sum(r.unacked() for r in recorders),
                "sent": [event_id for r in recorders for event_id, _ in r.sent],
                "connects": sum(r.connects for r in recorders),
                "rss_kib": _proc_status(os.getpid())["VmRSS"] - rss0,
            }
        )


class Collector:
    """A persistent-session subscriber to every recorder's events; keeps (payload, arrival)."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.received: list[tuple[bytes, float]] = []
        subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="fleet-collector", clean_session=False
        )
        self.client.reconnect_delay_set(0.2, 1.0)  # type: ignore[arg-type]  # seconds; paho takes floats
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("callwatch/+/events", qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = lambda c, u, m: self.received.append((m.payload, time.monotonic()))
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("the collector could not subscribe")

    def unique(self) -> int:
        return len({json.loads(p)["event_id"] for p, _ in list(self.received)})

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained_messages(port: int, topic_filter: str, seconds: float = 3.0) -> dict[str, str]:
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
