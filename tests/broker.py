"""A real Mosquitto broker for tests, on a free 127.0.0.1 port, all files under one folder.

``Broker(folder).start()`` writes ``mosquitto.conf`` and runs ``mosquitto -c`` on it; variants
add TLS (a CA, a server and a client certificate made with ``openssl``), a client certificate
requirement and a password file (``mosquitto_passwd -b -c``). ``stop()`` / ``start()`` keep the
port, and broker persistence keeps subscribers' sessions over a restart, so a test can take the
broker away in the middle of a stream and bring it back.

Run as root, Mosquitto would drop to the ``mosquitto`` user, which cannot enter pytest's
``/tmp/pytest-of-root`` (mode 700) to read its config, password file and key; the config says
``user root`` then, so the broker keeps the test's own permissions.

:class:`Subscriber` is a paho client that records every message of a topic filter.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass(frozen=True)
class Certs:
    """PEM files of a throw-away PKI."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_ca(folder: Path, name: str = "ca") -> tuple[Path, Path]:
    """A self-signed CA (EC P-256, valid 2 days): (certificate, key)."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
             "-subj", f"/CN=callwatch test {name}", cwd=folder)
    return folder / f"{name}.crt", folder / f"{name}.key"


def _issue(folder: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)
    (folder / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
             cwd=folder)
    return folder / f"{name}.crt", folder / f"{name}.key"


def make_certs(folder: Path) -> Certs:
    """A CA, a server certificate for 127.0.0.1 / localhost and a client certificate."""
    ca = make_ca(folder)
    server = _issue(folder, "server", ca, "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                    "extendedKeyUsage=serverAuth\n")
    client = _issue(folder, "client", ca, "extendedKeyUsage=clientAuth\n")
    return Certs(ca[0], server[0], server[1], client[0], client[1])


class Broker:
    """One Mosquitto process; ``host``/``port`` stay the same over stop() and start()."""

    host = "127.0.0.1"

    def __init__(self, folder: Path, *, tls: bool = False, require_client_cert: bool = False,
                 users: dict[str, str] | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.certs = make_certs(self.folder / "pki") if tls else None
        self.users = dict(users or {})
        self.log_path = self.folder / "mosquitto.log"
        self._proc: subprocess.Popen | None = None
        lines = [f"listener {self.port} {self.host}",
                 "persistence true", f"persistence_location {self.folder}/",
                 "autosave_interval 1",
                 f"allow_anonymous {'false' if self.users else 'true'}"]
        if os.geteuid() == 0:
            lines.append("user root")
        if self.users:
            passwd = self.folder / "passwd"
            for i, (user, password) in enumerate(self.users.items()):
                subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(passwd),
                                user, password], check=True, capture_output=True)
            lines.append(f"password_file {passwd}")
        if self.certs:
            lines += [f"cafile {self.certs.ca}", f"certfile {self.certs.server_cert}",
                      f"keyfile {self.certs.server_key}"]
            if require_client_cert:
                lines.append("require_certificate true")
        self.conf = self.folder / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout_s: float = 10.0) -> Broker:
        assert self._proc is None, "already running"
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited ({self._proc.returncode}): {self.log()}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log()}")

    def stop(self) -> None:
        """SIGTERM (the broker saves its sessions) and wait."""
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def mqtt_config(self, **overrides) -> dict:
        """An ``mqtt:`` config section that reaches this broker (TLS files included)."""
        section = {"enabled": True, "host": self.host, "port": self.port,
                   "reconnect_s": [0.2, 1.0], "state_interval_s": 1.0}
        if self.certs:
            section["tls"] = {"enabled": True, "ca_file": str(self.certs.ca)}
        section.update(overrides)
        return section


class Subscriber:
    """Records every message on ``topic`` (a filter) in arrival order, from a thread of its own.

    ``session``: a client id for a persistent session (clean_session False, QoS 1), so that
    messages published while this subscriber is away (the broker restarting) are kept for it.
    """

    def __init__(self, broker: Broker, topic: str = "#", *, session: str | None = None,
                 username: str | None = None, password: str | None = None) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=session or "",
                                  clean_session=session is None)
        if username:
            self.client.username_pw_set(username, password)
        if broker.certs:
            self.client.tls_set(ca_certs=str(broker.certs.ca))
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        assert self._subscribed.wait(10), "subscriber could not subscribe"

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append(message)

    def on(self, topic: str) -> list[mqtt.MQTTMessage]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def payloads(self, topic: str) -> list[str]:
        return [m.payload.decode() for m in self.on(topic)]

    def wait_for(self, predicate, timeout_s: float = 10.0) -> bool:
        """Poll ``predicate(self)`` until it is true or the time is up."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.05)
        return predicate(self)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def sample_event(seq: int, *, device_id: str = "dev1", label: str = "tone"):
    """A plausible Event with a fresh event_id (for tests that need events without a model)."""
    import uuid

    from device.events import Event

    return Event(event_id=uuid.uuid4().hex, seq=seq, device_id=device_id, label=label,
                 start_s=seq * 2.0, end_s=seq * 2.0 + 1.5, peak_score=0.93, source="test.wav",
                 start_utc="2026-11-22T23:00:00.500Z", clock_synced=True, mono_s=1000.0 + seq)
