"""An ensemble (``train.model.ensemble``): models trained at several seeds shipped as one model
whose outputs are the mean of theirs; the report gives each member's figures beside it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_train_end_to_end import demo_config, tiny_data

from device.config import ConfigError, validate

ROOT = Path(__file__).resolve().parents[1]


def test_the_first_member_is_the_runs_seed_and_the_others_are_no_small_seed():
    from train.fit import member_seeds

    assert member_seeds(7, 1) == [7]
    assert member_seeds(7, 3)[:2] == member_seeds(7, 2)  # more members keep the first ones
    seeds = list(range(0, 1000)) + [1234]
    others = [s for seed in seeds for s in member_seeds(seed, 8)[1:]]
    assert len(set(others)) == len(others)
    assert not set(others) & set(seeds)


def test_ensemble_is_a_checked_setting():
    assert validate(demo_config()).train.model.ensemble == 1
    assert validate(demo_config(model={"ensemble": 3})).train.model.ensemble == 3
    for bad in (0, 9):
        with pytest.raises(ConfigError, match="ensemble"):
            validate(demo_config(model={"ensemble": bad}))


@pytest.mark.parametrize("pooling", ["max", "time"])
def test_the_ensembles_outputs_are_the_mean_of_its_members_logits(pooling):
    import keras

    from train.model import build_model, ensemble, has_frames

    members = []
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        members.append(build_model(frames=150, n_mels=40, n_labels=2, filters=[8, 8, 8, 8], dropout=0.0,
                                   pooling=pooling, stem_stride=2))
    x = np.random.default_rng(0).normal(size=(5, 150, 40, 1)).astype(np.float32)
    alone = [m.predict(x, verbose=0) for m in members]
    model = ensemble(members)
    out = model.predict(x, verbose=0)
    assert has_frames(model) == (pooling == "time")
    if pooling == "time":
        for k in range(2):  # the window logits and the frame logits
            np.testing.assert_allclose(out[k], (alone[0][k] + alone[1][k]) / 2, rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_allclose(out, (alone[0] + alone[1]) / 2, rtol=1e-5, atol=1e-5)
        assert not np.allclose(out, alone[0], atol=1e-3)
    # One int8 model, with the frame output when the members have one (what the device reads).
    from convert.export import export_tflite, tensor_io

    io_ = tensor_io(export_tflite(model, kind="int8", representative=x))
    assert io_.input_dtype == "int8" and (io_.frames_shape is not None) == (pooling == "time")


def test_a_saved_ensemble_of_trained_members_loads_without_warnings(tmp_path):
    """Training leaves each member compiled, with an optimizer; the ensemble holds copies without
    one, so loading it (convert, adapt) does not warn once per member about skipped optimizer
    state, and the copies score as the trained members do."""
    import warnings

    import keras

    from train.model import build_model, ensemble

    x = np.random.default_rng(0).normal(size=(8, 50, 40, 1)).astype(np.float32)
    members = []
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        member = build_model(frames=50, n_mels=40, n_labels=1, filters=[8, 8], dropout=0.1, pooling="max")
        member.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy(from_logits=True))
        member.fit(x, np.array([[0], [1]] * 4, np.float32), epochs=1, verbose=0)
        member.compile(loss=keras.losses.BinaryCrossentropy(from_logits=True))  # as train.fit leaves it
        members.append(member)
    alone = np.mean([m.predict(x, verbose=0) for m in members], axis=0)
    ensemble(members).save(tmp_path / "model.keras")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = keras.models.load_model(tmp_path / "model.keras", compile=False)
    assert not [w for w in caught if "Skipping variable loading" in str(w.message)]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), alone, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_an_ensemble_run_trains_its_members_and_converts_to_one_int8_model(tmp_path, monkeypatch):
    import keras

    import train.core
    from train.core import train_run
    from train.fit import member_seeds, predict_probabilities

    seeds: list[int] = []
    fit = train.core.fit

    def spy(model, **kwargs):
        seeds.append(kwargs["seed"])
        return fit(model, **kwargs)

    monkeypatch.setattr(train.core, "fit", spy)
    data = tiny_data(tmp_path / "data")
    out = tmp_path / "run"
    lines: list[str] = []
    # The window-score model on the tiny data set learns in 4 epochs (as the weight averaging test
    # found), so convert's int8 check compares a model that ranks, not noise.
    config = validate(demo_config(epochs=4, patience=4, seed=5, model={"ensemble": 2, "pooling": "max"}))
    summary = train_run(config=config, data_root=data, out=out, cache_dir=None, log=lines.append)

    assert seeds == member_seeds(5, 2)
    assert any(line.startswith(f"ensemble member 2/2 (seed {seeds[1]})") for line in lines)
    members = summary["metrics"]["members"]
    assert len(members) == 2 and all("call" in m["float"] for m in members)
    model = keras.models.load_model(out / "model.keras")
    assert [layer.name for layer in model.layers if isinstance(layer, keras.Model)] == ["member_1", "member_2"]
    with np.load(out / "test_windows.npz") as test:
        x = test["x"]
    # The saved model's window score is the sigmoid of its members' mean logit.
    logits = [np.asarray(layer.predict(x, verbose=0)) for layer in model.layers if isinstance(layer, keras.Model)]
    expected = 1 / (1 + np.exp(-(logits[0] + logits[1]) / 2))
    np.testing.assert_allclose(predict_probabilities(model, x), expected, rtol=1e-4, atol=1e-5)
    assert "This model is an ensemble of 2" in (out / "report.md").read_text()

    converted = subprocess.run([sys.executable, "-m", "convert", "--int8", str(out)],
                               capture_output=True, text=True, cwd=ROOT)
    assert converted.returncode == 0, converted.stderr[-2000:]
    bundle = json.loads((out / "model.json").read_text())
    assert bundle["metrics"]["int8_vs_float"]["call"]["roc_auc_loss"] <= bundle["metrics"]["auc_tolerance"]
