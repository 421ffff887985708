"""The daemon live on a PulseAudio virtual microphone, for the benches (not a benchmark itself):
start PulseAudio, an ALSA configuration with only its plug-in (as a recorder has), and a run
of ``python -m device`` on a null sink's monitor while a recording plays into it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def pulse_command(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def start_pulseaudio() -> bool | None:
    """Start PulseAudio unless it runs: True when started here (stop it after), False when it
    was running already, None when it could not be started."""
    if pulse_command("pulseaudio", "--check").returncode == 0:
        return False
    for _ in range(10):  # right after a previous run's --kill, the old server may still be exiting
        pulse_command("pulseaudio", "--start", "--exit-idle-time=-1")
        if pulse_command("pulseaudio", "--check").returncode == 0:
            return True
        time.sleep(0.5)
    return None


def pulse_only_alsa_config(folder: Path) -> Path | None:
    """An ALSA configuration like the system's but with, of the plug-in definitions in
    /etc/alsa/conf.d, only PulseAudio's: what a recorder has without Debian's full
    libasound2-plugins set. PortAudio opens every PCM that ALSA defines when sounddevice is
    imported, which maps each plug-in's libraries (the a52 encoder alone brings libavcodec)."""
    system, plugins = Path("/usr/share/alsa/alsa.conf"), Path("/etc/alsa/conf.d")
    if not system.is_file() or '"/etc/alsa/conf.d"' not in system.read_text():
        return None
    conf_d = folder / "alsa" / "conf.d"
    conf_d.mkdir(parents=True, exist_ok=True)
    for path in plugins.glob("*pulse*.conf"):
        shutil.copy(path, conf_d / path.name)
    config = folder / "alsa" / "alsa.conf"
    config.write_text(system.read_text().replace('"/etc/alsa/conf.d"', json.dumps(str(conf_d))))
    return config


def live_run(
    model: Path,
    recording: Path,
    folder: Path,
    seconds: float = 30.0,
    alsa_config: Path | None = None,
    mqtt_port: int | None = None,
    hop_s: float = 0.5,
) -> dict | str:
    """The daemon on a PulseAudio null sink's monitor; its health at exit and peak RSS.
    alsa_config: ALSA_CONFIG_PATH for the daemon (None: the system's). mqtt_port: publish to
    a broker on 127.0.0.1 there (None: MQTT off)."""
    if not (shutil.which("pulseaudio") and shutil.which("pactl") and shutil.which("paplay")):
        return "PulseAudio is not installed"
    started = start_pulseaudio()
    if started is None:
        return "PulseAudio could not be started"
    sink = f"callwatch_bench_{uuid.uuid4().hex[:8]}"
    module = pulse_command(
        "pactl", "load-module", "module-null-sink", f"sink_name={sink}"
    ).stdout.strip()
    config = folder / "live.yaml"
    config.write_text(
        f"detection: {{model: {json.dumps(str(model))}, hop_s: {hop_s}}}\n"
        f"audio: {{device: pulse}}\nservice: {{state_dir: {json.dumps(str(folder / 'state'))}}}\n"
        + (f"mqtt: {{enabled: true, host: 127.0.0.1, port: {mqtt_port}}}\n" if mqtt_port else "")
    )
    log_path = folder / "live.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PULSE_SOURCE": f"{sink}.monitor"}
    env.pop("NOTIFY_SOCKET", None)
    if alsa_config is not None:
        env["ALSA_CONFIG_PATH"] = str(alsa_config)
    try:
        with log_path.open("w") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "device", "--config", str(config)],
                cwd=folder,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
            deadline = time.monotonic() + 60
            while (
                "listening on" not in log_path.read_text()
                and daemon.poll() is None
                and time.monotonic() < deadline
            ):
                time.sleep(0.1)
            player = subprocess.Popen(["paplay", f"--device={sink}", str(recording)])
            time.sleep(seconds)
            status = Path(f"/proc/{daemon.pid}/status").read_text() if daemon.poll() is None else ""
            hwm = re.search(r"VmHWM:\s+(\d+) kB", status)
            player.terminate()
            player.wait(10)
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(30)
    finally:
        pulse_command("pactl", "unload-module", module)
        if started:
            pulse_command("pulseaudio", "--kill")
    text = log_path.read_text()
    health = re.search(r"health at exit: (\{.*\})", text)
    if not health or not hwm:
        return f"the live daemon did not report (exit {code}): {text.strip().splitlines()[-1:]}"
    return {"health": json.loads(health[1]), "rss_mib": int(hwm[1]) / 1024, "exit": code}


def live_with_broker(model: Path, recording: Path, folder: Path, alsa_config: Path | None):
    """live_run with MQTT on, publishing to a Mosquitto started here (tests/broker.py)."""
    sys.path.insert(0, str(REPO / "tests"))
    from broker import MOSQUITTO, Broker

    if not Path(MOSQUITTO).exists():
        return "Mosquitto is not installed"
    broker = Broker(folder / "broker").start()
    try:
        return live_run(model, recording, folder, alsa_config=alsa_config, mqtt_port=broker.port)
    finally:
        broker.stop()
