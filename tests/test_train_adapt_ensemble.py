"""Site adaptation of an ensemble run (``train.model.ensemble``): it adapts as one model, keeps
its members and their averaged outputs (window and frame heads), and converts and replays as
the ensemble did."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from test_train_end_to_end import demo_config, tiny_data

from device.config import validate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory):
    """An ensemble of 2 with the frame head (``pooling: time``) trained on site1, and site2's
    recordings without their folders (the labels), as tests/test_train_adapt.py builds its run."""
    from train.core import train_run

    root = tmp_path_factory.mktemp("adapt_ensemble")
    data = tiny_data(root / "data", sites=2)
    values = demo_config(
        epochs=4,
        patience=4,
        windows_per_epoch=600,
        model={"ensemble": 2, "pooling": "time"},
        split={"test_groups": ["site2"], "validation_by": "file", "validation": 0.3},
    )
    run = root / "run"
    train_run(config=validate(values), data_root=data, out=run, cache_dir=None, log=lambda m: None)
    site = root / "site2"
    site.mkdir()
    for k, path in enumerate(sorted(data.rglob("site2_*.wav"))):
        shutil.copy(path, site / f"rec_{k:02d}.wav")
    return run, site


def _members(model) -> list:
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.Model)]


def _assert_the_mean_of_its_members(model, x: np.ndarray) -> None:
    """Both outputs of the ensemble are the mean of its members' (logits and frame logits)."""
    out = model.predict(x, verbose=0)
    alone = [m.predict(x, verbose=0) for m in _members(model)]
    assert len(out) == 2  # the window head and the frame head
    for k in range(2):
        np.testing.assert_allclose(out[k], np.mean([a[k] for a in alone], axis=0), rtol=1e-4, atol=1e-5)


def _test_x(run: Path) -> np.ndarray:
    with np.load(run / "test_windows.npz") as data:
        return data["x"]


@pytest.mark.slow
def test_an_ensemble_adapts_as_one_model_and_keeps_its_members(ensemble_run, tmp_path):
    import keras

    from train.adapt_core import AdaptSettings, adapt_run
    from train.fit import predict_probabilities

    run, site = ensemble_run
    out = tmp_path / "adapted"
    lines: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record = adapt_run(run=run, unlabelled=[site], out=out,
                           settings=AdaptSettings(epochs=2, rounds=2, tolerance=0.2), log=lines.append)
    # Keras' warning about the members' saved optimizers (one per member) does not reach the user.
    assert not [w for w in caught if "Skipping variable loading" in str(w.message)]

    assert record["ensemble"] == {"members": 2, "fine_tuned": "joint"}
    assert any(line.startswith("an ensemble of 2: pseudo-labels from its averaged scores") for line in lines)
    assert record["pseudo_labels"]["positives"] > 0 and record["rounds"][0]["kept"]
    before = keras.models.load_model(run / "model.keras", compile=False)
    after = keras.models.load_model(out / "model.keras", compile=False)
    assert [m.name for m in _members(after)] == ["member_1", "member_2"]
    x = _test_x(run)
    _assert_the_mean_of_its_members(after, x)
    # Jointly: every member moved, and so did the ensemble's scores.
    for old, new in zip(_members(before), _members(after)):
        assert any(not np.array_equal(a, b) for a, b in zip(old.get_weights(), new.get_weights())), old.name
    assert np.abs(predict_probabilities(after, x) - predict_probabilities(before, x)).max() > 1e-3
    assert json.loads((out / "run.json").read_text())["adaptation"]["ensemble"]["members"] == 2
    assert "An ensemble of 2" in (out / "report.md").read_text()

    converted = subprocess.run([sys.executable, "-m", "convert", "--int8", str(out)],
                               capture_output=True, text=True, cwd=ROOT)
    assert converted.returncode == 0, converted.stderr[-2000:]
    bundle = json.loads((out / "model.json").read_text())
    assert bundle["metrics"]["adaptation"]["from_run"] == str(run.resolve())
    assert bundle["metrics"]["adaptation"]["ensemble"] == {"members": 2, "fine_tuned": "joint"}
    replayed = subprocess.run(
        [sys.executable, "-m", "device", "--replay", str(site), "--model", str(out),
         "--scores-csv", str(tmp_path / "scores.csv"), "--events-jsonl", str(tmp_path / "events.jsonl")],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert replayed.returncode == 0, replayed.stderr[-2000:]
    rows = (tmp_path / "scores.csv").read_text().splitlines()
    assert rows[0] == "source,start_s,end_s,label,score" and len(rows) > len(list(site.iterdir()))


@pytest.mark.slow
def test_an_ensemble_takes_a_teacher_and_distils_from_other_runs(ensemble_run, tmp_path):
    from train.adapt_core import AdaptSettings, adapt_run

    run, site = ensemble_run

    def knows_the_calls(path, starts_s, window_s, labels):  # the synthetic calls are the loud part
        import soundfile

        audio, rate = soundfile.read(path, dtype="float32")
        rms = [np.sqrt(np.mean(audio[int(s * rate):int((s + window_s) * rate)] ** 2) + 1e-12) for s in starts_s]
        return np.repeat(np.clip(np.array(rms)[:, None] / (max(rms) + 1e-9), 0, 1), len(labels), axis=1)

    record = adapt_run(run=run, unlabelled=[site], out=tmp_path / "teacher", teacher=knows_the_calls,
                       settings=AdaptSettings(epochs=1, tolerance=0.99), log=lambda m: None)
    assert record["teacher"] == "knows_the_calls" and record["ensemble"]["members"] == 2

    other = tmp_path / "other"  # another ensemble run of the recipe, as the teacher run
    shutil.copytree(run, other)
    record = adapt_run(run=run, unlabelled=[site], out=tmp_path / "distilled", distill_from=[other],
                       settings=AdaptSettings(epochs=1, tolerance=0.99), log=lambda m: None)
    assert record["distilled_from"] == [str(other.resolve())] and record["ensemble"]["members"] == 2
    assert (tmp_path / "distilled" / "model.keras").is_file()

