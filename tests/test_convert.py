"""python -m convert --int8: a real Keras run folder -> a verified full-integer bundle.

The run folder is a small CNN trained on synthetic tone windows (tests/convert_fixtures.py);
conversion, the int8 runtime (ai_edge_litert) and the device's bundle reader are all real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from ai_edge_litert.interpreter import Interpreter, OpResolverType  # noqa: E402
from convert_fixtures import build_model, copy_run, template_run  # noqa: E402

from convert import ConvertInputError  # noqa: E402
from convert.cli import main  # noqa: E402
from convert.core import ConvertSettings, convert_run, load_settings  # noqa: E402
from convert.report import BEGIN, replace_section  # noqa: E402
from convert.run_folder import load_run_folder  # noqa: E402
from device.bundle import Quantization, load_bundle, sha256_of  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ConvertSettings(auc_tolerance=0.01, size_budget_kb=100.0, representative_windows=300)


@pytest.fixture
def run_dir(tmp_path_factory, tmp_path) -> Path:
    return copy_run(template_run(tmp_path_factory), tmp_path / "run")


def _convert(run_dir: Path, settings: ConvertSettings = SETTINGS, **kwargs):
    lines: list[str] = []
    warned: list[str] = []
    result = convert_run(run_dir=run_dir, settings=settings, log=lines.append, warn=warned.append, **kwargs)
    return result, lines, warned


def _sigmoid(z):
    return 1 / (1 + np.exp(-np.asarray(z, np.float64)))


def test_int8_bundle_is_full_integer_and_loads_on_the_device(run_dir):
    result, lines, _ = _convert(run_dir)
    assert result.ok, result.failures

    # An independent look at the converted model: int8 in and out, no float tensor anywhere.
    interpreter = Interpreter(
        model_path=str(run_dir / "model.tflite"),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    assert {np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()} <= {"int8", "int32"}
    ops = [op["op_name"] for op in interpreter._get_ops_details()]
    assert "CONV_2D" in ops and "FULLY_CONNECTED" in ops
    assert not {"QUANTIZE", "DEQUANTIZE", "LOGISTIC"} & set(ops)  # logits out, no float islands

    bundle = load_bundle(run_dir)  # the device's own reader: sha256, shapes, features
    run_info = json.loads((run_dir / "run.json").read_text())
    assert list(bundle.labels) == run_info["labels"]
    assert bundle.thresholds == run_info["thresholds"]
    assert bundle.output_kind == "logits"
    assert bundle.input_shape == (1, 49, 40, 1)
    assert bundle.input_quantization == Quantization(*inp["quantization"])
    assert bundle.output_quantization == Quantization(*out["quantization"])
    for label in bundle.labels:
        assert bundle.metrics["int8_vs_float"][label]["roc_auc_loss"] <= SETTINGS.auc_tolerance
        assert bundle.metrics["int8_vs_float"][label]["agreement_at_threshold"] >= 0.95
        assert bundle.metrics["float"][label]["roc_auc"] > 0.75  # the fixture learned something
    import keras

    params = keras.models.load_model(run_dir / "model.keras").count_params()
    assert result.params == params
    assert any("KiB" in line and f"{params:,} parameters" in line for line in lines)


def test_reported_metrics_match_an_independent_scoring(run_dir):
    """Keras and int8 agree, and model.json reports what sklearn computes from raw scores."""
    import keras
    from sklearn.metrics import roc_auc_score

    _convert(run_dir)
    bundle = load_bundle(run_dir)
    with np.load(run_dir / "test_windows.npz") as data:
        x, y = data["x"], data["y"]
    p_float = _sigmoid(keras.models.load_model(run_dir / "model.keras").predict(x, verbose=0))

    interpreter = Interpreter(model_path=str(run_dir / "model.tflite"))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    q_in, q_out = bundle.input_quantization, bundle.output_quantization
    p_int8 = []
    for window in x:
        q = np.clip(np.round(window / q_in.scale) + q_in.zero_point, -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], q[None])
        interpreter.invoke()
        raw = interpreter.get_tensor(out["index"])[0].astype(np.float64)
        p_int8.append(_sigmoid(q_out.scale * (raw - q_out.zero_point)))
    p_int8 = np.array(p_int8)

    assert np.max(np.abs(p_float - p_int8)) < 0.1
    for j, label in enumerate(bundle.labels):
        assert bundle.metrics["float"][label]["roc_auc"] == pytest.approx(roc_auc_score(y[:, j], p_float[:, j]), abs=1e-6)
        # convert scores with the device's classifier; this loop rounds its own way: near-equal.
        assert bundle.metrics["int8"][label]["roc_auc"] == pytest.approx(roc_auc_score(y[:, j], p_int8[:, j]), abs=2e-3)
        diff = bundle.metrics["int8_vs_float"][label]["max_score_diff"]
        assert diff == pytest.approx(np.max(np.abs(p_float[:, j] - p_int8[:, j])), abs=2e-3)


def test_rerun_with_float_variants_replaces_the_report_section(run_dir):
    _convert(run_dir)
    result, lines, _ = _convert(run_dir, float32=True, float16=True)
    assert result.ok

    report = (run_dir / "report.md").read_text()
    assert report.startswith("# Run report: tone fixture")
    assert report.count(BEGIN) == 1 and report.count("## int8 conversion") == 1
    assert "### float16 vs float" in report and "### float32 vs float" in report

    bundle = load_bundle(run_dir)
    for name in ("float32", "float16"):
        entry = bundle.variants[name]
        assert entry["sha256"] == sha256_of(run_dir / entry["file"])
        assert entry["input_dtype"] == "float32"
        for label in bundle.labels:
            assert entry["metrics"][f"{name}_vs_float"][label]["max_score_diff"] < 0.01
        assert load_bundle(run_dir / entry["file"]).model_path == (run_dir / entry["file"]).resolve()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["float"] == {"note": "training metrics"}  # training's entries are kept
    assert metrics["conversion"]["passed"] is True
    assert set(metrics["conversion"]["variants"]) == {"float32", "float16"}


def test_representative_windows_come_from_calibration_npy_and_are_capped(run_dir):
    run = load_run_folder(run_dir)
    chosen = run.calibration_windows(max_windows=50)
    saved = np.load(run_dir / "calibration.npy")
    assert chosen.shape == (50, 49, 40, 1)
    assert chosen[0].tobytes() == saved[0].tobytes() and chosen[-1].tobytes() == saved[-1].tobytes()
    result, lines, _ = _convert(run_dir, ConvertSettings(0.01, 100.0, representative_windows=50))
    assert result.ok and any("calibrated on 50 training windows" in line for line in lines)


def test_int8_losing_auc_exits_1_and_leaves_no_manifest(run_dir, capsys):
    # Calibrating on silence gives activation ranges that clip every real window.
    np.save(run_dir / "calibration.npy", np.full((50, 49, 40, 1), -100.0, np.float32))
    (run_dir / "model.json").write_text("{}")  # a stale manifest of an earlier conversion
    assert main(["--int8", str(run_dir), "--config", str(_config(run_dir, ""))]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ROC-AUC" in err[0] and "convert.auc_tolerance (0.01)" in err[0]
    assert not (run_dir / "model.json").exists()
    assert "FAILED" in (run_dir / "report.md").read_text()
    assert json.loads((run_dir / "metrics.json").read_text())["conversion"]["passed"] is False


def _config(run_dir: Path, text: str) -> Path:
    path = run_dir.parent / "config.yaml"
    path.write_text(text)
    return path


def test_size_budget_from_the_runs_resolved_config_warns(run_dir, capsys):
    (run_dir / "config.resolved.yaml").write_text("convert:\n  size_budget_kb: 1\n")
    assert main(["--int8", str(run_dir)]) == 0
    captured = capsys.readouterr()
    assert "config.resolved.yaml" in captured.out
    assert "over convert.size_budget_kb (1 KiB)" in captured.err


def test_settings_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("CALLWATCH_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    assert load_settings(run_dir=run)[1] == "built-in defaults"
    assert load_settings(run_dir=run)[0] == ConvertSettings(0.01, 100.0, 300)
    (tmp_path / "config.yaml").write_text("convert:\n  auc_tolerance: 0.02\n")
    assert load_settings(run_dir=run)[0].auc_tolerance == 0.02
    (run / "config.resolved.yaml").write_text("convert:\n  auc_tolerance: 0.03\n")
    assert load_settings(run_dir=run)[0].auc_tolerance == 0.03
    other = tmp_path / "other.yaml"
    other.write_text("convert:\n  auc_tolerance: 0.04\n  representative_windows: 20\n")
    assert load_settings(run_dir=run, config_path=other)[0] == ConvertSettings(0.04, 100.0, 20)
    other.write_text("convert:\n  auc_tolerance: 2\n")
    with pytest.raises(ConvertInputError, match=r"convert.auc_tolerance: must be 0..1"):
        load_settings(run_dir=run, config_path=other)


def _expect_bad_input(argv: list[str], capsys, *needles: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for needle in needles:
        assert needle in err[0]


def test_bad_input_is_one_line_and_exit_2(tmp_path_factory, tmp_path, capsys):
    template = template_run(tmp_path_factory)
    _expect_bad_input(["--int8", str(tmp_path / "nowhere")], capsys, "nowhere", "no such run folder")
    _expect_bad_input([str(template)], capsys, "--int8")
    for name in ("calibration.npy", "model.keras", "run.json", "test_windows.npz"):
        run = copy_run(template, tmp_path / f"without_{name}")
        (run / name).unlink()
        _expect_bad_input(["--int8", str(run)], capsys, name, "missing")
    run = copy_run(template, tmp_path / "short_windows")
    np.save(run / "calibration.npy", np.zeros((10, 48, 40, 1), np.float32))
    _expect_bad_input(["--int8", str(run)], capsys, "calibration.npy", "[N>0, 49, 40, 1]")
    run = copy_run(template, tmp_path / "bad_run_json")
    (run / "run.json").write_text(json.dumps({**json.loads((template / "run.json").read_text()), "thresholds": {"low": 0.5}}))
    _expect_bad_input(["--int8", str(run)], capsys, "run.json", "thresholds")
    run = copy_run(template, tmp_path / "bad_config")
    (run / "config.resolved.yaml").write_text("convert:\n  size_budget: 3\n")
    _expect_bad_input(["--int8", str(run)], capsys, "config.resolved.yaml", "convert.size_budget: unknown key")


def test_model_with_an_op_int8_cannot_map_exits_2(tmp_path_factory, tmp_path, capsys):
    import keras

    @keras.saving.register_keras_serializable(package="callwatch_tests")
    class Sine(keras.layers.Layer):
        """SIN has no int8 kernel: the converter silently leaves it in float."""

        def call(self, x):
            return keras.ops.sin(x)

    run = copy_run(template_run(tmp_path_factory), tmp_path / "run")
    base = build_model(49, 40, 2)
    inputs = keras.Input((49, 40, 1))
    with warnings.catch_warnings():  # keras 3.15's saver trips numpy 2's copy= deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        keras.Model(inputs, base(Sine()(inputs))).save(run / "model.keras")
    _expect_bad_input(["--int8", str(run)], capsys, "SIN", "no int8 kernel")
    assert not (run / "model.json").exists()


@pytest.mark.slow  # a fresh interpreter imports TensorFlow: 10-25 s
def test_cli_subprocess(run_dir):
    env = {k: v for k, v in os.environ.items() if k != "CALLWATCH_CONFIG"}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-m", "convert", "--int8", str(run_dir)],
        cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "settings from built-in defaults" in done.stdout
    assert " parameters" in done.stdout and "KiB" in done.stdout
    assert "bundle: " in done.stdout
    assert "Saved artifact" not in done.stdout  # the converter's chatter is kept out
    load_bundle(run_dir)


def test_report_section_replacement_is_idempotent():
    once = replace_section("# Report\n\ntext\n", "## int8 conversion\n\nA\n")
    twice = replace_section(once, "## int8 conversion\n\nB\n")
    assert twice.count(BEGIN) == 1 and "B" in twice and "\nA\n" not in twice
    assert twice.startswith("# Report\n\ntext\n")
    assert replace_section(twice, "## int8 conversion\n\nB\n") == twice
