"""Distillation (``train.distill``): teacher models at other seeds first, then the model to keep
trained towards their mean score of each training window; the report gives the teachers' own
figures beside the model's."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from test_train_end_to_end import demo_config, tiny_data

from device.config import ConfigError, validate


def _constant_model(logit: float):
    """A Keras model whose window logit is ``logit`` whatever the input."""
    import keras

    inputs = keras.Input((4, 3, 1))
    dense = keras.layers.Dense(1, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(logit))
    return keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))


def test_targets_blend_the_label_with_the_teachers_mean():
    from train.fit import distilled_targets, sigmoid

    y = np.array([[1.0], [0.0], [0.5]], np.float32)  # 0.5: a mixup window
    x = np.zeros((3, 4, 3, 1), np.float32)
    teachers = [_constant_model(2.0), _constant_model(-1.0)]
    mean = (sigmoid(np.float32(2.0)) + sigmoid(np.float32(-1.0))) / 2
    blended = distilled_targets(y, x, teachers, weight=0.25)
    assert blended.dtype == y.dtype and blended.shape == y.shape
    np.testing.assert_allclose(blended[:, 0], 0.75 * y[:, 0] + 0.25 * mean, rtol=1e-6)
    np.testing.assert_allclose(distilled_targets(y, x, teachers, weight=0.0), y)
    np.testing.assert_allclose(distilled_targets(y, x, teachers, weight=1.0)[:, 0], [mean] * 3, rtol=1e-6)


def test_teachers_never_share_a_seed_with_the_run_or_another_runs_teachers():
    from train.fit import teacher_seeds

    assert teacher_seeds(7, 3) == teacher_seeds(7, 3)[:2] + [teacher_seeds(7, 3)[2]]
    assert teacher_seeds(7, 2) == teacher_seeds(7, 3)[:2]  # more teachers keep the first ones
    assert teacher_seeds(7, 0) == []
    seeds = list(range(0, 1000)) + [1234]
    taken = [s for seed in seeds for s in teacher_seeds(seed, 16)]
    assert len(set(taken)) == len(taken)
    assert not set(taken) & set(seeds)


def test_distill_is_a_checked_section():
    cfg = validate(demo_config()).train
    assert (cfg.distill.teachers, cfg.distill.weight) == (0, 0.5)
    cfg = validate(demo_config(distill={"teachers": 3, "weight": 0.7})).train
    assert (cfg.distill.teachers, cfg.distill.weight) == (3, 0.7)
    with pytest.raises(ConfigError, match="teachers"):
        validate(demo_config(distill={"teachers": 17}))
    with pytest.raises(ConfigError, match="weight"):
        validate(demo_config(distill={"weight": 1.5}))


@pytest.mark.slow
def test_a_distilled_run_trains_its_teachers_first_and_reports_their_ensemble(tmp_path, monkeypatch):
    import train.core
    from train.core import train_run
    from train.fit import predict_probabilities, teacher_seeds

    calls: list[dict] = []
    fit = train.core.fit

    def spy(model, **kwargs):
        calls.append({"seed": kwargs["seed"], "teachers": list(kwargs["teachers"]), "model": model})
        return fit(model, **kwargs)

    monkeypatch.setattr(train.core, "fit", spy)
    data = tiny_data(tmp_path / "data")
    out = tmp_path / "run"
    lines: list[str] = []
    config = validate(demo_config(epochs=2, patience=2, seed=5, distill={"teachers": 2, "weight": 0.5}))
    summary = train_run(config=config, data_root=data, out=out, cache_dir=None, log=lines.append)

    # Two teachers at their own seeds, each trained alone; then the model kept, at the run's seed,
    # learning from both.
    assert [c["seed"] for c in calls] == [*teacher_seeds(5, 2), 5]
    assert [len(c["teachers"]) for c in calls] == [0, 0, 2]
    assert calls[2]["teachers"] == [calls[0]["model"], calls[1]["model"]]
    assert any(line.startswith(f"teacher 2/2 (seed {teacher_seeds(5, 2)[1]})") for line in lines)

    # The teachers' ensemble on the test split, as the model's own figures are given.
    ensemble = summary["metrics"]["teachers"]
    assert ensemble["teachers"] == 2
    with np.load(out / "test_windows.npz") as test:
        x, y = test["x"], test["y"]
    mean = np.mean([predict_probabilities(c["model"], x) for c in calls[:2]], axis=0)
    assert ensemble["float"]["call"]["roc_auc"] == pytest.approx(roc_auc_score(y[:, 0], mean[:, 0]))
    assert ensemble["float"]["call"]["roc_auc"] != summary["metrics"]["float"]["call"]["roc_auc"]
    assert json.loads((out / "metrics.json").read_text())["metrics"]["teachers"]["teachers"] == 2
    assert "The 2 teachers' mean score" in (out / "report.md").read_text()
