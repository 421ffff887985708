"""Live equals replay, through a real PulseAudio null sink and the real sounddevice path.

A recording is played into a null sink with paplay while ``python -m device`` captures the
sink's monitor (PortAudio -> ALSA's pulse device, with $PULSE_SOURCE naming the monitor);
its events must match those of ``--replay`` on the same file within one hop. SIGTERM and
SIGINT must flush the sinks (an event still open is written) and exit 0.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml
from tinymodel import noise, tone

REPO = Path(__file__).resolve().parents[1]
SR = 16000
HOP_S = 0.5
TONES = [(2.0, 1.5), (6.0, 1.0), (10.0, 2.0)]


def _run(*command: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def null_sink():
    """A fresh PulseAudio null sink (the server started if none runs); yields its name."""
    if not (shutil.which("pulseaudio") and shutil.which("pactl") and shutil.which("paplay")):
        pytest.skip("PulseAudio (pulseaudio, pactl, paplay) is not installed")
    started = False
    if _run("pulseaudio", "--check").returncode != 0:
        # As root PulseAudio warns that it is meant for a user session, and runs anyway.
        result = _run("pulseaudio", "--start", "--exit-idle-time=-1")
        if result.returncode != 0 or _run("pulseaudio", "--check").returncode != 0:
            pytest.skip(f"cannot start PulseAudio: {result.stderr.strip() or result.returncode}")
        started = True
    name = f"callwatch_test_{uuid.uuid4().hex[:8]}"
    loaded = _run("pactl", "load-module", "module-null-sink", f"sink_name={name}")
    if loaded.returncode != 0:
        pytest.skip(f"cannot load a PulseAudio null sink: {loaded.stderr.strip()}")
    try:
        yield name
    finally:
        _run("pactl", "unload-module", loaded.stdout.strip())
        if started:
            _run("pulseaudio", "--kill")


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    x = noise(14.0, SR)
    for start, length in TONES:
        x[int(start * SR) : int(start * SR) + int(length * SR)] += tone(2000, length, SR)
    path = tmp_path_factory.mktemp("live") / "tones.wav"
    soundfile.write(path, x, SR)
    return path


class Daemon:
    """``python -m device`` listening to the null sink's monitor."""

    def __init__(self, folder: Path, model: Path, sink: str, detection: dict | None = None) -> None:
        self.events = folder / "events.jsonl"
        self.log = folder / "daemon.log"
        config = folder / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "detection": {"model": str(model), "hop_s": HOP_S, **(detection or {})},
                    "audio": {"device": "pulse"},
                    "outputs": {"events_jsonl": str(self.events)},
                    "service": {"state_dir": str(folder / "state"), "device_id": "live-test"},
                }
            )
        )
        env = {**os.environ, "PYTHONPATH": str(REPO), "PULSE_SOURCE": f"{sink}.monitor"}
        env.pop("NOTIFY_SOCKET", None)
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "device", "--config", str(config)],
            cwd=folder,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
        )

    def wait_listening(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while "listening on" not in self.log.read_text():
            if self.process.poll() is not None:
                pytest.fail(f"daemon exited with {self.process.returncode}: {self.log.read_text()}")
            if time.monotonic() > deadline:
                self.stop(signal.SIGTERM)
                pytest.skip(
                    f"no audio from the PulseAudio monitor within {timeout} s: "
                    f"{self.log.read_text()}"
                )
            time.sleep(0.1)

    def stop(self, signum: int) -> int:
        self.process.send_signal(signum)
        try:
            code = self.process.wait(30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self._log_file.close()
        return code

    def read_events(self) -> list[dict]:
        if not self.events.exists():
            return []
        return [json.loads(line) for line in self.events.read_text().splitlines()]


def replay_events(
    folder: Path, model: Path, recording: Path, detection: dict | None = None
) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    config = folder / "replay.yaml"
    config.write_text(
        yaml.safe_dump({"detection": {"model": str(model), "hop_s": HOP_S, **(detection or {})}})
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "device",
            "--config",
            str(config),
            "--replay",
            str(recording),
            "--events-jsonl",
            "-",
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.slow
def test_live_capture_gives_the_events_of_replay_and_sigterm_exits_0(
    tone_bundle, null_sink, recording, tmp_path
):
    daemon = Daemon(tmp_path, tone_bundle, null_sink)
    daemon.wait_listening()
    time.sleep(1.0)
    played_at = time.monotonic()
    play = _run("paplay", f"--device={null_sink}", str(recording), timeout=60)
    assert play.returncode == 0, play.stderr
    time.sleep(2.5)  # the last tone's event closes one window after the tone ends
    assert daemon.stop(signal.SIGTERM) == 0, daemon.log.read_text()
    log = daemon.log.read_text()
    assert "Traceback" not in log and "stopped:" in log

    live = daemon.read_events()
    replayed = replay_events(tmp_path, tone_bundle, recording)
    assert len(replayed) == len(TONES)
    assert len(live) == len(replayed), (live, replayed)
    # Live times count from the daemon's first sample: shift them to the file's start.
    offsets = [a["start_s"] - b["start_s"] for a, b in zip(live, replayed)]
    offset = float(np.median(offsets))
    for a, b in zip(live, replayed):
        assert abs(a["start_s"] - offset - b["start_s"]) <= HOP_S, (live, replayed)
        assert abs(a["end_s"] - offset - b["end_s"]) <= HOP_S, (live, replayed)
        assert a["label"] == b["label"] and a["source"] == "pulse" and a["device_id"] == "live-test"
    # And on the shared monotonic clock the events are where the file put them: within one
    # hop plus the audio path's latency (PulseAudio buffers).
    for a, b in zip(live, replayed):
        assert abs((a["mono_s"] - played_at) - b["start_s"]) <= HOP_S + 0.5
    assert [e["seq"] for e in live] == [1, 2, 3]
    assert (tmp_path / "state" / "seq").read_text().strip() == "3"


@pytest.mark.slow
def test_long_calls_split_at_max_event_s_tile_live_as_in_replay(tone_bundle, null_sink, tmp_path):
    """A call longer than detection.max_event_s comes out as pieces that tile its extent
    (each starts where the previous ended, never overlapping it), with the same boundaries
    live and in replay, within one hop."""
    x = noise(12.0, SR)
    x[int(2.0 * SR) : int(9.0 * SR)] += tone(2000, 7.0, SR)
    recording = tmp_path / "long.wav"
    soundfile.write(recording, x, SR)
    detection = {"max_event_s": 2.0}
    daemon = Daemon(tmp_path, tone_bundle, null_sink, detection)
    daemon.wait_listening()
    time.sleep(1.0)
    play = _run("paplay", f"--device={null_sink}", str(recording), timeout=60)
    assert play.returncode == 0, play.stderr
    time.sleep(2.5)
    assert daemon.stop(signal.SIGTERM) == 0, daemon.log.read_text()
    live = daemon.read_events()
    replayed = replay_events(tmp_path, tone_bundle, recording, detection)
    assert len(replayed) >= 3, replayed  # about 7 s of call in pieces of at most 2 s
    for events in (live, replayed):
        assert all(e["end_s"] - e["start_s"] <= 2.0 + 1e-6 for e in events), events
        assert all(a["end_s"] == b["start_s"] for a, b in zip(events, events[1:])), events
    assert len(live) == len(replayed), (live, replayed)
    offset = float(np.median([a["start_s"] - b["start_s"] for a, b in zip(live, replayed)]))
    for a, b in zip(live, replayed):
        assert abs(a["start_s"] - offset - b["start_s"]) <= HOP_S, (live, replayed)
        assert abs(a["end_s"] - offset - b["end_s"]) <= HOP_S, (live, replayed)


def test_sigint_during_a_call_flushes_the_open_event_and_exits_0(tone_bundle, null_sink, tmp_path):
    long_tone = tmp_path / "long.wav"
    soundfile.write(
        long_tone, noise(1.0, SR).tolist() + (noise(8.0, SR) + tone(2000, 8.0, SR)).tolist(), SR
    )
    state = tmp_path / "state"
    state.mkdir()
    (state / "seq").write_text("41\n")  # events continue the numbering of earlier runs
    daemon = Daemon(tmp_path, tone_bundle, null_sink)
    daemon.wait_listening()
    player = subprocess.Popen(["paplay", f"--device={null_sink}", str(long_tone)])
    try:
        time.sleep(5.0)  # well inside the tone: the event is open, not yet written
        assert daemon.read_events() == []
        assert daemon.stop(signal.SIGINT) == 0, daemon.log.read_text()
    finally:
        player.terminate()
        player.wait(10)
    [event] = daemon.read_events()
    assert event["seq"] == 42 and event["end_s"] - event["start_s"] >= 2.0
    assert "Traceback" not in daemon.log.read_text()


def test_a_microphone_that_is_not_there_lists_the_devices_and_exits_2(tone_bundle, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "detection": {"model": str(tone_bundle)},
                "audio": {"device": "no such microphone"},
                "service": {"state_dir": str(tmp_path / "state")},
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "device", "--config", str(config)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "no input device named like 'no such microphone'" in error and "input devices:" in error


def test_the_real_microphone_reopens_after_portaudio_restarts(null_sink, monkeypatch):
    """MicrophoneSource on the real sounddevice: open, close, reopen (PortAudio is restarted
    so that a replugged microphone is found again), audio flows both times."""
    from device.sources import MicrophoneSource

    monkeypatch.setenv("PULSE_SOURCE", f"{null_sink}.monitor")
    source = MicrophoneSource(
        device="pulse", sample_rate=None, model_rate=SR, channels=1, block_s=0.05, ring_s=5.0
    )
    try:
        for start_s in (0.0, 10.0):
            source.open(start_s=start_s)
            deadline = time.monotonic() + 20
            while source.ring.written < source.ring.read_position + SR // 10:
                assert time.monotonic() < deadline, "no audio from the monitor"
                time.sleep(0.05)
            assert source.running and source.ring.read_position == round(start_s * SR)
            source.close()
    finally:
        source.close()


@pytest.mark.slow
def test_frame_rule_events_live_are_those_of_replay(tone_frames_bundle, null_sink, tmp_path):
    """A model with a frame output: calls 1.2 s apart are separate events, opened then closed,
    with the same boundaries live and in replay (within one hop)."""
    x = noise(10.0, SR)
    for start, length in ((2.0, 0.6), (3.8, 0.7), (6.5, 0.5)):
        x[int(start * SR) : int((start + length) * SR)] += tone(2000, length, SR)
    recording = tmp_path / "close_calls.wav"
    soundfile.write(recording, x, SR)
    daemon = Daemon(tmp_path, tone_frames_bundle, null_sink)
    daemon.wait_listening()
    time.sleep(1.0)
    play = _run("paplay", f"--device={null_sink}", str(recording), timeout=60)
    assert play.returncode == 0, play.stderr
    time.sleep(2.5)  # cells are final one window after their audio
    assert daemon.stop(signal.SIGTERM) == 0, daemon.log.read_text()
    live = daemon.read_events()
    replayed = replay_events(tmp_path, tone_frames_bundle, recording)
    assert len(replayed) == 3, replayed
    assert len(live) == len(replayed), (live, replayed)
    offset = float(np.median([a["start_s"] - b["start_s"] for a, b in zip(live, replayed)]))
    for a, b in zip(live, replayed):
        assert abs(a["start_s"] - offset - b["start_s"]) <= HOP_S, (live, replayed)
        assert abs(a["end_s"] - offset - b["end_s"]) <= HOP_S, (live, replayed)
