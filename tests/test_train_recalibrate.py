"""python -m train.recalibrate: new thresholds from a new site's background, in a copy of the bundle."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from device.bundle import load_bundle
from device.config import validate
from train.recalibrate import recalibrate_bundle

SR = 16000
DETECTION = validate({}).detection
ROOT = Path(__file__).resolve().parents[1]


def site_background(path: Path, seconds: float = 120.0) -> Path:
    """Noise with four 2 kHz bursts (the tone model's 'call') of rising loudness: false alarms."""
    rng = np.random.default_rng(0)
    audio = 0.01 * rng.standard_normal(int(seconds * SR))
    t = np.arange(int(1.5 * SR)) / SR
    for k, amplitude in enumerate((0.02, 0.05, 0.1, 0.2)):
        start = int((15 + 25 * k) * SR)
        if start + len(t) > len(audio):
            break
        audio[start:start + len(t)] += amplitude * np.sin(2 * np.pi * 2000 * t)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, audio.astype(np.float32), SR)
    return path


@pytest.fixture
def bundle_dir(tone_bundle, tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(Path(tone_bundle).parent, folder)
    return folder


def test_recalibration_writes_a_copy_meeting_the_rate(bundle_dir, tmp_path):
    background = site_background(tmp_path / "site/night.wav")
    before = (bundle_dir / "model.json").read_text()
    out = tmp_path / "recalibrated"
    # 120 s of background: 60 alarms per hour allows 2 of the 4 bursts.
    record = recalibrate_bundle(model=bundle_dir, background=[background.parent], out=out,
                                false_alarms_per_hour=60.0, detection=DETECTION, log=lambda m: None)
    assert (bundle_dir / "model.json").read_text() == before  # the original is untouched
    copy = load_bundle(out)
    new, old = copy.thresholds["tone"], load_bundle(bundle_dir).thresholds["tone"]
    entry = record["labels"]["tone"]
    assert entry["old_false_alarms_per_hour"] > 60.0
    assert entry["achieved"]["false_alarms_per_hour"] <= 60.0 + 1e-6
    assert new > old
    assert json.loads((out / "model.json").read_text())["recalibration"]["false_alarms_per_hour"] == 60.0
    strict = recalibrate_bundle(model=bundle_dir, background=[background], out=tmp_path / "strict",
                                false_alarms_per_hour=0.0, detection=DETECTION, log=lambda m: None)
    assert strict["labels"]["tone"]["achieved"]["false_alarms_per_hour"] == 0.0
    assert load_bundle(tmp_path / "strict").thresholds["tone"] > new


def test_command_line_bad_input_exits_2(bundle_dir, tmp_path):
    background = site_background(tmp_path / "bg.wav", seconds=5.0)
    run = [sys.executable, "-m", "train.recalibrate"]
    missing = subprocess.run(run + [str(tmp_path / "nope"), "--background", str(background), "--out",
                                    str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT)
    assert missing.returncode == 2 and "nope" in missing.stderr and "Traceback" not in missing.stderr
    same = subprocess.run(run + [str(bundle_dir), "--background", str(background), "--out", str(bundle_dir),
                                 "--false-alarms-per-hour", "1"], capture_output=True, text=True, cwd=ROOT)
    assert same.returncode == 2 and "copy" in same.stderr
    ok = subprocess.run(run + [str(bundle_dir / "model.tflite"), "--background", str(background), "--out",
                               str(tmp_path / "o"), "--false-alarms-per-hour", "1"], capture_output=True,
                        text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert load_bundle(tmp_path / "o").labels == ("tone",)
