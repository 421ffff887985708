"""Score the test split with the float Keras model and a converted model; compare them.

The int8 bundle is scored by the device's own code: :func:`device.bundle.load_bundle` and
:func:`device.runtime.load_classifier` (LiteRT, one window at a time, quantization read from the
model, sigmoid after dequantizing). The float32/float16 comparison exports, which the device
does not run, go through ai_edge_litert directly. Scores are compared in probability units
(sigmoid of the logit), the units of the thresholds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Probability from logit, float64, without overflow for large |logit|."""
    z = np.asarray(logits, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


def keras_scores(model, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Probabilities (N, n_labels) of the float Keras model (logits out) for windows x (N, frames, n_mels, 1)."""
    return keras_both(model, x, batch_size=batch_size)[0]


def keras_both(model, x: np.ndarray, *, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray | None]:
    """Window probabilities (N, n_labels) and, for a model with a frame output, frame
    probabilities (N, steps, n_labels) (else None), of the float Keras model."""
    windows, frames = [], []
    for i in range(0, len(x), batch_size):
        out = model(x[i : i + batch_size], training=False)
        if isinstance(out, (list, tuple)):
            frames.append(np.asarray(out[1])[:, :, 0, :])
            out = out[0]
        windows.append(np.asarray(out))
    return sigmoid(np.concatenate(windows)), (sigmoid(np.concatenate(frames)) if frames else None)


def device_scores(bundle_path: str | Path, x: np.ndarray) -> np.ndarray:
    """Probabilities (N, n_labels) of a bundle as the device computes them, on the CPU."""
    return device_both(bundle_path, x)[0]


def device_both(bundle_path: str | Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Window probabilities (N, n_labels) and frame probabilities (N, steps, n_labels) (None
    without a frame output) of a bundle as the device computes them, on the CPU."""
    from convert.export import quiet
    from device.bundle import load_bundle
    from device.runtime import load_classifier

    with quiet():  # the runtime announces its XNNPACK delegate on stderr
        classifier = load_classifier(load_bundle(bundle_path), delegate="cpu")
    windows, frames = [], []
    for window in x:
        windows.append(classifier.predict(window[:, :, 0]))
        if classifier.last_frames is not None:
            frames.append(classifier.last_frames)
    return (np.stack(windows).astype(np.float64),
            np.stack(frames).astype(np.float64) if frames else None)


def compare_frames(*, labels: tuple[str, ...], float_frames: np.ndarray, model_frames: np.ndarray,
                   thresholds: dict[str, float]) -> dict:
    """Per label, how far the converted model's frame probabilities (N, steps, n_labels) are from
    float: the largest difference and the share of steps both put on the same side of the
    label's frame threshold."""
    out = {}
    for j, label in enumerate(labels):
        f, m, t = float_frames[:, :, j], model_frames[:, :, j], thresholds[label]
        out[label] = {"max_score_diff": float(np.max(np.abs(f - m))) if f.size else 0.0,
                      "agreement_at_threshold": float(np.mean((f >= t) == (m >= t))) if f.size else 1.0,
                      "threshold": float(t)}
    return out


def tflite_scores(path: str | Path, x: np.ndarray) -> np.ndarray:
    """Probabilities (N, n_labels) of a .tflite model (logits out) under ai_edge_litert, one window per invoke.

    int8 input is quantized as ``round(x / scale) + zero_point`` clipped to [-128, 127], and
    int8 output dequantized as ``scale * (q - zero_point)``, with (scale, zero_point) from the
    model; float models take and give float32.
    """
    from ai_edge_litert.interpreter import Interpreter

    from convert.export import quiet

    with quiet():  # the runtime announces its XNNPACK delegate on stderr
        interpreter = Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = next(o for o in interpreter.get_output_details() if len(o["shape"]) == 2)  # the window output
    in_type, out_type = np.dtype(inp["dtype"]), np.dtype(out["dtype"])
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    logits = np.empty((len(x), int(out["shape"][-1])), np.float32)
    for i in range(len(x)):
        window = x[i : i + 1]
        if in_type == np.int8:
            window = np.clip(np.round(window / in_scale) + in_zero, -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], window.astype(in_type, copy=False))
        interpreter.invoke()
        raw = interpreter.get_tensor(out["index"])[0]
        logits[i] = out_scale * (raw.astype(np.float32) - out_zero) if out_type == np.int8 else raw
    return sigmoid(logits)


def label_metrics(*, y: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """ROC-AUC, PR-AUC and precision/recall/F1 at ``threshold`` for one label.

    y: (N,) 0/1; scores: (N,) probabilities. AUCs are None when the test split holds only one
    class of this label (they are undefined then).
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    both = 0 < y.sum() < len(y)
    predicted = scores >= threshold
    tp = float(np.sum(predicted & (y == 1)))
    precision = tp / predicted.sum() if predicted.any() else 0.0
    recall = tp / y.sum() if y.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "roc_auc": float(roc_auc_score(y, scores)) if both else None,
        "pr_auc": float(average_precision_score(y, scores)) if both else None,
        "precision": round(float(precision), 6),
        "recall": round(float(recall), 6),
        "f1": round(float(f1), 6),
        "threshold": float(threshold),
    }


def compare(
    *,
    labels: tuple[str, ...],
    y: np.ndarray,
    float_scores: np.ndarray,
    model_scores: np.ndarray,
    thresholds: dict[str, float],
) -> dict:
    """Metrics of the float and the converted model, and how far apart they are, per label.

    Scores are probabilities (N, n_labels); y is 0/1 (N, n_labels).

    Returns ``{"float": {label: metrics}, "model": {label: metrics},
    "vs_float": {label: {"roc_auc_loss", "max_score_diff", "agreement_at_threshold"}}}``;
    roc_auc_loss is float minus converted (positive = the converted model is worse),
    max_score_diff the largest |p_float - p_model| over the test windows, and
    agreement_at_threshold the share of windows both put on the same side of the threshold.
    """
    p_float, p_model = float_scores, model_scores
    result: dict = {"float": {}, "model": {}, "vs_float": {}}
    for j, label in enumerate(labels):
        threshold = thresholds[label]
        yj = y[:, j]
        f = label_metrics(y=yj, scores=p_float[:, j], threshold=threshold)
        m = label_metrics(y=yj, scores=p_model[:, j], threshold=threshold)
        loss = None if f["roc_auc"] is None else f["roc_auc"] - m["roc_auc"]
        result["float"][label] = f
        result["model"][label] = m
        result["vs_float"][label] = {
            "roc_auc_loss": loss,
            "max_score_diff": float(np.max(np.abs(p_float[:, j] - p_model[:, j]))),
            "agreement_at_threshold": float(np.mean((p_float[:, j] >= threshold) == (p_model[:, j] >= threshold))),
        }
    return result
