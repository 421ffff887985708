"""The benches' fallback model (no trained bundle under runs/) is the schema's default: a frame
head whose bundle the device reads with the frames rule, and whose replay gives events."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from device.config import SCHEMA

pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def fallback(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bench._models import architecture_bundle

    return architecture_bundle(tmp_path_factory.mktemp("architecture") / "bundle")


def test_the_fallback_is_the_default_architecture_with_the_frame_rule(fallback: Path) -> None:
    from bench._models import architecture_note
    from device.bundle import load_bundle
    from train.model import step_frames

    assert SCHEMA["train"]["model"]["pooling"].default == "time"
    bundle = load_bundle(fallback)
    assert bundle.frame_rule
    params, window_s = bundle.features, SCHEMA["train"]["window_s"].default
    model = SCHEMA["train"]["model"]
    # model.json's frames as convert writes them: train.model.step_frames of the config
    per_step = step_frames(frames=params.window_frames(window_s), n_mels=params.n_mels,
                           filters=list(model["filters"].default), stem_stride=model["stem_stride"].default)
    assert bundle.frames["step_frames"] == per_step
    assert bundle.frames["step_s"] == pytest.approx(per_step / params.frame_rate)
    assert bundle.frame_layout(SCHEMA["detection"]["hop_s"].default).steps == bundle.frames["shape"][1]
    assert 0 < bundle.event_thresholds()["call"] < 1
    assert "pooling: time" in architecture_note() and "frames rule" in architecture_note()


def test_replaying_tones_with_the_fallback_gives_an_event_at_each_tone(fallback: Path, tmp_path: Path) -> None:
    import soundfile

    from bench._models import tone_signal

    audio, events = tmp_path / "tones.wav", tmp_path / "events.jsonl"
    soundfile.write(audio, tone_signal(30, 16000), 16000)  # 1.5 s tones at 3, 13 and 23 s
    done = subprocess.run(
        [sys.executable, "-m", "device", "--model", str(fallback), "--config", "/dev/null",
         "--replay", str(audio), "--events-jsonl", str(events)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    found = [json.loads(line) for line in events.read_text().splitlines()]
    tones = [(3.0, 4.5), (13.0, 14.5), (23.0, 24.5)]
    # Frame cells, not windows: each event lies on its tone, well inside the 3 s window.
    assert [any(e["start_s"] < end and e["end_s"] > start for e in found) for start, end in tones] == [True] * 3
    for event in found:
        assert any(start - 0.5 <= event["start_s"] and event["end_s"] <= end + 0.5 for start, end in tones), event
