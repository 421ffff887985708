"""A small but real run folder, as ``python -m train`` leaves it, for the convert tests.

Two labels: a 1 kHz tone ("low") and a 3 kHz tone ("high"), each present or not in one second
of noise at random levels, turned into log-mel windows by the device's own front end. A small
Keras CNN with the layer kinds of train/model.py is
trained on them for a few epochs with pinned seeds. Needs TensorFlow (tests only).

Training takes a few seconds, so :func:`template_run` builds the folder once per test session
and :func:`copy_run` gives each test its own copy to convert.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np

from device.features import FeatureParams, logmel
from device.runrecord import RunRecord

LABELS = ("low", "high")
TONES_HZ = {"low": 1000.0, "high": 3000.0}
WINDOW_S = 1.0
_TEMPLATES: dict[str, Path] = {}


def synthetic_windows(n: int, *, params: FeatureParams, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n log-mel windows (n, frames, n_mels, 1) float32 dB and their 0/1 labels (n, 2).

    Each tone burst (a "call") is present with probability 0.5, at an amplitude from barely
    audible in the noise to loud, so the task is easy but not trivially separable.
    """
    rng = np.random.default_rng(seed)
    sr = params.sample_rate
    t = np.arange(int(WINDOW_S * sr)) / sr
    frames = params.window_frames(WINDOW_S)
    x = np.empty((n, frames, params.n_mels, 1), np.float32)
    y = np.zeros((n, len(LABELS)), np.float32)
    for i in range(n):
        clip = rng.uniform(0.003, 0.03) * rng.standard_normal(len(t))
        for j, label in enumerate(LABELS):
            if rng.random() < 0.5:
                y[i, j] = 1
                # A call: a tone burst of 0.2-0.5 s somewhere in the window, Hann-shaped.
                length = int(rng.uniform(0.2, 0.5) * sr)
                start = rng.integers(0, len(t) - length)
                burst = np.zeros(len(t))
                burst[start : start + length] = np.hanning(length)
                amplitude = 10 ** rng.uniform(-2.3, -0.7)
                clip = clip + amplitude * burst * np.sin(2 * np.pi * TONES_HZ[label] * t)
        x[i, :, :, 0] = logmel(clip.astype(np.float32), params)[:frames]
    return x, y


def build_model(frames: int, n_mels: int, n_labels: int):
    """The layer kinds of train/model.py, smaller: per-band mean subtraction, a conv block, a
    depthwise-separable block, global max pooling and a Dense of logits (no sigmoid)."""
    import keras
    from keras import layers

    inputs = keras.Input((frames, n_mels, 1))
    band_mean = layers.AveragePooling2D((frames, 1))(inputs)
    h = layers.Subtract()([inputs, band_mean])  # normalisation lives inside the model
    h = layers.Conv2D(12, 3, padding="same", use_bias=False)(h)
    h = layers.ReLU()(layers.BatchNormalization()(h))
    h = layers.MaxPooling2D(2)(h)
    h = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(h)
    h = layers.ReLU()(layers.BatchNormalization()(h))
    h = layers.Conv2D(16, 1, use_bias=False)(h)
    h = layers.ReLU()(layers.BatchNormalization()(h))
    h = layers.GlobalMaxPooling2D()(h)
    h = layers.Dropout(0.1)(h)
    return keras.Model(inputs, layers.Dense(n_labels)(h))


def build_run_folder(folder: Path, *, seed: int = 0, epochs: int = 20) -> Path:
    """Train the tone CNN and write the run folder contract into ``folder``."""
    import keras

    keras.utils.set_random_seed(seed)
    params = FeatureParams()
    x_train, y_train = synthetic_windows(320, params=params, seed=seed)
    x_test, y_test = synthetic_windows(160, params=params, seed=seed + 1)
    frames = params.window_frames(WINDOW_S)
    model = build_model(frames, params.n_mels, len(LABELS))
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)

    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # keras 3.15's saver trips numpy 2's copy= deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        model.save(folder / "model.keras")
    np.save(folder / "calibration.npy", x_train[:200])
    np.savez(
        folder / "test_windows.npz",
        x=x_test,
        y=y_test,
        source=np.array([f"synthetic_{i // 10:02d}.wav" for i in range(len(x_test))]),
        start_s=np.arange(len(x_test), dtype=np.float64) % 10 * WINDOW_S,
    )
    RunRecord(
        labels=tuple(LABELS),
        features=params,
        window_s=WINDOW_S,
        thresholds={label: 0.5 for label in LABELS},
        recommended_hop_s=0.5,
        calibration={"method": "fixed", "note": "test fixture"},
        metrics={"float": {}},
        title="tone fixture",
    ).write(folder)  # as python -m train writes it
    (folder / "report.md").write_text("# Run report: tone fixture\n\nTrained by the convert tests.\n")
    (folder / "metrics.json").write_text(json.dumps({"float": {"note": "training metrics"}}))
    return folder


def template_run(tmp_path_factory) -> Path:
    """The trained run folder of this test session (built on first use; never modify it)."""
    if "tones" not in _TEMPLATES:
        _TEMPLATES["tones"] = build_run_folder(tmp_path_factory.mktemp("convert_template") / "run")
    return _TEMPLATES["tones"]


def copy_run(template: Path, dest: Path) -> Path:
    """A private copy of a run folder, for a test to convert and modify."""
    shutil.copytree(template, dest)
    return dest
