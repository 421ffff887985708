"""The detector: a small CNN over one window of log-mel dB, built for full-integer int8.

Input (None, frames, n_mels, 1) float32 log-mel dB as ``device.features.logmel`` gives it;
output (None, n_labels) LOGITS, one per label (the device applies the sigmoid after
dequantizing; training uses from-logits losses). Only layers that TFLite's int8 converter and
the Edge TPU map directly: AveragePooling2D + Subtract (per-band normalisation), Conv2D,
DepthwiseConv2D, BatchNormalization (folded into the convolutions), ReLU, MaxPooling2D,
global pooling, Dropout (gone at inference) and Dense. ``pooling="time"`` pools frequency only
and weighs each remaining time step with a DepthwiseConv2D as long as the time axis (then the
1x1 global pooling), so the output can tell a call that fills the window from one that only
clips its edge; it converts without RESHAPE/PACK ops. No custom layers, so ``model.keras``
loads anywhere without this package.

Frame output (``pooling="time"``): a 1x1 Conv2D from the frequency-pooled time steps to one logit
per label and step, a second output of shape (None, steps, 1, n_labels) named ``frame_logits``:
where in the window the call is, at ``step_frames(...)`` spectrogram frames a step (weakly
supervised sound event detection, as DCASE Task 4 systems do). The model's outputs are then
``[logits, frame_logits]``; the window output is unchanged.

Per-band normalisation: each mel band's mean over the window is subtracted inside the model.
It removes the recorder's gain and the site's steady background spectrum (hum, a distant
road), a causal stand-in for PCEN that the stream reproduces exactly, since the device feeds
the same window of frames.
"""

from __future__ import annotations

import keras
from keras import layers

from device.features import FeatureParams
from device.frames import FrameLayout

NORMALISATIONS = ("band_mean", "none")
_BN_MOMENTUM = 0.9
"""Keras' 0.99 needs thousands of steps before the moving statistics that inference uses catch
up with the batches; runs here take a few hundred."""
POOLINGS = ("max", "avg", "time")
FRAME_OUTPUT = "frame_logits"
"""Name of the frame output layer (models with ``pooling="time"``)."""


def step_frames(*, frames: int, n_mels: int, filters: list[int], stem_stride: int = 1) -> int:
    """Spectrogram frames per step of the frame output: the time downsampling of the trunk
    (the stem's stride, then halved by every pooling that :func:`build_model` applies)."""
    height, width, step = -(-frames // stem_stride), -(-n_mels // stem_stride), stem_stride
    if min(height, width) >= 2:
        height, width, step = height // 2, width // 2, step * 2
    for i in range(1, len(filters)):
        if i < len(filters) - 1 and min(height, width) >= 2:
            height, width, step = height // 2, width // 2, step * 2
    return step


def build_model(
    *,
    frames: int,
    n_mels: int,
    n_labels: int,
    filters: list[int],
    dropout: float,
    normalisation: str = "band_mean",
    pooling: str = "max",
    stem_stride: int = 1,
    name: str = "callwatch_cnn",
) -> keras.Model:
    """A conv block (3x3, ``filters[0]`` channels, ``stem_stride`` in time and frequency) then
    depthwise-separable blocks, each halving time and frequency while more than one step
    remains, global pooling and a Dense of logits.

    Most of the inference cost is in the first layers, at full resolution: a stride of 2 there
    computes a quarter of the stem's outputs and every later layer sees a quarter of the steps.
    """
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    inputs = keras.Input((frames, n_mels, 1), name="logmel_db")
    x = inputs
    if normalisation == "band_mean":
        band_mean = layers.AveragePooling2D((frames, 1), name="band_mean")(inputs)
        x = layers.Subtract(name="band_normalised")([inputs, band_mean])
    x = layers.Conv2D(filters[0], 3, strides=stem_stride, padding="same", use_bias=False, name="conv0")(x)
    x = layers.BatchNormalization(momentum=_BN_MOMENTUM, name="bn0")(x)
    x = layers.ReLU(name="relu0")(x)
    height, width = -(-frames // stem_stride), -(-n_mels // stem_stride)
    if min(height, width) >= 2:
        x = layers.MaxPooling2D(2, name="pool0")(x)
        height, width = height // 2, width // 2
    for i, channels in enumerate(filters[1:], 1):
        x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"dw{i}")(x)
        x = layers.BatchNormalization(momentum=_BN_MOMENTUM, name=f"dw{i}_bn")(x)
        x = layers.ReLU(name=f"dw{i}_relu")(x)
        x = layers.Conv2D(channels, 1, use_bias=False, name=f"pw{i}")(x)
        x = layers.BatchNormalization(momentum=_BN_MOMENTUM, name=f"pw{i}_bn")(x)
        x = layers.ReLU(name=f"pw{i}_relu")(x)
        if i < len(filters) - 1 and min(height, width) >= 2:
            x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
            height, width = height // 2, width // 2
    if pooling == "time":
        # Max over frequency, then one learned weight per time step and channel (a depthwise
        # convolution as long as the time axis): the output knows where in the window a call is.
        # (A Reshape/Flatten would do too, but converts with PACK/SHAPE ops around the RESHAPE.)
        x = steps = layers.MaxPooling2D((1, width), name="freq_pool")(x)
        x = layers.DepthwiseConv2D((height, 1), padding="valid", use_bias=False, name="time_weights")(x)
        x = layers.BatchNormalization(momentum=_BN_MOMENTUM, name="time_bn")(x)
        frames_out = layers.Conv2D(n_labels, 1, name=FRAME_OUTPUT)(steps)
        x = layers.ReLU(name="time_relu")(x)
    pool = layers.GlobalMaxPooling2D if pooling in ("max", "time") else layers.GlobalAveragePooling2D
    x = pool(name="global_pool")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="dropout")(x)
    logits = layers.Dense(n_labels, name="logits")(x)
    if pooling == "time":
        return keras.Model(inputs, [logits, frames_out], name=name)
    return keras.Model(inputs, logits, name=name)


def ensemble(members: list[keras.Model]) -> keras.Model:
    """One model of ``members`` (the same architecture, trained at different seeds): each scores
    the input, and each output is the mean of the members' logits (built-in layers only, so the
    saved model loads anywhere, and converts to one int8 model as a single one does). The mean
    logit ranks windows as the mean probability nearly does (on the Bobwhite sites, clip ROC-AUC
    within 0.011 of it, BENCHMARKS.md "Six seeds, ensembles, distillation")."""
    inputs = keras.Input(members[0].input_shape[1:], name="spectrogram")
    outputs = []
    for i, trained in enumerate(members, start=1):
        # A copy of its weights without its optimizer (training compiled it): saved with one,
        # the ensemble would load with a Keras warning per member that it skips that state.
        member = keras.models.clone_model(trained)
        member.set_weights(trained.get_weights())
        member.name = f"member_{i}"  # nested models need names of their own
        out = member(inputs)
        outputs.append(out if isinstance(out, (list, tuple)) else [out])
    names = ["logits", FRAME_OUTPUT][: len(outputs[0])]
    averaged = [keras.layers.Average(name=name)([out[k] for out in outputs]) for k, name in enumerate(names)]
    return keras.Model(inputs, averaged if len(averaged) == 2 else averaged[0], name="callwatch_ensemble")


def has_frames(model: keras.Model) -> bool:
    """True when the model has the frame output (a second output, :data:`FRAME_OUTPUT`)."""
    return len(model.outputs) == 2


def frame_layout(
    model: keras.Model, *, params: FeatureParams, step_frames: int, hop_s: float
) -> FrameLayout | None:
    """Where ``model``'s frame output lies in time for windows every ``hop_s`` seconds of
    ``params``' frames, ``step_frames`` spectrogram frames a step (:func:`step_frames` of the
    model's config, or a run's ``frames.step_frames``); None for a model without it."""
    if not has_frames(model):
        return None
    return FrameLayout.at_hop(
        steps=int(model.output_shape[1][1]),
        step_frames=step_frames,
        frame_rate=params.frame_rate,
        hop_s=hop_s,
    )


def int8_size_estimate(model: keras.Model) -> int:
    """Bytes the weights take once int8 (one byte per weight; BatchNorm folds away; biases are
    int32). An estimate for the size budget printed at build time; convert measures the file."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            continue
        for weight in layer.weights:
            size = 1
            for dim in weight.shape:
                size *= int(dim)
            total += size * (4 if "bias" in weight.name else 1)
    return total


def describe(model: keras.Model) -> str:
    """One line: input shape, parameters, estimated int8 size."""
    shapes = model.output_shape if has_frames(model) else [model.output_shape]
    outputs = " + ".join(str(tuple(shape[1:])) for shape in shapes)
    return (f"model: input {tuple(model.input_shape[1:])}, output {outputs} logits, "
            f"{model.count_params():,} parameters, about {int8_size_estimate(model) / 1024:.1f} KiB as int8")
