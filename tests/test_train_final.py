"""The final model: cross-validation measures the recipe, then one model trains on every group
with the folds' epoch count and thresholds, and convert verifies it on the folds' held-out windows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_train_end_to_end import demo_config, tiny_data

from device.config import validate
from train.calibrate import threshold_at_precision
from train.final import HeldOut, final_plan
from train.windows import WindowSet

ROOT = Path(__file__).resolve().parents[1]


def two_site_config(**train) -> dict:
    # 600 windows an epoch: the default model (a frame head, pooling: time) needs that many
    # steps to learn anything in 4 epochs here; at 200 its scores all sat near 0.5, where int8's
    # ties could flip the order of the few verification windows.
    return demo_config(epochs=4, patience=4, windows_per_epoch=600,
                       split={"test_groups": ["site2"], "validation_by": "file", "validation": 0.25,
                              "leave_one_group_out": True},
                       datasets=[{"path": "clips", "kind": "clips", "classes": {"call": "call", "noise": "negative"},
                                  "group_pattern": r"(site\d+)_"},
                                 {"path": "background", "kind": "background", "split": "train"}], **train)


def held_out(n: int, best_epoch: int, seed: int) -> HeldOut:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 1)) < 0.4).astype(np.float32)
    scores = np.clip(0.6 * y + 0.5 * rng.random((n, 1)), 0, 1).astype(np.float32)
    windows = WindowSet(x=np.zeros((n, 4, 3, 1), np.float32), y=y, source=np.array([f"f{seed}_{i}" for i in range(n)]),
                        start_s=np.zeros(n), kind=np.array(["clips"] * n))
    return HeldOut(windows, scores, {}, [], [best_epoch])


@pytest.mark.parametrize(("epochs", "median"), [([3, 8], 6), ([3, 8, 10], 8), ([1], 1), ([4, 4, 5, 9], 5)])
def test_final_plan_takes_the_median_epoch_and_pools_the_held_out_scores(epochs, median):
    folds = [held_out(40 + 7 * i, e, seed=i) for i, e in enumerate(epochs)]
    cfg = validate(demo_config()).train
    config = validate(demo_config())
    plan = final_plan(cfg=cfg, held_out=folds, window_s=3.0, hop_s=0.5, detection=config.detection)
    assert plan.epochs == median and plan.fold_epochs == epochs and plan.folds == len(epochs)
    y = np.concatenate([f.windows.y for f in folds])
    scores = np.concatenate([f.scores for f in folds])
    assert len(plan.held_out) == len(y) and np.array_equal(plan.held_out_scores, scores)
    expected = threshold_at_precision(y[:, 0], scores[:, 0], target=cfg.calibration.target_precision)
    assert plan.thresholds["call"].value == expected.value


def test_an_ensembles_final_epochs_are_the_median_of_every_members_kept_epoch():
    """Two folds of an ensemble of three: the median of all six members' kept epochs (7), not of
    the first members' alone (3 and 4 would give 4)."""
    folds = [held_out(40, 3, seed=0), held_out(47, 4, seed=1)]
    folds[0].best_epochs[:], folds[1].best_epochs[:] = [3, 8, 9], [4, 20, 6]
    config = validate(demo_config())
    plan = final_plan(cfg=config.train, held_out=folds, window_s=3.0, hop_s=0.5, detection=config.detection)
    assert plan.epochs == 7 and plan.fold_epochs == [3, 8, 9, 4, 20, 6]


def test_final_without_cross_validation_is_refused_with_one_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(demo_config()))
    result = subprocess.run([sys.executable, "-m", "train", "--config", str(config), "--data-root", str(tmp_path),
                             "--out", str(tmp_path / "run"), "--final"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "train.split.final" in result.stderr
    assert "leave_one_group_out" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_final_model_trains_on_every_group_and_convert_verifies_it(tmp_path):
    import keras

    from train.fit import predict_probabilities

    data = tiny_data(tmp_path / "data", sites=2)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(two_site_config()))
    out = tmp_path / "run"
    trained = subprocess.run([sys.executable, "-m", "train", "--config", str(config), "--data-root", str(data),
                              "--out", str(out), "--final"], capture_output=True, text=True, cwd=ROOT)
    assert trained.returncode == 0, trained.stderr[-2000:]

    # Every recording trained the final model; each site was held out once by a fold.
    assert {row.split(",")[2] for row in (out / "split.csv").read_text().splitlines()[1:]} == {"train"}
    folds = {site: out / "folds" / site for site in ("site1", "site2")}
    fold_metrics = {site: json.loads((d / "metrics.json").read_text()) for site, d in folds.items()}
    assert [m["split_counts"]["test"]["groups"] for m in fold_metrics.values()] == [["site1"], ["site2"]]

    # Epochs: the median of the folds' kept epochs, all trained, the last kept.
    run = json.loads((out / "run.json").read_text())
    best = [m["training"]["best_epoch"] for m in fold_metrics.values()]
    assert run["final"]["fold_best_epochs"] == best
    assert run["final"]["epochs"] == max(1, int(np.floor(np.median(best) + 0.5)))
    summary = json.loads((out / "metrics.json").read_text())
    assert len(summary["training"]["loss"]) == summary["training"]["best_epoch"] == run["final"]["epochs"]

    # Verification windows: the folds' test windows, pooled; thresholds from their out-of-fold scores.
    pooled_x, pooled_y, scores = [], [], []
    for d in folds.values():
        with np.load(d / "test_windows.npz") as t:
            pooled_x.append(t["x"])
            pooled_y.append(t["y"])
            scores.append(predict_probabilities(keras.saving.load_model(d / "model.keras"), t["x"]))
    with np.load(out / "test_windows.npz") as t:
        np.testing.assert_array_equal(t["x"], np.concatenate(pooled_x))
    y, p = np.concatenate(pooled_y)[:, 0], np.concatenate(scores)[:, 0]
    expected = threshold_at_precision(y, p, target=0.9).value
    assert run["thresholds"]["call"] == pytest.approx(expected, abs=1e-5)
    # The accuracy it reports is the cross-validated one.
    assert summary["metrics"]["float"]["call"]["positives"] == int(y.sum())
    report = (out / "report.md").read_text()
    assert "Cross-validated results: the estimate of accuracy" in report and "Leave-one-group-out" in report

    converted = subprocess.run([sys.executable, "-m", "convert", "--int8", str(out)], capture_output=True,
                               text=True, cwd=ROOT)
    assert converted.returncode == 0, converted.stderr[-2000:]
    bundle = json.loads((out / "model.json").read_text())
    assert "pooled held-out windows" in bundle["metrics"]["source"]
    assert bundle["metrics"]["test_windows"] == len(y)
    assert bundle["metrics"]["cross_validated"]["call"]["roc_auc"] == summary["metrics"]["float"]["call"]["roc_auc"]
