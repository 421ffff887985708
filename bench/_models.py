"""Models and audio for the benches (not a benchmark itself): the example runs' bundles, an
untrained window-score model (``pooling: max``) of train/model.py's architecture converted to
int8, the tests' tone model, and seeded test audio."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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


def trained_bundles() -> dict[str, Path]:
    """The example runs' bundles (runs/bobwhite, runs/capuchin) that load, by name."""
    from device.bundle import BundleError, load_bundle

    found = {}
    for name in ("bobwhite", "capuchin"):
        path = REPO / "runs" / name / "model.tflite"
        try:
            load_bundle(path)
            found[name] = path
        except BundleError:
            continue
    return found


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


def architecture_bundle(folder: Path) -> Path:
    """An untrained int8 model of train/model.py's default architecture, as a bundle."""
    import numpy as np

    from convert.export import export_tflite
    from device.bundle import Quantization, write_bundle
    from device.config import SCHEMA
    from device.features import FeatureParams, logmel
    from device.runtime import _interpreter_api
    from train.model import build_model

    params = FeatureParams()
    window_s = SCHEMA["train"]["window_s"].default
    frames = params.window_frames(window_s)
    model = build_model(
        frames=frames,
        n_mels=params.n_mels,
        n_labels=1,
        filters=SCHEMA["train"]["model"]["filters"].default,
        dropout=0.2,
        stem_stride=SCHEMA["train"]["model"]["stem_stride"].default,
    )
    x = tone_signal(window_s * 20, params.sample_rate)
    step = int(window_s * params.sample_rate)
    representative = np.stack(
        [logmel(x[i * step : (i + 1) * step], params)[:frames, :, None] for i in range(20)]
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.tflite").write_bytes(
        export_tflite(model, kind="int8", representative=representative)
    )
    interpreter_class, _ = _interpreter_api()
    interpreter = interpreter_class(model_path=str(folder / "model.tflite"))
    (s_in, z_in), (s_out, z_out) = (
        d[0]["quantization"]
        for d in (interpreter.get_input_details(), interpreter.get_output_details())
    )
    write_bundle(
        folder,
        labels=["call"],
        features=params,
        window_s=window_s,
        input_dtype="int8",
        output_dtype="int8",
        input_quantization=Quantization(float(s_in), int(z_in)),
        output_quantization=Quantization(float(s_out), int(z_out)),
        thresholds={"call": 0.5},
        metrics={"note": "untrained, for benchmarks only"},
    )
    return folder / "model.tflite"


def tone_bundle(folder: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from tinymodel import build_tone_bundle

    return build_tone_bundle(folder, window_s=3.0)
