"""python -m device --replay as a subprocess: outputs, summary, failures, --jobs, exit codes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from tinymodel import noise, tone

REPO = Path(__file__).resolve().parents[1]
SR = 16000
TONES = [(3.0, 2.0), (9.0, 1.0), (14.0, 2.5)]


def device(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("STATE_DIRECTORY", None)
    return subprocess.run(
        [sys.executable, "-m", "device", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_config(folder: Path, model: Path, **sections) -> Path:
    import yaml

    values = {"detection": {"model": str(model)}, "service": {"state_dir": str(folder / "state")}}
    for name, section in sections.items():
        values.setdefault(name, {}).update(section)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def tones_signal(seconds: float, sr: int = SR) -> np.ndarray:
    x = noise(seconds, sr)
    for start, length in TONES:
        x[int(start * sr) : int(start * sr) + int(length * sr)] += tone(2000, length, sr)
    return x


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> Path:
    """tones.wav (16 kHz, 20 s), short.wav (0.7 s tone), quiet.flac and a corrupt file."""
    folder = tmp_path_factory.mktemp("recordings")
    soundfile.write(folder / "tones.wav", tones_signal(20.0), SR)
    soundfile.write(folder / "short.wav", noise(0.7, SR) + tone(2000, 0.7, SR), SR)
    soundfile.write(folder / "quiet.flac", noise(6.0, SR), SR)
    (folder / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot audio at all")
    return folder


def events_of(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_replay_a_folder_writes_every_output_and_reports_the_corrupt_file(
    tone_bundle, recordings, tmp_path
):
    config = write_config(tmp_path, tone_bundle)
    out = tmp_path / "out"
    result = device(
        "--config",
        str(config),
        "--replay",
        str(recordings),
        "--events-jsonl",
        "-",
        "--scores-csv",
        str(out / "scores.csv"),
        "--raven-dir",
        str(out / "raven"),
        "--counts-csv",
        str(out / "counts.csv"),
        cwd=tmp_path,
    )
    # The corrupt file is reported and the others processed, then the exit status says so.
    assert result.returncode == 1, result.stderr
    assert "broken.wav" in result.stderr and "not readable as audio" in result.stderr
    summary = [line for line in result.stderr.splitlines() if line.startswith("replay:")]
    assert len(summary) == 1
    assert "4 files" in summary[0] and "1 failed (broken.wav)" in summary[0]
    assert "0.007 h of audio" in summary[0]  # 26.7 s
    assert "x real time" in summary[0]

    events = events_of(result.stdout)
    tone_events = [e for e in events if e["source"] == "tones.wav"]
    assert len(tone_events) == 3
    for event, (start, length) in zip(tone_events, TONES):
        assert start - 1.0 <= event["start_s"] <= start + 0.5
        assert start + length - 0.5 <= event["end_s"] <= start + length + 1.0
        assert (
            event["label"] == "tone" and event["peak_score"] > 0.9 and len(event["event_id"]) == 32
        )
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))

    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert (out / "scores.csv").read_text().splitlines()[0] == "source,start_s,end_s,label,score"
    short = [r for r in rows if r["source"] == "short.wav"]
    assert len(short) == 1 and (short[0]["start_s"], short[0]["end_s"]) == ("0.000", "1.000")
    assert float(short[0]["score"]) > 0.5
    assert len([r for r in rows if r["source"] == "tones.wav"]) == 39  # (20 - 1) / 0.5 + 1
    assert len([r for r in rows if r["source"] == "quiet.flac"]) == 11

    tables = sorted(p.name for p in (out / "raven").iterdir())
    assert tables == [
        "quiet.callwatch.selections.txt",
        "short.callwatch.selections.txt",
        "tones.callwatch.selections.txt",
    ]
    selections = list(
        csv.DictReader((out / "raven" / "tones.callwatch.selections.txt").open(), delimiter="\t")
    )
    assert [float(s["Begin Time (s)"]) for s in selections] == [e["start_s"] for e in tone_events]

    counts = list(csv.reader((out / "counts.csv").open()))
    assert counts[0] == ["source", "site", "tone"]
    assert {row[0]: row[2] for row in counts[1:]} == {
        "quiet.flac": "0", "short.wav": "1", "tones.wav": "3"
    }


def test_jobs_give_the_same_outputs_as_one_process(tone_bundle, recordings, tmp_path):
    config = write_config(tmp_path, tone_bundle)
    outputs = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}"
        result = device(
            "--config",
            str(config),
            "--replay",
            str(recordings),
            "--jobs",
            jobs,
            "--events-jsonl",
            str(out / "events.jsonl"),
            "--scores-csv",
            str(out / "scores.csv"),
            "--counts-csv",
            str(out / "counts.csv"),
            cwd=tmp_path,
        )
        assert result.returncode == 1 and "1 failed" in result.stderr, result.stderr
        events = [
            {k: e[k] for k in ("seq", "label", "start_s", "end_s", "peak_score", "source")}
            for e in events_of((out / "events.jsonl").read_text())
        ]
        outputs[jobs] = (events, (out / "scores.csv").read_text(), (out / "counts.csv").read_text())
    assert outputs["1"] == outputs["2"]
    assert len(outputs["1"][0]) == 4


def test_a_48khz_stereo_mp3_gives_the_events_of_the_16khz_wav(tone_bundle, tmp_path):
    x48 = tones_signal(20.0, sr=48000)
    soundfile.write(tmp_path / "tones.mp3", np.stack([x48, 0.5 * x48], axis=1), 48000, format="MP3")
    soundfile.write(tmp_path / "tones.wav", tones_signal(20.0), SR)
    config = write_config(tmp_path, tone_bundle)
    spans = {}
    for name in ("tones.mp3", "tones.wav"):
        result = device(
            "--config",
            str(config),
            "--replay",
            str(tmp_path / name),
            "--events-jsonl",
            "-",
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        spans[name] = [(e["start_s"], e["end_s"]) for e in events_of(result.stdout)]
    assert len(spans["tones.mp3"]) == len(spans["tones.wav"]) == 3
    for (a0, a1), (b0, b1) in zip(spans["tones.mp3"], spans["tones.wav"]):
        assert abs(a0 - b0) <= 0.5 and abs(a1 - b1) <= 0.5  # within one hop


def test_realtime_replay_takes_as_long_as_the_audio_and_writes_the_same(tone_frames_bundle, tmp_path):
    """Paced, the worker gets audio in the live worker's small blocks and hands the detector a
    window at a time; as fast as possible, a block's windows at once (the frame rule stitches
    them together): the same events and scores, byte for byte."""
    x = noise(3.0, SR)
    x[SR : SR + SR // 2] += tone(2000, 0.5, SR)
    soundfile.write(tmp_path / "three.wav", x, SR)
    config = write_config(tmp_path, tone_frames_bundle)
    outputs = {}
    for pace in ("fast", "paced"):
        t0 = time.monotonic()
        result = device(
            "--config", str(config), "--replay", str(tmp_path / "three.wav"),
            "--events-jsonl", f"{pace}.jsonl", "--scores-csv", f"{pace}.csv",
            *(["--realtime"] if pace == "paced" else []), cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        outputs[pace] = ((tmp_path / f"{pace}.jsonl").read_text(), (tmp_path / f"{pace}.csv").read_text())
    assert time.monotonic() - t0 >= 3.0
    assert "1x real time" in result.stderr
    assert len(events_of(outputs["fast"][0])) == 1
    assert outputs["paced"] == outputs["fast"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing_model", "no such model file or folder"),
        ("no_manifest", "model.json: model manifest missing"),
        ("damaged_model", "does not match model.json"),
        ("unknown_threshold", "detection.thresholds.owl: not a label of the model"),
        ("missing_path", "nowhere.wav: no such file or folder"),
        ("empty_folder", "no audio files"),
    ],
)
def test_bad_input_exits_2_with_one_line(tone_bundle, recordings, tmp_path, setup, message):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(tone_bundle.parent, bundle)
    model = bundle / "model.tflite"
    replay = [str(recordings / "tones.wav")]
    overrides = {}
    if setup == "missing_model":
        model = tmp_path / "absent.tflite"
    elif setup == "no_manifest":
        (bundle / "model.json").unlink()
    elif setup == "damaged_model":
        model.write_bytes(model.read_bytes() + b"\0")
    elif setup == "unknown_threshold":
        overrides = {"detection": {"thresholds": {"owl": 0.5}}}
    elif setup == "missing_path":
        replay = [str(tmp_path / "nowhere.wav")]
    elif setup == "empty_folder":
        (tmp_path / "empty").mkdir()
        replay = [str(tmp_path / "empty")]
    config = write_config(tmp_path, model, **overrides)
    result = device("--config", str(config), "--replay", *replay, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_replay_only_flags_without_replay_are_a_usage_error(tmp_path):
    result = device("--jobs", "2", cwd=tmp_path)
    assert result.returncode == 2 and "only apply with --replay" in result.stderr


@pytest.mark.realdata
def test_replay_of_real_soundscapes(tone_bundle, tmp_path):
    recordings = Path(__file__).resolve().parents[2] / "shared" / "data" / "capuchin" / "recordings"
    if not recordings.is_dir():
        pytest.skip("../shared/data is absent")
    files = [str(p) for p in sorted(recordings.glob("*.mp3"))[:2]]
    config = write_config(tmp_path, tone_bundle)
    result = device(
        "--config",
        str(config),
        "--replay",
        *files,
        "--counts-csv",
        str(tmp_path / "c.csv"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "2 files, 0.100 h of audio" in result.stderr
    assert len(list(csv.reader((tmp_path / "c.csv").open()))) == 3


def test_the_shipped_config_replays_a_bundle_without_frames_by_the_window_rule(
    tone_bundle, tone_frames_bundle, tmp_path
):
    """config.yaml trains frame heads (train.model.pooling: time), but a bundle of window scores
    only (pooling: max or avg, or made before the frame output) keeps its window rule; a frames
    bundle gets the frames rule. Both through the shipped config.yaml, only the model replaced."""
    import yaml

    shipped = yaml.safe_load((REPO / "config.yaml").read_text())
    assert shipped["train"]["model"]["pooling"] == "time"
    audio = tmp_path / "tones.wav"
    soundfile.write(audio, tones_signal(20.0), SR)
    events = {}
    for name, bundle in (("window", tone_bundle), ("frames", tone_frames_bundle)):
        folder = tmp_path / name
        folder.mkdir()
        values = yaml.safe_load((REPO / "config.yaml").read_text())
        values["detection"]["model"] = str(bundle)
        values["service"]["state_dir"] = str(folder / "state")
        config = folder / "config.yaml"
        config.write_text(yaml.safe_dump(values))
        result = device(
            "--config", str(config), "--replay", str(audio), "--events-jsonl", "-", cwd=folder
        )
        assert result.returncode == 0, result.stderr
        events[name] = events_of(result.stdout)
    assert "frames" not in json.loads((tone_bundle.parent / "model.json").read_text())
    for rule, found in events.items():
        assert len(found) == len(TONES), (rule, found)
        for event, (start, length) in zip(found, TONES):
            assert start - 1.0 <= event["start_s"] <= start + 0.5, (rule, event)
            assert start + length - 0.5 <= event["end_s"] <= start + length + 1.0, (rule, event)
    # The window rule (no recorded extent: the centre rule) places events on the hop grid, the
    # centre hop of each firing window; the frames rule on the 0.1 s cells.
    assert all(round(e["start_s"] * 4) == e["start_s"] * 4 for e in events["window"])
