"""The LiteRT classifier on a real int8 model: quantization from the model, checks against
model.json, runtimes and delegates."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from tinymodel import noise, tone

from device.bundle import BundleError, load_bundle, seal_manifest
from device.features import logmel
from device.runtime import load_classifier


@pytest.fixture
def bundle_copy(tone_bundle: Path, tmp_path: Path):
    """Copy of the tone bundle folder; edit(**changes) rewrites keys of its model.json."""
    folder = tmp_path / "bundle"
    shutil.copytree(tone_bundle.parent, folder)

    def edit(**changes) -> Path:
        manifest = json.loads((folder / "model.json").read_text())
        manifest.update(changes)
        (folder / "model.json").write_text(json.dumps(seal_manifest(manifest)))
        return folder / "model.tflite"

    return edit


def window(bundle, samples: np.ndarray) -> np.ndarray:
    return logmel(samples, bundle.features)[: bundle.window_frames]


def test_tone_scores_high_and_noise_low(tone_bundle):
    bundle = load_bundle(tone_bundle)
    classifier = load_classifier(bundle)
    sr = bundle.features.sample_rate
    quiet = window(bundle, noise(bundle.window_s, sr))
    loud = window(bundle, noise(bundle.window_s, sr) + tone(2000, bundle.window_s, sr))
    assert classifier.predict(quiet).shape == (1,)
    assert classifier.predict(quiet)[0] < 0.1
    assert classifier.predict(loud)[0] > 0.9
    # Pre-quantized frames (what the worker passes) give the same result.
    assert classifier.predict(classifier.quantize(loud))[0] == classifier.predict(loud)[0]


def test_quantization_uses_the_models_own_scale_and_zero_point(tone_bundle):
    bundle = load_bundle(tone_bundle)
    classifier = load_classifier(bundle)
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tone_bundle))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    (s_in, z_in), (s_out, z_out) = inp["quantization"], out["quantization"]
    sr = bundle.features.sample_rate
    frames = window(
        bundle, noise(bundle.window_s, sr) + tone(2000, bundle.window_s, sr, amplitude=0.02)
    )
    expected_q = np.clip(np.round(frames / s_in + z_in), -128, 127).astype(np.int8)
    np.testing.assert_array_equal(classifier.quantize(frames), expected_q)
    interpreter.set_tensor(inp["index"], expected_q.reshape(inp["shape"]))
    interpreter.invoke()
    logit = s_out * (interpreter.get_tensor(out["index"]).astype(np.float32) - z_out)
    expected = 1 / (1 + np.exp(-logit.reshape(-1)))
    np.testing.assert_allclose(classifier.predict(frames), expected, rtol=1e-6)
    assert 0.01 < expected[0] < 0.99  # a score in the middle: dequantization matters
    # Every int8 output value, negative ones included, maps as the formula says (the
    # classifier looks scores up in a 256-entry table).
    raw = np.arange(-128, 128).astype(np.int8)
    direct = 1 / (1 + np.exp(-(s_out * (raw.astype(np.float32) - z_out))))
    np.testing.assert_allclose(classifier._table[raw.view(np.uint8)], direct, rtol=1e-6)


def test_probability_models_get_no_sigmoid(tone_bundle, bundle_copy):
    logits = load_classifier(load_bundle(tone_bundle))
    probabilities = load_classifier(load_bundle(bundle_copy(output_kind="probabilities")))
    bundle = logits.bundle
    frames = window(bundle, noise(bundle.window_s, bundle.features.sample_rate))
    p, raw = logits.predict(frames)[0], probabilities.predict(frames)[0]
    assert p == pytest.approx(1 / (1 + np.exp(-raw)), rel=1e-6)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"input_quantization": {"scale": 0.5, "zero_point": 0}}, "input quantization"),
        ({"output_quantization": {"scale": 0.08, "zero_point": 3}}, "output quantization"),
        ({"input_dtype": "float32"}, "input dtype int8 but model.json says float32"),
        (
            {"labels": ["tone", "owl"], "thresholds": {"tone": 0.5, "owl": 0.5}},
            "1 outputs but model.json names 2",
        ),
    ],
)
def test_a_model_that_disagrees_with_model_json_is_refused(bundle_copy, changes, message):
    bundle = load_bundle(bundle_copy(**changes))
    with pytest.raises(BundleError, match=message) as info:
        load_classifier(bundle)
    assert "model.tflite" in str(info.value) and "\n" not in str(info.value)


def test_edgetpu_without_a_tpu_falls_back_to_the_cpu_with_a_warning(tone_bundle, caplog):
    with caplog.at_level(logging.WARNING):
        classifier = load_classifier(load_bundle(tone_bundle), delegate="edgetpu")
    assert classifier.delegate == "cpu"
    assert "Edge TPU unavailable" in caplog.text


def test_edgetpu_fallback_is_one_warning_line_and_no_traceback(tone_bundle):
    """A fresh interpreter, as the daemon starts: stderr holds the warning and nothing else
    (ai_edge_litert's Delegate used to print an "Exception ignored" traceback when collected)."""
    code = (
        "import gc, logging, sys\n"
        "logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')\n"
        "from device.bundle import load_bundle\n"
        "from device.runtime import load_classifier\n"
        f"c = load_classifier(load_bundle({str(tone_bundle)!r}), delegate='edgetpu')\n"
        "gc.collect()\n"
        "print(c.delegate)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "cpu"
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "Edge TPU unavailable" in warnings[0], result.stderr


def test_num_threads_is_passed_and_results_do_not_change(tone_bundle):
    bundle = load_bundle(tone_bundle)
    frames = window(
        bundle,
        noise(bundle.window_s, bundle.features.sample_rate) + tone(2000, bundle.window_s, 16000),
    )
    one = load_classifier(bundle, num_threads=1).predict(frames)
    two = load_classifier(bundle, num_threads=2).predict(frames)
    np.testing.assert_array_equal(one, two)


def test_tflite_runtime_is_used_when_ai_edge_litert_is_absent(tone_bundle, monkeypatch):
    from ai_edge_litert.interpreter import Interpreter, load_delegate

    calls = []

    class TfliteRuntimeInterpreter(Interpreter):
        def __init__(self, *args, **kwargs):
            calls.append(kwargs.get("num_threads"))
            super().__init__(*args, **kwargs)

    package = types.ModuleType("tflite_runtime")
    module = types.ModuleType("tflite_runtime.interpreter")
    module.Interpreter, module.load_delegate = TfliteRuntimeInterpreter, load_delegate
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import fails
    monkeypatch.setitem(sys.modules, "tflite_runtime", package)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", module)
    classifier = load_classifier(load_bundle(tone_bundle), num_threads=1)
    assert calls == [1] and classifier.delegate == "cpu"


def test_no_runtime_at_all_is_a_one_line_bundle_error(tone_bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    with pytest.raises(BundleError, match="no LiteRT runtime"):
        load_classifier(load_bundle(tone_bundle))


def test_xnnpack_and_builtin_int8_kernels_differ_by_at_most_one_output_step(tmp_path_factory, tmp_path):
    """What separates ai_edge_litert from tflite_runtime: XNNPACK, not the model.

    ai_edge_litert applies its XNNPACK delegate to int8 models by default; tflite_runtime 2.14
    does not, and runs TFLite's builtin int8 kernels. Measured here (README, "Runtimes"): with
    XNNPACK off, ai_edge_litert 2.3 and tflite_runtime 2.14 give the same raw outputs bit for
    bit; with it on, some windows differ by a step or two of the output quantization (XNNPACK's
    kernels, chosen by CPU, round differently). This bounds that on a real converted CNN (conv,
    pooling, dense: the layer kinds of train/model.py).
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from convert_fixtures import copy_run, synthetic_windows, template_run

    from convert.core import ConvertSettings, convert_run

    run = copy_run(template_run(tmp_path_factory), tmp_path / "run")
    settings = ConvertSettings(auc_tolerance=0.05, size_budget_kb=100.0, representative_windows=100)
    result = convert_run(run_dir=run, settings=settings, log=lambda _: None,
                         warn=lambda _: None)
    assert result.ok, result.failures
    bundle = load_bundle(run / "model.tflite")
    classifier = load_classifier(bundle)
    x, _ = synthetic_windows(200, params=bundle.features, seed=7)
    windows = classifier.quantize(x[..., 0])

    def raw_outputs(**kwargs) -> np.ndarray:
        interpreter = Interpreter(model_path=str(bundle.model_path), num_threads=1, **kwargs)
        interpreter.allocate_tensors()
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        rows = []
        for window in windows:
            interpreter.set_tensor(inp["index"], window.reshape(inp["shape"]))
            interpreter.invoke()
            rows.append(interpreter.get_tensor(out["index"]).reshape(-1).astype(int))
        return np.array(rows)

    xnnpack = raw_outputs()
    builtin = raw_outputs(experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    reference = raw_outputs(experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    np.testing.assert_array_equal(builtin, reference)  # optimized builtin == reference kernels
    assert np.abs(xnnpack - builtin).max() <= 2
    # The device's scores are XNNPACK's (the default, and faster).
    device_raw = np.array([classifier.predict(w) for w in windows])
    q = classifier.output_quantization
    logits = ((xnnpack - q.zero_point) * q.scale).astype(np.float32)
    np.testing.assert_allclose(device_raw, 1.0 / (1.0 + np.exp(-logits)), rtol=1e-6)
