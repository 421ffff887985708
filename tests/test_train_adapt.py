"""Site adaptation (python -m train.adapt): pseudo-label selection, the safeguard, the run it
writes (which convert takes), and the command line's one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_train_end_to_end import demo_config, tiny_data

from device.config import validate
from train.adapt_select import SelectionParams, agreement, select_pseudo_labels

ROOT = Path(__file__).resolve().parents[1]


def scripted_site(scores_by_file: dict[str, list[float]]) -> tuple[np.ndarray, np.ndarray]:
    sources = np.array([name for name, s in scores_by_file.items() for _ in s])
    scores = np.array([v for s in scores_by_file.values() for v in s], np.float64)[:, None]
    return sources, scores


def test_selection_caps_positives_per_recording_and_balances_the_classes():
    # One recording the model loves (ten windows near 1.0) and four with one call each.
    sources, scores = scripted_site(
        {
            "loud": [0.99] * 10 + [0.01] * 10,
            **{f"r{k}": [0.95] + [0.02 + 0.01 * k] * 19 for k in range(4)},
        }
    )
    params = SelectionParams(
        positive_quantile=0.8,
        negative_quantile=0.5,
        max_positives_per_recording=2,
        negatives_per_positive=2.0,
    )
    chosen = select_pseudo_labels(
        low=scores,
        high=scores,
        sources=sources,
        labels=["call"],
        thresholds={"call": 0.5},
        params=params,
        rng=np.random.default_rng(0),
    )
    picked = sources[chosen.positives]
    assert (picked == "loud").sum() == 2 and all((picked == f"r{k}").sum() == 1 for k in range(4))
    assert len(chosen.negatives) == 2 * len(chosen.positives)
    assert (scores[chosen.negatives, 0] <= chosen.cuts["call"]["negative"]).all()
    # Spread over the recordings below the cut (r3's background is above it), in turn:
    # not all from the quietest one.
    negative_sources = sources[chosen.negatives].tolist()
    assert {k: negative_sources.count(k) for k in set(negative_sources)} == dict.fromkeys(
        ["loud", "r0", "r1", "r2"], 3
    )
    assert chosen.y[: len(chosen.positives)].all() and not chosen.y[len(chosen.positives) :].any()
    assert not set(chosen.positives) & set(chosen.negatives)


def test_a_site_without_calls_gives_no_pseudo_positives():
    # Quantiles alone would call the loudest background a call; the run's threshold does not.
    sources, scores = scripted_site({f"r{k}": list(np.linspace(0.01, 0.3, 20)) for k in range(5)})
    chosen = select_pseudo_labels(
        low=scores,
        high=scores,
        sources=sources,
        labels=["call"],
        thresholds={"call": 0.6},
        params=SelectionParams(),
        rng=np.random.default_rng(0),
    )
    assert len(chosen.positives) == 0 and len(chosen.negatives) == 0
    assert chosen.cuts["call"]["positive"] == 0.6 and chosen.candidates["negatives"] > 0


def test_views_must_agree():
    # Window 0 is high only when not shifted; window 1 is high in every view.
    views = np.array([[[0.2], [0.9], [0.1]], [[0.95], [0.92], [0.1]], [[0.3], [0.97], [0.7]]])
    low, high = agreement(views)
    sources = np.array(["a", "b", "c"])
    chosen = select_pseudo_labels(
        low=low,
        high=high,
        sources=sources,
        labels=["call"],
        thresholds={"call": 0.5},
        params=SelectionParams(
            positive_quantile=0.5, negative_quantile=0.4, negatives_per_positive=5
        ),
        rng=np.random.default_rng(0),
    )
    assert chosen.positives.tolist() == [1]
    assert 2 not in chosen.negatives  # low unshifted, but one view saw a call


@pytest.mark.parametrize(
    "bad",
    [
        dict(positive_quantile=1.0),
        dict(negative_quantile=0.95),
        dict(max_positives_per_recording=0),
        dict(negatives_per_positive=0),
    ],
)
def test_selection_params_are_bounded(bad):
    with pytest.raises(ValueError):
        SelectionParams(**bad)


# --- end to end on the synthetic data: a tiny model trained on site1, adapted to site2 ---


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from train.core import train_run

    root = tmp_path_factory.mktemp("adapt")
    data = tiny_data(root / "data", sites=2)
    values = demo_config(
        epochs=4,
        patience=4,
        # The default model (a frame head) needs about this many steps to learn in 4 epochs;
        # at 200 windows an epoch it scored everything near 0.5: nothing to adapt.
        windows_per_epoch=600,
        split={"test_groups": ["site2"], "validation_by": "file", "validation": 0.3},
    )
    run = root / "run"
    train_run(config=validate(values), data_root=data, out=run, cache_dir=None, log=lambda m: None)
    site = root / "site2"  # the new site's recordings, without their folders (the labels)
    site.mkdir()
    for k, path in enumerate(sorted(data.rglob("site2_*.wav"))):
        shutil.copy(path, site / f"rec_{k:02d}.wav")
    return run, site, data


@pytest.mark.slow
def test_adaptation_writes_a_run_that_convert_takes(trained, tmp_path):
    from train.adapt_core import AdaptSettings, adapt_run

    run, site, data = trained
    out = tmp_path / "adapted"
    record = adapt_run(
        run=run,
        unlabelled=[site],
        out=out,
        settings=AdaptSettings(epochs=2, tolerance=0.2),
        log=lambda m: None,
    )
    info = json.loads((out / "run.json").read_text())
    a = info["adaptation"]
    assert a == json.loads(json.dumps(record, default=float))
    assert a["from_run"] == str(run.resolve()) and a["unlabelled"]["paths"] == [str(site)]
    assert (
        len(a["unlabelled"]["files"]) == len(list(site.iterdir())) and a["unlabelled"]["hours"] > 0
    )
    assert a["pseudo_labels"]["positives"] > 0 and a["pseudo_labels"]["negatives"] > 0
    assert a["rounds"][0]["check"]["passed"] and a["rounds"][0]["kept"]
    assert set(info["thresholds"]) == {"call"} and 0 < info["thresholds"]["call"] < 1
    # The run itself is untouched; the adapted one is a complete run folder with new weights.
    assert not (run / "model.json").exists()
    assert (out / "model.keras").read_bytes() != (run / "model.keras").read_bytes()
    with np.load(run / "test_windows.npz") as before, np.load(out / "test_windows.npz") as after:
        np.testing.assert_array_equal(before["x"], after["x"])
    assert "Site adaptation" in (out / "report.md").read_text()
    rows = (out / "pseudo_labels.csv").read_text().splitlines()
    assert len(rows) == 1 + a["pseudo_labels"]["positives"] + a["pseudo_labels"]["negatives"]

    converted = subprocess.run(
        [sys.executable, "-m", "convert", "--int8", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert converted.returncode == 0, converted.stderr[-2000:]
    bundle = json.loads((out / "model.json").read_text())
    assert bundle["metrics"]["adaptation"]["pseudo_labels"] == a["pseudo_labels"]
    assert bundle["metrics"]["adaptation"]["from_run"] == a["from_run"]
    assert "adapted" in (out / "report.md").read_text().split("Site adaptation")[-1]


@pytest.mark.slow
def test_the_safeguard_refuses_a_model_that_got_worse(trained, tmp_path, monkeypatch):
    import train.adapt_core as core

    real = core.fine_tune

    def backwards(model, **kwargs) -> None:
        # Adaptation gone wrong, constructed at the fine-tuning seam: the window output's weights
        # negated after fine-tuning, so the model ranks calls below background. (Pseudo-labels
        # flipped by hand did this only to a model that had learnt little: a dozen flipped
        # windows do not undo one that learnt its training data.)
        real(model, **kwargs)
        dense = model.get_layer("logits")
        dense.set_weights([-w for w in dense.get_weights()])

    monkeypatch.setattr(core, "fine_tune", backwards)
    run, site, _ = trained
    out = tmp_path / "adapted"
    with pytest.raises(core.AdaptRefused, match="worse on the run's validation split"):
        core.adapt_run(
            run=run,
            unlabelled=[site],
            out=out,
            settings=core.AdaptSettings(epochs=1, tolerance=0.0),
            log=lambda m: None,
        )
    assert not out.exists()


def _adapt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "train.adapt", *args], capture_output=True, text=True, cwd=ROOT
    )


def test_command_line_bad_input_exits_2_with_one_line(tmp_path, tone_bundle):
    site = tmp_path / "site"
    site.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.keras", "run.json", "config.resolved.yaml", "split.csv", "calibration.npy"):
        (run / name).write_text("")
    cases = [
        (["--run", str(tmp_path / "nowhere"), "--unlabelled", str(site)], "nowhere"),
        (["--run", str(tone_bundle), "--unlabelled", str(site)], "without its run folder"),
        (["--run", str(run), "--unlabelled", str(site)], "test_windows.npz: missing"),
        (["--run", str(run), "--unlabelled", str(site), "--pseudo-share", "1.5"], "pseudo_share"),
        (["--run", str(run), "--unlabelled", str(site), "--positive-quantile", "0.3"], "quantile"),
        (["--run", str(run), "--unlabelled", str(site), "--rounds", "5"], "rounds"),
    ]
    for args, expected in cases:
        result = _adapt(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.strip().count("\n") == 0 and expected in result.stderr, (
            args,
            result.stderr,
        )
        assert "Traceback" not in result.stderr
    (run / "test_windows.npz").write_text("")
    for args, expected in [
        (["--run", str(run), "--unlabelled", str(tmp_path / "no_audio_here")], "no_audio_here"),
        (["--run", str(run), "--unlabelled", str(site)], "no audio files"),
    ]:
        result = _adapt(*args)
        assert (
            result.returncode == 2
            and result.stderr.strip().count("\n") == 0
            and expected in result.stderr
        )
    assert not (tmp_path / "run-adapted").exists()


# --- the optional teacher: one more view that must agree ---


def test_teacher_is_one_more_view_and_its_mistakes_are_one_line(tmp_path):
    from device.features import FeatureParams
    from train.adapt_site import SiteWindows
    from train.adapt_teacher import TeacherError, load_teacher, teacher_view

    module = tmp_path / "my_teacher.py"
    module.write_text(
        "import numpy as np\n"
        "def score(path, starts_s, window_s, labels):\n"
        "    return np.full((len(starts_s), len(labels)), 0.25 if path.name == 'a.wav' else 0.75)\n"
        "def wrong(path, starts_s, window_s, labels):\n"
        "    return np.ones((len(starts_s) + 1, len(labels)))\n"
    )
    site = SiteWindows(
        files=[Path("a.wav"), Path("b.wav")],
        features=[np.zeros((10, 40), np.float32)] * 2,
        file_index=np.array([0, 0, 1]),
        start_s=np.array([0.0, 0.5, 0.0]),
        params=FeatureParams(),
        window_s=3.0,
        hop_s=0.5,
        skipped=[],
    )
    scores = teacher_view(load_teacher(f"{module}:score"), site, ["call"])
    assert scores[:, 0].tolist() == [0.25, 0.25, 0.75]
    with pytest.raises(TeacherError, match=r"expected \(2, 1\)"):
        teacher_view(load_teacher(f"{module}:wrong"), site, ["call"])
    for spec, expected in [
        (f"{module}:absent", "no function 'absent'"),
        ("no_such_teacher_module:score", "cannot import"),
        (str(tmp_path / "none.py") + ":score", "no such Python file"),
        ("score", "MODULE:FUNCTION"),
    ]:
        with pytest.raises(TeacherError, match=expected):
            load_teacher(spec)


def test_teacher_counts_by_its_ranking_on_the_students_scale():
    from train.adapt_select import agreement
    from train.adapt_teacher import on_student_scale

    # A general model's probabilities are tiny for this species but rank the windows: window 2
    # first, then 0, then 3, then 1. The student's three views run from 0.1 to 0.9.
    teacher = np.array([[0.010], [0.0001], [0.020], [0.001]])
    views = np.array(
        [[[0.2], [0.9], [0.8], [0.1]], [[0.3], [0.8], [0.9], [0.1]], [[0.2], [0.9], [0.8], [0.2]]]
    )
    mapped = on_student_scale(teacher, views)
    assert np.argsort(mapped[:, 0]).tolist() == [1, 3, 0, 2]  # the teacher's order
    assert views.min() <= mapped.min() and mapped.max() <= views.max()  # the student's range
    low, high = agreement(np.concatenate([views, mapped[None]]))
    # Window 1 scores high for the student but the teacher ranks it last: vetoed as a call.
    assert low[1, 0] == mapped[1, 0] < 0.3 and low[2, 0] >= 0.8
    # Raw, the teacher would have vetoed every call (all its scores are under 0.03).
    assert agreement(np.concatenate([views, teacher[None]]))[0].max() <= 0.02
    # A teacher that scores every window alike ranks none above another: every window gets the
    # student's lowest score, so every call is vetoed and background is left to the student.
    flat = on_student_scale(np.zeros((4, 1)), views)
    assert np.allclose(flat, np.quantile(views, 0.5 / 4))
    low, high = agreement(np.concatenate([views, flat[None]]))
    assert low.max() <= 0.15 and np.array_equal(high, views.max(axis=0))


def test_command_line_rejects_a_teacher_it_cannot_load(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in (
        "model.keras",
        "run.json",
        "config.resolved.yaml",
        "split.csv",
        "calibration.npy",
        "test_windows.npz",
    ):
        (run / name).write_text("")
    result = _adapt(
        "--run",
        str(run),
        "--unlabelled",
        str(tmp_path),
        "--teacher",
        "no_such_teacher_module:score",
    )
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert (
        "cannot import no_such_teacher_module" in result.stderr and "Traceback" not in result.stderr
    )


@pytest.mark.slow
def test_a_teacher_that_hears_no_call_vetoes_every_pseudo_call(trained, tmp_path):
    from train.adapt_core import AdaptRefused, adapt_run

    run, site, _ = trained

    def silent(path, starts_s, window_s, labels):
        return np.zeros((len(starts_s), len(labels)))

    with pytest.raises(
        AdaptRefused, match="no window of the unlabelled audio scored as a confident call"
    ):
        adapt_run(
            run=run, unlabelled=[site], out=tmp_path / "adapted", teacher=silent, log=lambda m: None
        )
    assert not (tmp_path / "adapted").exists()


# --- distillation from other runs: their mean score of every site window is its target ---


def test_distillation_takes_one_pass_and_no_other_teacher(tmp_path):
    from train.adapt_core import AdaptError, AdaptSettings, adapt_run

    for settings, teacher in ((AdaptSettings(rounds=2), None), (AdaptSettings(), lambda *a: None)):
        with pytest.raises(AdaptError, match="--distill-from"):
            adapt_run(run=tmp_path, unlabelled=[tmp_path], distill_from=[tmp_path / "other"],
                      settings=settings, teacher=teacher, log=lambda m: None)


def _teacher_copy(run: Path, folder: Path, *, flip: bool = False, labels: list[str] | None = None) -> Path:
    """A copy of ``run`` as another run of the recipe: its window and frame logits negated
    (``flip``: a model that scores otherwise) or its run.json naming other ``labels``."""
    import keras

    shutil.copytree(run, folder)
    if flip:
        model = keras.models.load_model(folder / "model.keras")
        for layer in model.layers:
            if layer.name in ("logits", "frame_logits"):
                layer.set_weights([-w for w in layer.get_weights()])
        model.save(folder / "model.keras")
    if labels is not None:
        info = json.loads((folder / "run.json").read_text())
        info["labels"] = labels
        info["thresholds"] = dict.fromkeys(labels, 0.5)
        (folder / "run.json").write_text(json.dumps(info))
    return folder


@pytest.mark.slow
def test_distillation_fine_tunes_on_the_teachers_mean_of_every_site_window(trained, tmp_path, monkeypatch):
    import keras

    import train.adapt_core as core
    from train.fit import predict_both
    from train.model import has_frames

    run, site, _ = trained
    teachers = [_teacher_copy(run, tmp_path / "t1"), _teacher_copy(run, tmp_path / "t2", flip=True)]
    seen: dict = {}
    real = core.fine_tune

    def spy(model, **kwargs) -> None:
        seen.update(kwargs)
        real(model, **kwargs)

    monkeypatch.setattr(core, "fine_tune", spy)
    out = tmp_path / "adapted"
    record = core.adapt_run(run=run, unlabelled=[site], out=out, distill_from=teachers,
                            settings=core.AdaptSettings(epochs=1, tolerance=0.99), log=lambda m: None)

    # Every window of the site, its target the two teachers' mean (one scores as the run, the
    # other the opposite way round: the mean is not either's).
    windows = seen["site"]  # the site as adaptation read it; the targets are scored here afresh
    x = windows.model_inputs(np.arange(len(windows)))
    scored = [predict_both(keras.models.load_model(t / "model.keras"), x) for t in teachers]
    np.testing.assert_array_equal(seen["rows"], np.arange(len(windows)))
    np.testing.assert_allclose(seen["targets"], (scored[0][0] + scored[1][0]) / 2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(seen["targets"], scored[0][0], atol=0.01)
    if has_frames(keras.models.load_model(run / "model.keras")):
        np.testing.assert_allclose(seen["frame_targets"], (scored[0][1] + scored[1][1]) / 2,
                                   rtol=1e-5, atol=1e-6)
    assert record["distilled_from"] == [str(t.resolve()) for t in teachers]
    assert record["rounds"][0]["pseudo_labels"]["distilled_windows"] == len(windows)
    rows = (out / "pseudo_labels.csv").read_text().splitlines()
    assert len(rows) == 1 + len(windows)
    assert "Distilled from 2 runs" in (out / "report.md").read_text()


@pytest.mark.slow
def test_a_teacher_run_of_other_labels_is_one_line(trained, tmp_path):
    run, site, _ = trained
    other = _teacher_copy(run, tmp_path / "other", labels=["frog"])
    result = _adapt("--run", str(run), "--unlabelled", str(site), "--out", str(tmp_path / "out"),
                    "--distill-from", str(other))
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert line.count("\n") == 0 and "labels" in line and "Traceback" not in line
    assert not (tmp_path / "out").exists()
