"""python -m train.recalibrate on frames-rule bundles (the frame threshold, on the device's
stitched frame track), checked against the real device path: ``python -m device --replay``
of the recalibrated copy makes no more false alarms than asked, and exactly as many as the
recalibration counted; the window path is checked the same way."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_train_recalibrate import site_background

from device.bundle import load_bundle
from device.config import validate
from train.recalibrate import recalibrate_bundle

ROOT = Path(__file__).resolve().parents[1]
DETECTION = validate({}).detection


def replayed_events(model: Path, audio: Path, folder: Path) -> list[dict]:
    """The finished events of ``python -m device --replay`` (default detection settings)."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {"detection": {"model": str(model)}, "service": {"state_dir": str(folder / "state")}}
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("STATE_DIRECTORY", None)
    out = folder / "events.jsonl"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "device",
            "--config",
            str(config),
            "--replay",
            str(audio),
            "--events-jsonl",
            str(out),
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def frames_dir(tone_frames_bundle, tmp_path):
    folder = tmp_path / "frames_bundle"
    shutil.copytree(Path(tone_frames_bundle).parent, folder)
    return folder


def test_a_frames_bundle_recalibrated_meets_the_rate_when_replayed(frames_dir, tmp_path):
    background = site_background(tmp_path / "site/night.wav")
    before = digests(frames_dir)
    out = tmp_path / "recalibrated"
    # 120 s of background with four tone bursts of rising loudness: 60 per hour allows 2.
    record = recalibrate_bundle(
        model=frames_dir,
        background=[background.parent],
        out=out,
        false_alarms_per_hour=60.0,
        detection=DETECTION,
        log=lambda m: None,
    )
    assert digests(frames_dir) == before  # the original is untouched
    entry = record["labels"]["tone"]
    hours = entry["achieved"]["hours"]
    assert record["rule"] == "frames" and entry["old_threshold"] == 0.5
    copy, original = load_bundle(out), load_bundle(frames_dir)
    assert copy.frame_rule and copy.event_thresholds()["tone"] == entry["threshold"] > 0.5
    assert (
        copy.thresholds == original.thresholds
    )  # the window threshold: not read by the frames rule
    assert copy.manifest["recalibration"] == json.loads(json.dumps(record))
    assert copy.manifest["sha256"] == original.manifest["sha256"]  # the same model file

    old_events = replayed_events(frames_dir, background, tmp_path / "old")
    new_events = replayed_events(out, background, tmp_path / "new")
    allowed = 60.0 * hours
    assert len(old_events) > allowed  # the shipped threshold fires too often at this site
    assert len(new_events) <= allowed
    # The recalibration counted the device's own events: the same numbers as the replay.
    assert len(old_events) == round(entry["old_false_alarms_per_hour"] * hours)
    assert len(new_events) == round(entry["achieved"]["false_alarms_per_hour"] * hours)

    strict = recalibrate_bundle(
        model=frames_dir,
        background=[background],
        out=tmp_path / "strict",
        false_alarms_per_hour=0.0,
        detection=DETECTION,
        log=lambda m: None,
    )
    assert strict["labels"]["tone"]["achieved"]["false_alarms_per_hour"] == 0.0
    assert replayed_events(tmp_path / "strict", background, tmp_path / "strict_replay") == []


def test_a_window_bundle_recalibrated_counts_what_the_replay_makes(tone_bundle, tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(Path(tone_bundle).parent, folder)
    background = site_background(tmp_path / "site/night.wav")
    out = tmp_path / "recalibrated"
    record = recalibrate_bundle(
        model=folder,
        background=[background],
        out=out,
        false_alarms_per_hour=60.0,
        detection=DETECTION,
        log=lambda m: None,
    )
    entry = record["labels"]["tone"]
    assert record["rule"] == "windows" and load_bundle(out).thresholds["tone"] == entry["threshold"]
    events = replayed_events(out, background, tmp_path / "replay")
    assert len(events) <= 60.0 * entry["achieved"]["hours"]
    assert len(events) == round(
        entry["achieved"]["false_alarms_per_hour"] * entry["achieved"]["hours"]
    )


def test_bad_input_is_one_line_and_exit_2(frames_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken" / "night.wav"
    broken.parent.mkdir()
    broken.write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot audio at all")
    good = site_background(tmp_path / "good.wav", seconds=5.0)
    cases = [
        ([str(frames_dir), "--background", str(empty)], "no audio files"),
        ([str(frames_dir), "--background", str(broken)], "night.wav"),
        ([str(frames_dir), "--background", str(good), "--hop-s", "0"], "--hop-s"),
        ([str(tmp_path / "nope"), "--background", str(good)], "nope"),
    ]
    for args, named in cases:
        result = subprocess.run(
            [sys.executable, "-m", "train.recalibrate", *args, "--out", str(tmp_path / "o")],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=300,
        )
        assert result.returncode == 2, (args, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and named in lines[0], (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()
