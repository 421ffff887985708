"""Weight averaging (``train.weight_averaging: ema``): the model kept, saved and converted holds
the exponential moving average of the weights over the training steps, not the last step's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_train_end_to_end import demo_config

from device.config import ConfigError, validate
from train.synth import make_demo_data

ROOT = Path(__file__).resolve().parents[1]


def test_the_average_follows_every_step_and_batchnorm_statistics_too():
    import keras

    from train.fit import WeightAverage

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    x = keras.layers.Dense(4)(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    seen: list[list[np.ndarray]] = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: seen.append(model.get_weights())
    )
    average = WeightAverage(momentum=0.8)
    rng = np.random.default_rng(0)
    x_train, y_train = rng.normal(size=(64, 6)), rng.normal(size=(64, 1))
    for _ in range(2):  # the training loop calls fit once per epoch: the average carries over
        model.fit(
            x_train,
            y_train,
            batch_size=8,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[average, record],
        )
    assert average.steps == len(seen) == 16
    expected = [w.astype(np.float64) for w in seen[0]]
    for step in seen[1:]:
        expected = [0.8 * e + 0.2 * w for e, w in zip(expected, step, strict=True)]
    averaged = average.weights()
    assert [a.dtype for a in averaged] == [w.dtype for w in model.get_weights()]
    for a, e in zip(averaged, expected, strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)
    # The BatchNorm moving mean is averaged like the rest, and the average is not the last step.
    names = [v.path for v in model.weights]
    moving_mean = next(i for i, name in enumerate(names) if name.endswith("moving_mean"))
    assert not np.allclose(averaged[moving_mean], seen[-1][moving_mean])
    assert not np.allclose(averaged[0], model.get_weights()[0])


def test_weight_averaging_is_a_checked_choice():
    assert validate(demo_config()).train.weight_averaging == "none"
    cfg = validate(demo_config(weight_averaging="ema", ema_momentum=0.995)).train
    assert (cfg.weight_averaging, cfg.ema_momentum) == ("ema", 0.995)
    with pytest.raises(ConfigError, match="weight_averaging"):
        validate(demo_config(weight_averaging="swa"))
    with pytest.raises(ConfigError, match="ema_momentum"):
        validate(demo_config(ema_momentum=1.0))


def test_batchnorm_statistics_are_estimated_again_for_the_current_weights():
    import keras

    from train.fit import estimate_batchnorm

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    dense = keras.layers.Dense(4)
    norm = keras.layers.BatchNormalization(momentum=0.9)
    model = keras.Model(inputs, keras.layers.Dense(1)(norm(dense(inputs))))
    x = np.random.default_rng(1).normal(2.0, 3.0, size=(100, 6)).astype(np.float32)
    estimate_batchnorm(model, x, batch_size=16, windows=64)
    h = np.asarray(dense(x[:64]))
    batches = [h[i : i + 16] for i in range(0, 64, 16)]  # windows=64: the rest is not used
    np.testing.assert_allclose(
        norm.moving_mean.numpy(), np.mean([b.mean(0) for b in batches], 0), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        norm.moving_variance.numpy(), np.mean([b.var(0) for b in batches], 0), rtol=1e-4
    )
    assert norm.momentum == 0.9


@pytest.mark.slow
@pytest.mark.parametrize(
    ("pooling", "clips_per_class", "epochs"),
    [
        # The window-scores model (`pooling: max`) weight averaging was measured with (BENCHMARKS,
        # Bobwhite), on the tiny data set.
        ("max", 6, 4),
        # The default frame head: a model that has learned the call (10 epochs) and a test split of
        # 69 windows. With 4 epochs and 20 test windows the average was still a weak model (ROC-AUC
        # 0.66-0.73 on fresh clips), and convert's 0.01 tolerance there is about one swapped pair
        # of windows: int8 noise swapped two (BENCHMARKS.md, "Weight averaging with the frame head").
        ("time", 30, 10),
    ],
)
def test_the_saved_model_is_the_average_and_converts_to_int8(
    tmp_path, monkeypatch, pooling, clips_per_class, epochs
):
    import keras

    import train.fit
    from train.core import train_run

    snapshots: list[list[np.ndarray]] = []
    raw: list[list[np.ndarray]] = []

    class Spy(train.fit.WeightAverage):
        """Records, at the end of every epoch, the average and the weights as trained."""

        def on_train_end(self, logs=None):
            snapshots.append(self.weights())
            raw.append(self.model.get_weights())

    monkeypatch.setattr(train.fit, "WeightAverage", Spy)
    data = make_demo_data(
        tmp_path / "data",
        seed=3,
        sites=3,
        clips_per_class=clips_per_class,
        soundscapes_per_site=1,
        soundscape_s=30.0,
        backgrounds=3,
        background_s=6.0,
    )
    out = tmp_path / "run"
    config = validate(
        demo_config(
            epochs=epochs,
            patience=epochs,
            weight_averaging="ema",
            ema_momentum=0.9,
            model={"pooling": pooling},
        )
    )
    summary = train_run(config=config, data_root=data, out=out, cache_dir=None, log=lambda m: None)
    assert len(snapshots) == epochs
    best = summary["training"]["best_epoch"]
    model = keras.models.load_model(out / "model.keras")
    saved = model.get_weights()
    trainable = [any(w is t for t in model.trainable_weights) for w in model.weights]
    assert sum(trainable) > 0 and not all(trainable)
    for s, a, r, is_trained in zip(
        saved, snapshots[best - 1], raw[best - 1], trainable, strict=True
    ):
        if is_trained:  # the average of the steps' weights
            np.testing.assert_array_equal(s, a)
        else:  # BatchNorm's moving statistics, estimated for the averaged weights
            assert not np.allclose(s, r) and not np.allclose(s, a)
    assert any(
        not np.allclose(s, r) for s, r, t in zip(saved, raw[best - 1], trainable, strict=True) if t
    )
    assert any(
        not np.allclose(s, r) for s, r, t in zip(saved, raw[-1], trainable, strict=True) if t
    )

    converted = subprocess.run(
        [sys.executable, "-m", "convert", "--int8", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert converted.returncode == 0, converted.stderr[-2000:]
    bundle = json.loads((out / "model.json").read_text())
    assert (out / "model.tflite").is_file() and bundle["labels"] == ["call"]
    metrics = bundle["metrics"]
    assert metrics["float"]["call"]["roc_auc"] > 0.8  # a model that has learned the call
    assert metrics["int8_vs_float"]["call"]["roc_auc_loss"] <= metrics["auc_tolerance"]
    assert bool(bundle.get("frames")) == (pooling == "time")
