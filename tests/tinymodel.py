"""A real, tiny int8 model bundle for tests: it detects a pure tone, by construction.

The Keras model averages each mel band over the window and weighs the band holding
``tone_hz`` against the others, so its logit is high exactly while a loud tone sounds.
Converted with TensorFlow's full-integer int8 converter and written with the device's own
bundle writer, it is a real model for the real LiteRT runtime, with no training needed.
Needs TensorFlow (tests only; the device never imports it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from device.bundle import Quantization, write_bundle
from device.features import FeatureParams, logmel, mel_filterbank


def tone(freq_hz: float, seconds: float, sr: int, *, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def noise(seconds: float, sr: int, *, amplitude: float = 0.01, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (amplitude * rng.standard_normal(int(seconds * sr))).astype(np.float32)


def tone_band(params: FeatureParams, tone_hz: float) -> int:
    """Index of the mel band with the most weight at ``tone_hz``."""
    bin_ = int(round(tone_hz / params.sample_rate * params.n_fft))
    return int(np.argmax(mel_filterbank(params)[:, bin_]))


def build_tone_bundle(
    folder: str | Path,
    *,
    tone_hz: float = 2000.0,
    label: str = "tone",
    window_s: float = 1.0,
    threshold: float = 0.5,
    params: FeatureParams | None = None,
) -> Path:
    """Write model.tflite + model.json into ``folder``; returns the .tflite path."""
    import tensorflow as tf

    params = params or FeatureParams()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frames = params.window_frames(window_s)
    band = tone_band(params, tone_hz)

    inputs = tf.keras.Input((frames, params.n_mels, 1))
    pooled = tf.keras.layers.AveragePooling2D(pool_size=(frames, 1))(inputs)
    flat = tf.keras.layers.Flatten()(pooled)
    logit = tf.keras.layers.Dense(1)(flat)
    model = tf.keras.Model(inputs, logit)
    # logit = 0.5 * (band dB - mean dB of the other bands) - 10: about +15 for a loud tone
    # over noise, about -10 for noise alone.
    weights = np.full((params.n_mels, 1), -0.5 / (params.n_mels - 1), np.float32)
    weights[band] = 0.5
    model.layers[-1].set_weights([weights, np.array([-10.0], np.float32)])

    sr = params.sample_rate
    examples = []
    for seed in range(16):
        clip = noise(window_s, sr, seed=seed)
        if seed % 2:
            clip = clip + tone(tone_hz, window_s, sr, amplitude=0.05 + 0.02 * seed)
        examples.append(logmel(clip, params)[:frames, :, None])

    def representative():
        for x in examples:
            yield [x[None].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    (folder / "model.tflite").write_bytes(converter.convert())

    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(folder / "model.tflite"))
    (scale_in, zero_in) = interpreter.get_input_details()[0]["quantization"]
    (scale_out, zero_out) = interpreter.get_output_details()[0]["quantization"]
    write_bundle(
        folder,
        labels=[label],
        features=params,
        window_s=window_s,
        input_dtype="int8",
        output_dtype="int8",
        input_quantization=Quantization(float(scale_in), int(zero_in)),
        output_quantization=Quantization(float(scale_out), int(zero_out)),
        thresholds={label: threshold},
        recommended_hop_s=0.5,
        metrics={"note": "hand-set tone detector for tests"},
    )
    return folder / "model.tflite"


def build_tone_frames_bundle(
    folder: str | Path,
    *,
    tone_hz: float = 2000.0,
    label: str = "tone",
    window_s: float = 1.0,
    step_frames: int = 10,
    frame_threshold: float = 0.5,
    params: FeatureParams | None = None,
) -> Path:
    """A tone detector with a frame output (as ``pooling: time`` models have), events by the
    frames rule: per spectrogram frame the same band contrast as :func:`build_tone_bundle`,
    averaged over ``step_frames`` frames a step (the frame logits, (1, steps, 1, 1)); the
    window logit is the highest step's. Writes model.tflite + model.json; returns the .tflite."""
    import tensorflow as tf

    from convert.export import export_tflite, tensor_io

    params = params or FeatureParams()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frames = params.window_frames(window_s)
    band = tone_band(params, tone_hz)
    inputs = tf.keras.Input((frames, params.n_mels, 1))
    contrast = tf.keras.layers.Conv2D(1, (1, params.n_mels), name="contrast")(inputs)
    steps = tf.keras.layers.AveragePooling2D((step_frames, 1), name="frame_logits")(contrast)
    window = tf.keras.layers.Dense(1, name="logits")(tf.keras.layers.GlobalMaxPooling2D()(steps))
    model = tf.keras.Model(inputs, [window, steps])
    weights = np.full((1, params.n_mels, 1, 1), -0.5 / (params.n_mels - 1), np.float32)
    weights[0, band] = 0.5
    model.get_layer("contrast").set_weights([weights, np.array([-10.0], np.float32)])
    model.get_layer("logits").set_weights([np.ones((1, 1), np.float32), np.zeros(1, np.float32)])
    sr = params.sample_rate
    examples = []
    for seed in range(16):
        clip = noise(window_s, sr, seed=seed)
        if seed % 2:
            clip = clip + tone(tone_hz, window_s, sr, amplitude=0.05 + 0.02 * seed)
        examples.append(logmel(clip, params)[:frames, :, None])
    content = export_tflite(model, kind="int8", representative=np.stack(examples).astype(np.float32))
    (folder / "model.tflite").write_bytes(content)
    io_ = tensor_io(content)
    write_bundle(
        folder,
        labels=[label],
        features=params,
        window_s=window_s,
        input_dtype="int8",
        output_dtype="int8",
        input_quantization=Quantization(*io_.input_quantization),
        output_quantization=Quantization(*io_.output_quantization),
        thresholds={label: 0.5},
        recommended_hop_s=0.5,
        metrics={"note": "hand-set tone detector with a frame output, for tests"},
        events={"extent": {label: {"rule": "frames", "threshold": frame_threshold}}},
        frames=io_.frames_record(step_frames=step_frames, frame_rate=params.frame_rate),
    )
    return folder / "model.tflite"
