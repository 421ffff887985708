"""Models and audio for the benches (not a benchmark itself): the bundles a user has under runs/,
an untrained int8 model of the schema's default architecture (the frame head, ``pooling: time``,
events by the frames rule) for when there are none, the tests' tone model, and seeded test audio."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TONE_SHARE = 0.15
"""Share of :func:`tone_signal` the tone fills (1.5 s every 10 s)."""


def tone_signal(seconds: float, sample_rate: int, channels: int = 1):
    """Seeded noise with a 2 kHz tone of 1.5 s every 10 s."""
    import numpy as np

    rng = np.random.default_rng(5)
    x = 0.02 * rng.standard_normal(int(seconds * sample_rate)).astype(np.float32)
    t = np.arange(int(1.5 * sample_rate)) / sample_rate
    burst = (0.3 * np.sin(2 * np.pi * 2000 * t)).astype(np.float32)
    for start in range(3, int(seconds) - 2, 10):
        x[start * sample_rate : start * sample_rate + len(burst)] += burst
    return x if channels == 1 else np.stack([x] * channels, axis=1)


DEVICE_BUNDLES = {
    "demo": "frame head, the default (`bash scripts/demo`: config.yaml, `pooling: time`)",
    "demo_max": "window rule (config.yaml with `train.model.pooling: max`)",
    "capuchin": "frame head (examples/capuchin.yaml)",
}
"""The bundles a user has today, ``runs/NAME`` -> what it is: the default frame head, the
window-rule model of the same config beside it (to show what the frame head costs), and the
Capuchinbird example."""


def device_bundles() -> dict[str, Path]:
    """``runs/NAME`` -> its model.tflite, for the :data:`DEVICE_BUNDLES` that load, in order."""
    from device.bundle import BundleError, load_bundle

    found = {}
    for name in DEVICE_BUNDLES:
        path = REPO / "runs" / name / "model.tflite"
        try:
            load_bundle(path)
            found[f"runs/{name}"] = path
        except BundleError:
            continue
    return found


def architecture_note() -> str:
    """What :func:`architecture_bundle` makes, for a bench's model line."""
    from device.config import SCHEMA

    pooling = SCHEMA["train"]["model"]["pooling"].default
    rule = ("the frame head, events by the frames rule" if pooling == "time"
            else "a window-score model, events from the windows that fire")
    return (f"an untrained int8 model of the default architecture (`train.model.pooling: {pooling}`: "
            f"{rule}; the inference cost of a trained one, its events are not calls)")


def architecture_bundle(folder: Path) -> Path:
    """An untrained int8 model of train/model.py's architecture with the schema's defaults
    (``train.model``, ``train.window_s``, the features), written as ``python -m convert`` writes a
    bundle: for the frame head (``pooling: time``, the default) its frame layout
    (``model.json`` ``frames``) and the frames extent rule, so the device stitches frame cells as
    it does for a trained default model. Returns ``folder/model.tflite``.

    Weights are seeded (``train.seed``). An untrained head scores everything within 0.005 of
    0.5, so an event, once open, would last until ``detection.max_event_s`` (hysteresis 0.1):
    each output layer is scaled so its logits on the seeded tone audio have mean 0 and standard
    deviation 3, and each threshold is that audio's score at the ``1 - TONE_SHARE`` quantile.
    Its events then come at about the tone's rate (one per tone of :func:`tone_signal`), and
    the device's event path runs as it does for a trained model; on other audio they are not
    calls.
    """
    import keras
    import numpy as np

    from convert.export import export_tflite, tensor_io
    from device.bundle import Quantization, event_settings, write_bundle
    from device.config import SCHEMA, DetectionSection
    from device.features import FeatureParams, logmel
    from train.model import FRAME_OUTPUT, build_model, has_frames, step_frames

    spec = SCHEMA["train"]["model"]
    params = FeatureParams()
    window_s = SCHEMA["train"]["window_s"].default
    detection = DetectionSection()
    frames = params.window_frames(window_s)
    filters = list(spec["filters"].default)
    keras.utils.set_random_seed(SCHEMA["train"]["seed"].default)
    model = build_model(
        frames=frames,
        n_mels=params.n_mels,
        n_labels=1,
        filters=filters,
        dropout=spec["dropout"].default,
        normalisation=spec["normalisation"].default,
        pooling=spec["pooling"].default,
        stem_stride=spec["stem_stride"].default,
    )
    spectrogram = logmel(tone_signal(60, params.sample_rate), params)
    hop = round(detection.hop_s * params.frame_rate)
    windows = np.stack([spectrogram[i : i + frames, :, None]
                        for i in range(0, len(spectrogram) - frames + 1, hop)]).astype(np.float32)
    outputs = ["logits", FRAME_OUTPUT] if has_frames(model) else ["logits"]
    for name, logits in zip(outputs, _outputs(model, windows), strict=True):
        kernel, bias = model.get_layer(name).get_weights()
        scale = 3.0 / max(float(logits.std()), 1e-9)
        model.get_layer(name).set_weights([kernel * scale, (bias - float(logits.mean())) * scale])
    window_scores, *frame_scores = (1 / (1 + np.exp(-z))
                                    for z in _outputs(model, windows))

    def threshold(scores) -> float:
        return round(float(np.clip(np.quantile(scores, 1 - TONE_SHARE), 0.01, 0.99)), 4)

    folder.mkdir(parents=True, exist_ok=True)
    content = export_tflite(model, kind="int8", representative=windows)
    (folder / "model.tflite").write_bytes(content)
    io_ = tensor_io(content)
    if frame_scores:
        extent = {"rule": "frames", "threshold": threshold(frame_scores[0])}
        per_step = step_frames(frames=frames, n_mels=params.n_mels, filters=filters,
                               stem_stride=spec["stem_stride"].default)
    else:
        extent, per_step = {"rule": "centre"}, 0
    write_bundle(
        folder,
        labels=["call"],
        features=params,
        window_s=window_s,
        input_dtype=io_.input_dtype,
        output_dtype=io_.output_dtype,
        input_quantization=Quantization(*io_.input_quantization),
        output_quantization=Quantization(*io_.output_quantization),
        thresholds={"call": threshold(window_scores)},
        recommended_hop_s=detection.hop_s,
        metrics={"note": "untrained, for benchmarks only"},
        events={"detection": event_settings(detection), "extent": {"call": extent}},
        frames=io_.frames_record(step_frames=per_step, frame_rate=params.frame_rate),
    )
    return folder / "model.tflite"


def _outputs(model, windows):
    """The model's logits on ``windows``: [window (N, 1)] or [window, frames (N, steps, 1, 1)]."""
    out = model.predict(windows, verbose=0)
    return out if isinstance(out, list) else [out]


def tone_bundle(folder: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from tinymodel import build_tone_bundle

    return build_tone_bundle(folder, window_s=3.0)
