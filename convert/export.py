"""Keras model -> TFLite flatbuffer (int8, float16 or float32), and the full-integer check.

Conversion goes through ``TFLiteConverter.from_keras_model``: with TF 2.21,
``from_concrete_functions`` produces a model that fails at invoke (READ_VARIABLE). The model is
exported as it is trained, ending in LOGITS: an int8 sigmoid output saturates (its top step is
about 0.996), so the device applies the sigmoid itself after dequantizing.

The batch axis is fixed to 1 (the device scores one window at a time) because the Edge TPU
compiler refuses dynamic-sized tensors.

A model with a frame output (``train.model``: ``pooling: time``) converts to a model with two
int8 outputs: the window logits (1, n_labels) and the frame logits (1, steps, 1, n_labels),
told apart by their rank (their order in the file is the converter's).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from convert import ConvertFailure, ConvertInputError

KINDS = ("int8", "float16", "float32")
# Tensor types a full-integer model may carry: int8 activations and weights, int32 biases and
# shape/axis operands (e.g. MEAN's axes). Anything floating means an op still runs in float.
INTEGER_TYPES = ("int8", "int32")


@dataclass(frozen=True)
class TensorIO:
    """Input and output of a converted model, as the interpreter reports them."""

    input_shape: tuple[int, ...]
    input_dtype: str
    input_quantization: tuple[float, int] | None
    """(scale, zero_point) with real = scale * (q - zero_point); None for float tensors."""
    output_shape: tuple[int, ...]
    output_dtype: str
    output_quantization: tuple[float, int] | None
    frames_shape: tuple[int, ...] | None = None
    """Shape of the frame output, (1, steps, 1, n_labels); None when the model has none."""
    frames_dtype: str | None = None
    frames_quantization: tuple[float, int] | None = None

    def frames_record(self, *, step_frames: int, frame_rate: float) -> dict | None:
        """model.json's ``frames`` for this model (None without a frame output)."""
        if self.frames_shape is None:
            return None
        q = self.frames_quantization
        return {"shape": list(self.frames_shape), "step_frames": int(step_frames),
                "step_s": round(step_frames / frame_rate, 6), "dtype": self.frames_dtype,
                "quantization": {"scale": q[0], "zero_point": q[1]} if q else None}


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Silence the converter: it prints a page of SavedModel signatures to stdout and C++
    progress lines to file descriptor 2. Yields the captured Python output (for errors)."""
    captured = io.StringIO()
    saved_fd = os.dup(2)
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(captured):
                yield captured
        finally:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)


def fixed_batch(model):
    """The same model with a batch axis of exactly 1 (shares the weights)."""
    import keras

    inputs = keras.Input(batch_shape=(1, *model.input_shape[1:]), dtype="float32")
    return keras.Model(inputs, model(inputs, training=False))


def export_tflite(model, *, kind: str, representative: np.ndarray | None = None) -> bytes:
    """Convert a Keras model to a TFLite flatbuffer.

    ``kind`` "int8": full-integer post-training quantization with int8 input and output and
    only TFLITE_BUILTINS_INT8 ops, calibrated on ``representative`` (float32 windows,
    (n, frames, n_mels, 1): training windows, never test data). "float16": float16 weights,
    float32 input/output. "float32": no quantization.
    """
    import tensorflow as tf

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    converter = tf.lite.TFLiteConverter.from_keras_model(fixed_batch(model))
    if kind == "int8":
        if representative is None or len(representative) == 0:
            raise ValueError("int8 conversion needs representative windows")

        def representative_dataset():
            for window in representative:
                yield [window[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    elif kind == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    try:
        with quiet():
            return converter.convert()
    except Exception as exc:  # the converter raises ConverterError and plain RuntimeErrors
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        if kind == "int8":
            raise ConvertInputError(
                f"model.keras: the int8 converter cannot map this model ({first}); use layers "
                "with int8 TFLite kernels (Conv2D, Dense, pooling, ReLU, BatchNormalization)"
            ) from None
        raise ConvertFailure(f"{kind} conversion failed: {first}") from None


def _interpreter(model_content: bytes):
    # Without the default XNNPACK delegate the op list shows the model's own ops, not a
    # DELEGATE node that swallowed them.
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    return Interpreter(
        model_content=model_content,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )


def ops_summary(model_content: bytes) -> list[tuple[str, tuple[str, ...]]]:
    """Each op of the model in execution order: (op name, dtypes of its input and output tensors)."""
    interpreter = _interpreter(model_content)
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    summary = []
    for op in interpreter._get_ops_details():  # the only API that lists ops; stable since TF 2.5
        tensors = [i for i in (*op["inputs"], *op["outputs"]) if i >= 0]
        summary.append((op["op_name"], tuple(dtypes[i] for i in tensors)))
    return summary


def float_ops(model_content: bytes) -> list[str]:
    """Names of the ops that touch a non-integer tensor, e.g. ["DEQUANTIZE", "SIN", "QUANTIZE"]."""
    return [name for name, dtypes in ops_summary(model_content) if any(d not in INTEGER_TYPES for d in dtypes)]


def check_full_integer(model_content: bytes) -> None:
    """Refuse a model with any float op or float input/output (exit code 2, naming the ops).

    The TFLITE_BUILTINS_INT8 converter does not always refuse an op without an int8 kernel:
    it may wrap it in DEQUANTIZE/QUANTIZE and run it in float, which the Edge TPU and the
    int8 speed budget cannot afford. So the converted model itself is inspected.
    """
    io_ = tensor_io(model_content)
    if io_.input_dtype != "int8" or io_.output_dtype != "int8" or io_.frames_dtype not in (None, "int8"):
        raise ConvertInputError(
            f"model.keras: converted input/output are {io_.input_dtype}/{io_.output_dtype}"
            f"{'/' + io_.frames_dtype if io_.frames_dtype else ''}, not int8"
        )
    bad = float_ops(model_content)
    if bad:
        # QUANTIZE/DEQUANTIZE only surround the culprits; name those first.
        culprits = [op for op in bad if op not in ("QUANTIZE", "DEQUANTIZE")] or bad
        names = ", ".join(sorted(set(culprits)))
        raise ConvertInputError(
            f"model.keras: op(s) {names} have no int8 kernel and would run in float; replace the "
            "layer(s) that make them (every op must be in TFLite's int8 set)"
        )


def tensor_io(model_content: bytes) -> TensorIO:
    """Shapes, dtypes and quantization of the model's input and outputs (the window output and,
    when there is one, the frame output)."""
    interpreter = _interpreter(model_content)
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    ranks = sorted(len(o["shape"]) for o in outputs)
    if len(inputs) != 1 or ranks not in ([2], [2, 4]):
        raise ConvertInputError(
            f"model.keras: needs one input and one output (plus a frame output), got {len(inputs)} "
            f"and {len(outputs)} of ranks {ranks}"
        )
    frames = [o for o in outputs if len(o["shape"]) == 4]
    outputs = [o for o in outputs if len(o["shape"]) == 2]

    def quantization(detail: dict) -> tuple[float, int] | None:
        scale, zero_point = detail["quantization"]
        return (float(scale), int(zero_point)) if scale else None

    return TensorIO(
        input_shape=tuple(int(x) for x in inputs[0]["shape"]),
        input_dtype=np.dtype(inputs[0]["dtype"]).name,
        input_quantization=quantization(inputs[0]),
        output_shape=tuple(int(x) for x in outputs[0]["shape"]),
        output_dtype=np.dtype(outputs[0]["dtype"]).name,
        output_quantization=quantization(outputs[0]),
        frames_shape=tuple(int(x) for x in frames[0]["shape"]) if frames else None,
        frames_dtype=np.dtype(frames[0]["dtype"]).name if frames else None,
        frames_quantization=quantization(frames[0]) if frames else None,
    )
