"""python -m train end to end on the synthetic demo data: the whole run folder contract."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml

from device.audio import load_audio
from device.config import validate
from device.features import FeatureParams, logmel
from train.datasets import load_datasets
from train.synth import make_demo_data

ROOT = Path(__file__).resolve().parents[1]


def tiny_data(folder: Path, sites: int = 3) -> Path:
    return make_demo_data(folder, seed=3, sites=sites, clips_per_class=6, soundscapes_per_site=1,
                          soundscape_s=30.0, backgrounds=3, background_s=6.0)


def demo_config(**train) -> dict:
    """config.yaml's train section (the demo), made small."""
    values = yaml.safe_load((ROOT / "config.yaml").read_text())
    values["train"] |= {"epochs": 3, "patience": 3, "windows_per_epoch": 200, "cache_dir": None} | train
    return values


def test_synth_is_deterministic_and_matches_config_yaml(tmp_path):
    a = tiny_data(tmp_path / "a")
    b = tiny_data(tmp_path / "b")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    cfg = validate(demo_config()).train
    inventory = load_datasets(cfg.datasets, data_root=a, labels=list(cfg.labels))
    assert not inventory.warnings
    kinds = {r.kind for r in inventory.recordings}
    assert kinds == {"clips", "selections", "background"}
    assert {r.group for r in inventory.recordings if r.kind != "background"} == {"site1", "site2", "site3"}


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["time", "max"])
def test_train_writes_the_run_folder_contract(tmp_path, pooling):
    """The default (``pooling: time``) has a frame output and ships the frames rule; ``max`` is
    the window rule's model (window scores only, extent by calibrated trims), kept for bundles
    without frames (and examples/bobwhite.yaml)."""
    import keras

    from train.core import train_run

    data = tiny_data(tmp_path / "data")
    out = tmp_path / "run"
    # A replay's false positive on a recording outside the datasets: the hard-negative loop.
    (data / "replayed").mkdir()
    soundfile.write(data / "replayed/night.wav", np.zeros(16000 * 10, np.float32), 16000)
    events = tmp_path / "false_positives.jsonl"
    events.write_text(json.dumps({"source": "replayed/night.wav", "start_s": 2.0, "end_s": 5.0, "label": "call"}) + "\n")
    config = validate(demo_config(hard_negatives=[str(events)], model={"pooling": pooling}))
    summary = train_run(config=config, data_root=data, out=out, cache_dir=None, log=lambda m: None)
    assert summary["hard_negatives_used"] == 1
    for name in ("model.keras", "run.json", "calibration.npy", "test_windows.npz", "split.csv", "metrics.json",
                 "config.resolved.yaml", "report.md", "errors.csv", "plots/pr_curve.png", "plots/roc.png",
                 "plots/confusion_matrix.png", "plots/training_curves.png", "plots/score_histogram.png"):
        assert (out / name).is_file(), name
    params = FeatureParams()
    frames = params.window_frames(3.0)
    model = keras.models.load_model(out / "model.keras")
    assert model.input_shape == (None, frames, params.n_mels, 1)
    run = json.loads((out / "run.json").read_text())
    assert run["labels"] == ["call"] and run["features"] == params.to_dict() and run["window_s"] == 3.0
    assert 0 < run["thresholds"]["call"] < 1 and run["recommended_hop_s"] == 0.5
    assert run["events"]["detection"]["hop_s"] == 0.5
    extent = run["events"]["extent"]["call"]
    if pooling == "time":  # a window score and a score per time step; events from the stitched steps
        assert model.output_shape[0] == (None, 1) and model.output_shape[1][2:] == (1, 1)
        assert extent["rule"] == "frames" and 0 < extent["threshold"] < 1
    else:
        assert model.output_shape == (None, 1) and extent["rule"] in ("trim", "centre")
    assert run["calibration"]["method"] == "precision" and run["calibration"]["target"] == 0.9
    assert set(run["metrics"]["float"]["call"]) >= {"roc_auc", "pr_auc", "precision", "recall", "f1"}
    calibration = np.load(out / "calibration.npy")
    assert calibration.dtype == np.float32 and calibration.shape[1:] == (frames, params.n_mels, 1)
    assert 10 <= len(calibration) <= 400
    test = np.load(out / "test_windows.npz")
    assert test["x"].dtype == np.float32 and test["x"].shape[1:] == (frames, params.n_mels, 1)
    assert test["y"].shape == (len(test["x"]), 1) and set(np.unique(test["y"])) <= {0.0, 1.0}
    assert len(test["source"]) == len(test["start_s"]) == len(test["x"])
    # Test windows are the device's features of the file, untouched by augmentation.
    k = int(np.argmax(test["start_s"]))
    audio = load_audio(data / str(test["source"][k]), params.sample_rate)
    start = round(float(test["start_s"][k]) * params.frame_rate)
    np.testing.assert_allclose(test["x"][k, :, :, 0], logmel(audio, params)[start:start + frames], atol=1e-4)
    # No test recording was trained on, and no site is in two splits.
    rows = list(csv.DictReader(open(out / "split.csv")))
    sites = {}
    for row in rows:
        sites.setdefault(row["group"], set()).add(row["split"])
    assert all(len(s) == 1 for s in sites.values())
    assert set(test["source"]) <= {r["recording"] for r in rows if r["split"] == "test"}
    report = (out / "report.md").read_text()
    assert "## Test results" in report and "plots/pr_curve.png" in report and "split.csv" in report
    assert summary["metrics"]["float"]["call"]["roc_auc"] is not None
    assert next(csv.reader(open(out / "errors.csv"))) == ["file", "start_s", "end_s", "label", "score", "error"]
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text())
    assert resolved["train"]["data_root"] == str(data)


@pytest.mark.slow
def test_leave_one_group_out_reports_each_fold(tmp_path):
    from train.core import train_run

    data = tiny_data(tmp_path / "data", sites=2)
    out = tmp_path / "run"
    values = demo_config(epochs=2, split={"test_groups": ["site2"], "validation_by": "file", "validation": 0.25,
                                          "leave_one_group_out": True},
                         datasets=[{"path": "clips", "kind": "clips", "classes": {"call": "call", "noise": "negative"},
                                    "group_pattern": r"(site\d+)_"},
                                   {"path": "background", "kind": "background", "split": "train"}])
    summary = train_run(config=validate(values), data_root=data, out=out, cache_dir=None, log=lambda m: None)
    folds = summary["folds"]
    assert [row["test_group"] for row in folds["folds"]] == ["site1", "site2"]
    assert (out / "folds/site1/model.keras").is_file()
    assert "call clip ROC-AUC" in folds["spread"]
    assert "Leave-one-group-out" in (out / "report.md").read_text()


@pytest.mark.slow
def test_kfold_cross_validation_pools_every_held_out_recording(tmp_path):
    from train.core import train_run

    data = tiny_data(tmp_path / "data", sites=3)
    out = tmp_path / "run"
    values = demo_config(epochs=1, split={"test": 0.34, "validation": 0.0, "folds": 3},
                         datasets=[{"path": "soundscapes", "kind": "selections", "tables": "soundscapes",
                                    "classes": {"call": "call"}, "group_pattern": r"(site\d+)_"},
                                   {"path": "background", "kind": "background", "split": "train"}])
    summary = train_run(config=validate(values), data_root=data, out=out, cache_dir=None, log=lambda m: None)
    folds = summary["folds"]
    assert folds["kind"] == "3-fold" and [row["test_group"] for row in folds["folds"]] == ["fold1", "fold2", "fold3"]
    assert not (out / "folds/fold1").exists() and (out / "folds/fold3/model.keras").is_file()  # fold1 is the main run
    tested = [json.loads((out / d / "metrics.json").read_text())["split_counts"]["test"]["groups"]
              for d in (".", "folds/fold2", "folds/fold3")]
    assert sorted(g for groups in tested for g in groups) == ["site1", "site2", "site3"]
    chunks = sum(r["table"] for fold in [summary] + [json.loads((out / d / "metrics.json").read_text())
                                                     for d in ("folds/fold2", "folds/fold3")]
                 for r in fold["metrics"]["count"]["call"]["recordings"])
    pooled = folds["pooled"]
    assert pooled["call chunk"]["tp"] + pooled["call chunk"]["fn"] == chunks > 0
    assert pooled["call count"]["recordings"] == 3
    report = (out / "report.md").read_text()
    assert "Cross-validation, 3-fold" in report and "Pooled over the folds" in report


@pytest.mark.slow
def test_the_same_config_trains_the_same_model(tmp_path):
    """Seeded windows, augmentation and initial weights: a run is reproduced to the last bit.
    (On data this small the kernels' thread order does not show; on the real examples it did,
    before ``enable_op_determinism``, and train/fit.py's docstring says so.)"""
    import keras

    from train.core import train_run

    data = tiny_data(tmp_path / "data", sites=2)
    values = demo_config(epochs=2, windows_per_epoch=400, model={"filters": [16, 32, 48]})
    weights = []
    for name in ("a", "b"):
        train_run(config=validate(values), data_root=data, out=tmp_path / name, cache_dir=None, log=lambda m: None)
        weights.append(keras.saving.load_model(tmp_path / name / "model.keras").get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(*weights))


def test_too_many_folds_is_an_error_before_any_training(tmp_path):
    from train.core import train_run
    from train.datasets import DatasetError

    data = tiny_data(tmp_path / "data", sites=3)
    values = demo_config(split={"test": 0.34, "validation": 0.0, "folds": 5},
                         datasets=[{"path": "soundscapes", "kind": "selections", "tables": "soundscapes",
                                    "classes": {"call": "call"}, "group_pattern": r"(site\d+)_"}])
    with pytest.raises(DatasetError, match="5 folds need at least 5 groups"):
        train_run(config=validate(values), data_root=data, out=tmp_path / "run", cache_dir=None, log=lambda m: None)
    assert not (tmp_path / "run" / "model.keras").exists()


def test_folds_option_takes_leave_one_group_out_or_a_number_of_folds():
    from train.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["--folds"]).folds == "groups"
    assert parser.parse_args(["--folds", "5"]).folds == 5
    assert parser.parse_args([]).folds is None
    for bad, message in (("1", "K must be at least 2"), ("five", "K must be a whole number")):
        result = subprocess.run([sys.executable, "-m", "train", "--folds", bad], capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 2 and message in result.stderr


def test_command_line_bad_input_exits_2_with_one_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(demo_config()))
    missing = subprocess.run([sys.executable, "-m", "train", "--config", str(config), "--data-root",
                              str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")],
                             capture_output=True, text=True, cwd=ROOT)
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "nowhere" in missing.stderr
    config.write_text("train:\n  epochs: many\n")
    bad = subprocess.run([sys.executable, "-m", "train", "--config", str(config)], capture_output=True, text=True,
                         cwd=ROOT)
    assert bad.returncode == 2 and "train.epochs" in bad.stderr
    assert not (tmp_path / "run").exists()
