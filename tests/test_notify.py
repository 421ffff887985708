"""The systemd notify protocol against a socket the test listens on (path and abstract)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.notify import Notifier

REPO = Path(__file__).resolve().parents[1]


class Listener:
    """A unix datagram socket standing in for systemd's notify socket."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def receive(self, timeout_s: float = 5.0) -> str:
        self.sock.settimeout(timeout_s)
        return self.sock.recv(4096).decode()

    def pending(self) -> list[str]:
        """Every datagram already queued, without waiting."""
        self.sock.setblocking(False)
        out = []
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return out


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Listener]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        path = tmp_path / "notify"
        if len(str(path)) >= 100:  # sun_path holds 108 bytes
            pytest.skip(f"tmp path too long for a unix socket: {path}")
        sock.bind(str(path))
        value = str(path)
    else:
        name = f"callwatch-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        value = "@" + name
    try:
        yield Listener(sock, value)
    finally:
        sock.close()


def test_ready_status_watchdog_stopping(listener: Listener) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": listener.env_value})
    assert notifier.enabled
    assert notifier.ready(status="listening on hw:1")
    assert listener.receive() == "READY=1\nSTATUS=listening on hw:1"
    assert notifier.watchdog()
    assert listener.receive() == "WATCHDOG=1"
    assert notifier.status("rtf 0.04\nevents 3")
    # A newline would start a new assignment: the status stays on one line.
    assert listener.receive() == "STATUS=rtf 0.04 events 3"
    assert notifier.stopping()
    assert listener.receive() == "STOPPING=1"
    assert listener.pending() == []


def test_a_child_process_reaches_the_socket_through_its_environment(listener: Listener) -> None:
    env = {**os.environ, "NOTIFY_SOCKET": listener.env_value, "PYTHONPATH": str(REPO)}
    code = "from device.notify import Notifier; n = Notifier.from_env(); n.ready(); n.watchdog()"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    assert listener.receive() == "READY=1"
    assert listener.receive() == "WATCHDOG=1"


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert not notifier.status("x")
    assert not notifier.stopping()


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "60000000"}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        # systemd names the main process; a forked child must not take over its watchdog.
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout(env: dict, interval: float | None) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "/run/systemd/notify", **env})
    assert notifier.watchdog_interval_s == interval


def test_send_failure_never_raises_and_warns_once(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    with caplog.at_level(logging.DEBUG, logger="device.notify"):
        assert not notifier.ready()
        assert not notifier.watchdog()
        assert not notifier.watchdog()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "nobody-listens" in warnings[0].getMessage()


def test_an_unusable_address_disables_notifications(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="device.notify"):
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "relative/notify"})
    assert not notifier.enabled
    assert not notifier.ready()
    assert "relative/notify" in caplog.text


# ---------------------------------------------------------------- end to end: python -m device


@pytest.fixture
def pulse_mic(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A private PulseAudio server with a null sink whose monitor is the microphone.

    Yields the environment a client needs to reach it (PULSE_SERVER, PULSE_SOURCE).
    """
    if shutil.which("pulseaudio") is None or shutil.which("pactl") is None:
        pytest.skip("pulseaudio/pactl not installed (Debian packages pulseaudio, pulseaudio-utils)")
    runtime = tmp_path / "pulse"
    runtime.mkdir()
    native = runtime / "native"
    if len(str(native)) >= 100:
        pytest.skip(f"tmp path too long for a unix socket: {native}")
    env = {**os.environ, "HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path),
           "PULSE_RUNTIME_PATH": str(runtime)}
    server = subprocess.Popen(
        ["pulseaudio", "-n", "--daemonize=no", "--use-pid-file=no", "--exit-idle-time=-1",
         "--disallow-exit", "--log-target=stderr",
         f"--load=module-native-protocol-unix auth-anonymous=1 socket={native}",
         "--load=module-null-sink sink_name=mic"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = {"PULSE_SERVER": f"unix:{native}", "PULSE_SOURCE": "mic.monitor"}
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(["pactl", "info"], env={**os.environ, **client},
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline or server.poll() is not None:
                pytest.skip("the private PulseAudio server did not start")
            time.sleep(0.2)
        yield client
    finally:
        server.terminate()
        server.wait(10)


def wait_for(listener: Listener, wanted: str, timeout_s: float) -> list[str]:
    """Messages received until one equal to or starting with ``wanted``; fails on timeout."""
    seen = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            seen.append(listener.receive(timeout_s=max(0.01, deadline - time.monotonic())))
        except TimeoutError:
            break
        if seen[-1].startswith(wanted):
            return seen
    raise AssertionError(f"no {wanted!r} within {timeout_s} s; got {seen}")


def collect(listener: Listener, seconds: float) -> list[str]:
    seen = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            seen.append(listener.receive(timeout_s=left))
        except TimeoutError:
            break
    return seen


@pytest.mark.slow
def test_watchdog_pings_stop_while_the_microphone_stalls(
        pulse_mic: dict[str, str], tone_bundle: Path, tmp_path: Path) -> None:
    """The live daemon against a real (PulseAudio) microphone: READY once audio flows,
    WATCHDOG=1 while it flows, none while the source is suspended (capture that dies
    silently), pings again once it is back, STOPPING=1 and exit 0 on SIGTERM."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "audio:\n  device: pulse\n  liveness_timeout_s: 2.0\n  silence_timeout_s: 0\n"
        "  reopen_backoff_s: [0.5, 1.0]\n"
        f"detection:\n  model: {tone_bundle}\n"
        f"service:\n  state_dir: {tmp_path / 'state'}\n  log_level: debug\n")
    name = f"callwatch-e2e-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    listener = Listener(sock, "@" + name)
    env = {**os.environ, **pulse_mic, "NOTIFY_SOCKET": listener.env_value,
           "WATCHDOG_USEC": "30000000", "PYTHONPATH": str(REPO)}
    env.pop("JOURNAL_STREAM", None)
    log_path = tmp_path / "daemon.log"
    pactl_env = {**os.environ, **pulse_mic}
    with open(log_path, "w") as log_file:
        daemon = subprocess.Popen([sys.executable, "-m", "device", "--config", str(config)],
                                  env=env, cwd=tmp_path, stderr=log_file)
    try:
        ready = wait_for(listener, "READY=1", timeout_s=90)[-1]
        assert ready.startswith("READY=1\nSTATUS=listening on "), ready
        flowing = collect(listener, 2.0)
        assert flowing.count("WATCHDOG=1") >= 2, flowing

        subprocess.run(["pactl", "suspend-sink", "mic", "1"], env=pactl_env, check=True)
        collect(listener, 1.0)  # a ping for audio that was already on its way
        stalled = collect(listener, 4.0)  # spans the liveness timeout and the first reopen
        assert "WATCHDOG=1" not in stalled, stalled

        subprocess.run(["pactl", "suspend-sink", "mic", "0"], env=pactl_env, check=True)
        wait_for(listener, "WATCHDOG=1", timeout_s=30)

        daemon.send_signal(signal.SIGTERM)
        wait_for(listener, "STOPPING=1", timeout_s=30)
        assert daemon.wait(30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)
        sock.close()
    log_text = log_path.read_text()
    assert "no audio; reopening" in log_text, log_text
