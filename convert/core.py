"""Run folder -> verified int8 model bundle: the whole conversion, as functions tests call.

:func:`convert_run` makes ``model.tflite`` (full-integer int8, calibrated on the run's
calibration windows), checks every op is int8, writes ``model.json`` with the device's bundle
writer, and scores the test split with the float Keras model and with the bundle as the device
runs it (its bundle reader and LiteRT classifier). Optional float32/float16 exports and the
Edge TPU model become ``variants`` of the bundle. The comparison goes into report.md and
metrics.json.

If int8 loses more ROC-AUC than ``auc_tolerance`` on any label, no model.json is left
behind (so no device will load the model) and the result carries the failure (exit code 1).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convert import ConvertFailure, ConvertInputError, export, report, verify
from convert import edgetpu as tpu
from convert.run_folder import RESOLVED_CONFIG, RunFolder, load_run_folder
from device.bundle import (
    MANIFEST_NAME,
    MODEL_NAME,
    BundleError,
    Quantization,
    load_bundle,
    sha256_of,
    write_bundle,
)
from device.config import ConfigError, ConvertSection, default_config_path, load_config
from device.fileio import write_atomic


def _stdout(line: str) -> None:
    print(line, flush=True)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


ConvertSettings = ConvertSection
"""The ``convert:`` section of config.yaml is the convert settings (defaults, bounds and
descriptions live there, once)."""


def load_settings(*, run_dir: str | Path, config_path: str | Path | None = None) -> tuple[ConvertSettings, str]:
    """The convert settings and where they came from.

    Order: ``config_path`` when given; else the run's own ``config.resolved.yaml`` (the config
    the model was trained with, so a run converts the same way wherever it is copied); else the
    usual search ($CALLWATCH_CONFIG, ./config.yaml, /etc/callwatch/config.yaml); else defaults.
    """
    resolved = Path(run_dir) / RESOLVED_CONFIG
    if config_path is not None:
        path: Path | None = Path(config_path)
    elif resolved.is_file():
        path = resolved
    else:
        path = default_config_path()
    try:
        settings = load_config(path).convert
    except ConfigError as exc:
        raise ConvertInputError(f"{exc} (pass --config FILE to use another config)") from None
    return settings, str(path) if path else "built-in defaults"


@dataclass(frozen=True)
class ConvertResult:
    """What a conversion made and found."""

    model_path: Path
    """model.tflite (int8)."""
    manifest_path: Path | None
    """model.json; None when verification failed and no bundle was written."""
    size_kb: float
    params: int
    metrics: dict
    """As written into model.json: test_windows, float, int8, int8_vs_float, auc_tolerance."""
    variants: dict
    failures: tuple[str, ...]
    """One line per run-time failure (exit code 1); empty when all went well."""

    @property
    def ok(self) -> bool:
        return not self.failures


def _load_keras(run: RunFolder):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    try:
        model = keras.models.load_model(run.model_path, compile=False)
    except Exception as exc:  # keras raises ValueError, TypeError, OSError, zipfile errors...
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ConvertInputError(f"{run.model_path}: cannot load the Keras model ({first})") from None
    if len(model.inputs) != 1 or len(model.outputs) not in (1, 2):
        raise ConvertInputError(f"{run.model_path}: needs one input and one output (and maybe a frame output)")
    expected_in, expected_out = (None, *run.window_shape), (None, len(run.labels))
    output_shape = model.output_shape[0] if len(model.outputs) == 2 else model.output_shape  # [window, frames]
    if tuple(model.input_shape) != expected_in or tuple(output_shape) != expected_out:
        raise ConvertInputError(
            f"{run.model_path}: input {model.input_shape} -> output {model.output_shape}, but run.json "
            f"describes {expected_in} -> {expected_out} (features, window_s, labels)"
        )
    return model


def _quantization(value: tuple[float, int] | None) -> Quantization | None:
    return Quantization(*value) if value else None


def _float_variant(*, name: str, model, run: RunFolder, x: np.ndarray, y: np.ndarray,
                   float_scores: np.ndarray, log: Callable[[str], None]) -> tuple[dict, dict]:
    """Export, write and verify model_<name>.tflite; returns (manifest entry, comparison)."""
    content = export.export_tflite(model, kind=name)
    path = run.path / f"model_{name}.tflite"
    write_atomic(path, content)
    result = verify.compare(labels=run.labels, y=y, float_scores=float_scores,
                            model_scores=verify.tflite_scores(path, x), thresholds=run.thresholds)
    io_ = export.tensor_io(content)
    entry = {
        "file": path.name,
        "sha256": sha256_of(path),
        "input_dtype": io_.input_dtype,
        "output_dtype": io_.output_dtype,
        "input_quantization": None,
        "output_quantization": None,
        "size_kb": round(len(content) / 1024, 1),
        "metrics": {name: result["model"], f"{name}_vs_float": result["vs_float"]},
    }
    log(f"{name}: {path} {entry['size_kb']:.1f} KiB; " + _auc_line(run.labels, result))
    return entry, result


def _write_manifest(run: RunFolder, content: bytes, *, metrics: dict, variants: dict) -> Path:
    """model.json for model.tflite (``content``), re-read with the device's reader."""
    io_ = export.tensor_io(content)
    try:
        path = write_bundle(
            run.path,
            labels=list(run.labels),
            features=run.features,
            window_s=run.window_s,
            input_dtype=io_.input_dtype,
            output_dtype=io_.output_dtype,
            input_quantization=_quantization(io_.input_quantization),
            output_quantization=_quantization(io_.output_quantization),
            thresholds=run.thresholds,
            output_kind="logits",
            recommended_hop_s=run.recommended_hop_s,
            metrics=metrics,
            variants=variants,
            events=run.events,  # the event rule thresholds were calibrated for
            frames=io_.frames_record(step_frames=_step_frames(run, io_), frame_rate=run.features.frame_rate),
        )
        load_bundle(path)  # as the device will read it
    except BundleError as exc:
        raise ConvertFailure(f"the device would refuse this bundle: {exc}") from None
    return path


FRAME_AGREEMENT = 0.95
"""Least share of test steps on which int8 and float frame scores fall on the same side of the
frame threshold."""


def _step_frames(run: RunFolder, io_: export.TensorIO) -> int:
    """Spectrogram frames per step of the frame output: run.json's ``frames.step_frames`` (the
    window's frames over its steps, rounded down, for a run that did not record it)."""
    if io_.frames_shape is None:
        return 0
    recorded = (run.extra.get("frames") or {}).get("step_frames")
    return int(recorded) if recorded else run.features.window_frames(run.window_s) // io_.frames_shape[1]


def _frame_thresholds(run: RunFolder) -> dict[str, float]:
    """Per label, the frame threshold of the frames extent rule (else the window threshold)."""
    extent = run.events.get("extent", {})
    return {label: float(extent.get(label, {}).get("threshold", run.thresholds[label])) for label in run.labels}


def _auc_line(labels: tuple[str, ...], result: dict) -> str:
    parts = []
    for label in labels:
        f, m, d = result["float"][label], result["model"][label], result["vs_float"][label]
        auc = (
            "ROC-AUC n/a (one class only in the test split)"
            if f["roc_auc"] is None
            else f"ROC-AUC float {f['roc_auc']:.4f} converted {m['roc_auc']:.4f}"
        )
        parts.append(f"{label}: {auc}, largest score difference {d['max_score_diff']:.4f}, "
                     f"agreement at threshold {d['agreement_at_threshold']:.4f}")
    return "; ".join(parts)


def _edgetpu_variant(*, model_path: Path, log: Callable[[str], None],
                     warn: Callable[[str], None]) -> tuple[dict | None, str | None, str]:
    """Compile for the Edge TPU; returns (manifest entry or None, failure or None, report note)."""
    compiler = tpu.find_compiler()
    if compiler is None:
        warn(f"note: {tpu.INSTALL_HINT}")
        return None, None, f"Edge TPU: not compiled ({tpu.COMPILER} not installed on this machine)"
    try:
        compiled, compiler_report = tpu.compile_for_edgetpu(
            model_path=model_path, out_dir=model_path.parent, compiler=compiler
        )
    except ConvertFailure as exc:
        return None, str(exc), f"Edge TPU: compile failed ({exc})"
    summary = compiler_report.summary()
    if not compiler_report.all_mapped:
        failure = f"{compiled}: not every op runs on the Edge TPU ({summary}); not added to {MANIFEST_NAME}"
        return None, failure, f"Edge TPU: {summary}; not added to the bundle"
    log(f"edgetpu: {compiled} ({summary}, compiler {compiler_report.version})")
    entry = {
        "file": compiled.name,
        "sha256": sha256_of(compiled),
        "compiled_from_sha256": sha256_of(model_path),
        "compiler_version": compiler_report.version,
        "operations": compiler_report.total_ops,
        "ops_on_edgetpu": sum(row.count for row in compiler_report.operators),
        "ops_on_cpu": 0,
        "size_kb": round(compiled.stat().st_size / 1024, 1),
    }
    return entry, None, f"Edge TPU: `{compiled.name}`, {summary} (compiler {compiler_report.version})"


def convert_run(
    *,
    run_dir: str | Path,
    settings: ConvertSettings,
    float32: bool = False,
    float16: bool = False,
    edgetpu: bool = False,
    command: str | None = None,
    notes: tuple[str, ...] = (),
    log: Callable[[str], None] = _stdout,
    warn: Callable[[str], None] = _stderr,
) -> ConvertResult:
    """Convert ``run_dir`` to int8, verify it and write the bundle; see the module docstring.

    Raises :class:`convert.ConvertInputError` for bad input (exit 2); run-time problems (int8
    too far from float, Edge TPU compile failures) come back in ``ConvertResult.failures``.
    """
    run = load_run_folder(run_dir)
    command = command or "python -m convert --int8 " + str(run_dir)
    model = _load_keras(run)
    params = int(model.count_params())
    representative = run.calibration_windows(max_windows=settings.representative_windows)
    x, y = run.test_windows()

    content = export.export_tflite(model, kind="int8", representative=representative)
    export.check_full_integer(content)
    model_path = run.path / MODEL_NAME
    write_atomic(model_path, content)
    size_kb = len(content) / 1024
    log(f"int8: {model_path} {size_kb:.1f} KiB, {params:,} parameters "
        f"(calibrated on {len(representative)} training windows)")
    if size_kb > settings.size_budget_kb:
        warn(f"warning: {model_path} is {size_kb:.1f} KiB, over convert.size_budget_kb "
             f"({settings.size_budget_kb:g} KiB); use fewer filters in train.model")
    try:
        return _verify_and_bundle(
            run=run, model=model, content=content, x=x, y=y, settings=settings, params=params,
            float32=float32, float16=float16, edgetpu=edgetpu, command=command, notes=notes,
            log=log, warn=warn,
        )
    except BaseException:
        # model.json exists only for a model that passed verification.
        (run.path / MANIFEST_NAME).unlink(missing_ok=True)
        raise


def _verify_and_bundle(*, run: RunFolder, model, content: bytes, x: np.ndarray, y: np.ndarray,
                       settings: ConvertSettings, params: int, float32: bool, float16: bool,
                       edgetpu: bool, command: str, notes: tuple[str, ...],
                       log: Callable[[str], None], warn: Callable[[str], None]) -> ConvertResult:
    model_path = run.path / MODEL_NAME
    size_kb = len(content) / 1024
    # A provisional manifest lets the device's own reader and classifier score the int8 model.
    _write_manifest(run, content, metrics={"status": "verifying"}, variants={})
    float_scores, float_frames = verify.keras_both(model, x)
    try:
        int8_scores, int8_frames = verify.device_both(run.path, x)
    except BundleError as exc:
        raise ConvertFailure(f"the device runtime refuses the converted model: {exc}") from None
    int8 = verify.compare(labels=run.labels, y=y, float_scores=float_scores,
                          model_scores=int8_scores, thresholds=run.thresholds)
    log(f"verify on {len(x)} test windows (device runtime): " + _auc_line(run.labels, int8))
    frames_vs_float = None
    if float_frames is not None and int8_frames is not None:
        frames_vs_float = verify.compare_frames(labels=run.labels, float_frames=float_frames,
                                                model_frames=int8_frames, thresholds=_frame_thresholds(run))
        log("frame output int8 vs float: " + "; ".join(
            f"{label}: largest difference {d['max_score_diff']:.4f}, agreement at threshold "
            f"{d['agreement_at_threshold']:.4f}" for label, d in frames_vs_float.items()))
    comparisons = {"int8": int8}
    variants: dict = {}
    for name, wanted in (("float32", float32), ("float16", float16)):
        if wanted:
            variants[name], comparisons[name] = _float_variant(
                name=name, model=model, run=run, x=x, y=y, float_scores=float_scores, log=log
            )

    failures: list[str] = []
    report_notes = list(notes)
    if size_kb > settings.size_budget_kb:
        report_notes.append(f"over the size budget: {size_kb:.1f} KiB > convert.size_budget_kb "
                            f"{settings.size_budget_kb:g} KiB")
    losses = []
    for label, d in int8["vs_float"].items():
        if d["roc_auc_loss"] is None:
            warn(f"warning: {label}: the test split holds one class only; ROC-AUC not checked")
        elif d["roc_auc_loss"] > settings.auc_tolerance:
            losses.append(f"{label} {int8['float'][label]['roc_auc']:.4f} -> {int8['model'][label]['roc_auc']:.4f}")
    if losses:
        failures.append(
            f"int8 loses more ROC-AUC than convert.auc_tolerance ({settings.auc_tolerance:g}) against "
            f"float: {', '.join(losses)}; no {MANIFEST_NAME} written (check that "
            f"{run.path / 'calibration.npy'} holds typical training windows)"
        )
    poor = [label for label, d in (frames_vs_float or {}).items()
            if d["agreement_at_threshold"] < FRAME_AGREEMENT]
    if poor:
        failures.append(f"int8 frame output agrees with float on fewer than {FRAME_AGREEMENT:.0%} of steps at "
                        f"the frame threshold for {', '.join(poor)}; no {MANIFEST_NAME} written")
    verified = not failures
    if edgetpu and not verified:
        report_notes.append("Edge TPU: skipped (int8 verification failed)")
    elif edgetpu:
        entry, failure, note = _edgetpu_variant(model_path=model_path, log=log, warn=warn)
        report_notes.append(note)
        if entry:
            variants["edgetpu"] = entry
        if failure:
            failures.append(failure)

    metrics = {
        "source": "test_windows.npz",
        "test_windows": int(len(x)),
        "auc_tolerance": settings.auc_tolerance,
        "float": int8["float"],
        "int8": int8["model"],
        "int8_vs_float": int8["vs_float"],
        **({"frames_int8_vs_float": frames_vs_float} if frames_vs_float else {}),
    }
    if run.final is not None:
        # A final model trained on every recording: its verification windows are the folds'
        # held-out windows, which it trained on. The estimate of accuracy is the folds'.
        metrics["source"] = ("test_windows.npz: the cross-validation folds' pooled held-out windows, "
                             "trained on by this final model (an int8-vs-float check, not an estimate)")
        metrics["cross_validated"] = run.metrics.get("float")
        report_notes.append("final model trained on every recording: verified on the folds' pooled held-out "
                            "windows, which it trained on; int8 vs float is the check here, the accuracy "
                            "estimate is the cross-validated one in the training report")
    adaptation = run.adaptation
    if adaptation is not None:  # python -m train.adapt: say what the model was adapted on
        metrics["adaptation"] = {k: adaptation.get(k) for k in ("from_run", "pseudo_labels", "checked_on", "ensemble",
                                                                "teacher", "distilled_from")}
        metrics["adaptation"]["unlabelled"] = {k: v for k, v in adaptation.get("unlabelled", {}).items() if k != "files"}
        how = (f"distilled from {len(adaptation['distilled_from'])} runs" if adaptation.get("distilled_from")
               else "self-training")
        report_notes.append(f"adapted ({how}) from {adaptation.get('from_run')} on unlabelled audio: "
                            f"{adaptation.get('pseudo_labels')} pseudo-labels (see run.json adaptation)")
    manifest_path: Path | None = None
    if verified:
        manifest_path = _write_manifest(run, content, metrics=metrics, variants=variants)
        log(f"bundle: {manifest_path}")
        status = "PASSED: int8 verified, model.json written" + "".join(f"; but {f}" for f in failures)
    else:
        (run.path / MANIFEST_NAME).unlink(missing_ok=True)
        status = "FAILED: " + " ".join(failures)
    section = report.markdown(
        command=command, status=status, size_kb=size_kb, params=params,
        size_budget_kb=settings.size_budget_kb, auc_tolerance=settings.auc_tolerance,
        test_windows=len(x), comparisons=comparisons, notes=report_notes,
    )
    report.write_report_section(run.path, section)
    report.update_metrics(run.path, {**metrics, "size_kb": round(size_kb, 1), "params": params,
                                     "variants": variants, "passed": verified})
    return ConvertResult(model_path=model_path, manifest_path=manifest_path, size_kb=size_kb,
                         params=params, metrics=metrics, variants=variants, failures=tuple(failures))
