"""The README's main job, end to end, as a user runs it: generate the demo data, train,
convert to int8, replay the demo soundscape through the daemon, and find its calls.

Each step is the real command in a subprocess (python -m train.synth / train / convert /
device), with the repository's config.yaml shortened to a few epochs.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(cwd)},
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stderr[-3000:]}"
    return result


def test_demo_trains_converts_and_replays_the_soundscape_calls(tmp_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["train"]["epochs"] = 6
    config["train"]["cache_dir"] = None
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))

    _run("-m", "train.synth", "--out", "demo/data", cwd=tmp_path)
    _run("-m", "train", "--config", "config.yaml", "--data-root", "demo/data",
         "--out", "runs/demo", cwd=tmp_path)
    run = tmp_path / "runs" / "demo"
    for name in ("model.keras", "run.json", "calibration.npy", "test_windows.npz", "split.csv",
                 "report.md", "metrics.json", "config.resolved.yaml", "errors.csv"):
        assert (run / name).is_file(), name

    _run("-m", "convert", "--int8", "runs/demo", cwd=tmp_path)
    manifest = json.loads((run / "model.json").read_text())
    assert manifest["input_dtype"] == manifest["output_dtype"] == "int8"
    # The event rule the thresholds were calibrated for travels with the model.
    assert manifest["events"]["detection"]["hop_s"] == config["detection"]["hop_s"]
    # config.yaml trains a frame head (train.model.pooling: time): events come from its steps.
    assert manifest["frames"]["step_s"] > 0 and manifest["events"]["extent"]["call"]["rule"] == "frames"

    replay = _run("-m", "device", "--config", "config.yaml", "--replay", "demo/replay",
                  "--model", "runs/demo", "--events-jsonl", "-", cwd=tmp_path)
    events = [json.loads(line) for line in replay.stdout.splitlines() if line.startswith("{")]
    assert "0 failed" in replay.stderr + replay.stdout

    table = next((tmp_path / "demo" / "replay").glob("*.selections.txt"))
    with open(table, newline="") as f:
        calls = [(float(r["Begin Time (s)"]), float(r["End Time (s)"]))
                 for r in csv.DictReader(f, delimiter="\t")]
    assert calls, "the demo soundscape has annotated calls"
    found = [any(e["start_s"] <= end and begin <= e["end_s"] for e in events)
             for begin, end in calls]
    # A model trained for a few epochs on the demo data finds nearly every call...
    assert sum(found) >= 0.8 * len(calls), f"found {sum(found)} of {len(calls)} calls: {events}"
    # ...and its events are about calls, not noise: each one overlaps an annotated call.
    stray = [e for e in events
             if not any(e["start_s"] <= end and begin <= e["end_s"] for begin, end in calls)]
    assert len(stray) <= 1, f"events with no call: {stray}"
    # Events say where the calls are (0.5-0.8 s each), not which 3 s windows saw them.
    durations = sorted(e["end_s"] - e["start_s"] for e in events)
    assert durations[len(durations) // 2] < 3.0, events
