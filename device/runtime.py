"""Stage: runtime. A LiteRT interpreter running the bundle's model on one window at a time.

Contract: :class:`Classifier` takes a (frames, n_mels) window (float32 dB or already quantized
to the model's input dtype) and returns (n_labels,) float32 probabilities in 0..1. Not
thread-safe: one owner, the worker (replay: one per process).

Uses ``ai_edge_litert`` (the LiteRT wheel), or ``tflite_runtime`` where that is what is
installed (older Raspberry Pi OS images). With ``detection.delegate: edgetpu`` it loads the
Edge TPU delegate (``libedgetpu.so.1``) and the bundle's ``edgetpu`` variant when it has one;
when the delegate cannot be loaded it warns and runs the plain int8 model on the CPU.

A model with a frame output (model.json ``frames``) has a second output tensor, (1, steps, 1,
n_labels): :meth:`Classifier.predict` reads it too, into :attr:`Classifier.last_frames`.
Outputs are told apart by shape, not by their order in the file.

Quantization comes from the model itself (the tensors' scale and zero point), which
:func:`load_classifier` checks against model.json: a disagreement is a :class:`BundleError`.
"""

from __future__ import annotations

import ctypes
import logging
import time
from pathlib import Path

import numpy as np

from device.bundle import Bundle, BundleError, Quantization

log = logging.getLogger(__name__)

EDGETPU_LIBRARY = "libedgetpu.so.1"


def _interpreter_api():
    """(Interpreter class, load_delegate function) of whichever LiteRT runtime is installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter, load_delegate
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter, load_delegate
        except ImportError:
            raise BundleError(
                "no LiteRT runtime: install ai-edge-litert (pip install ai-edge-litert) "
                "or tflite-runtime"
            ) from None
    return Interpreter, load_delegate


class Classifier:
    """One model, one window per call. Not thread-safe: one owner (the worker).

    Input: a window of log-mel frames, shape (frames, n_mels), either float32 dB or already
    quantized with :meth:`quantize` (the worker quantizes each frame once, as it arrives).
    Output: probabilities, shape (n_labels,), float32 in 0..1; with a frame output, also
    :attr:`last_frames`, (steps, n_labels) float32 in 0..1, of the same window.
    """

    def __init__(self, interpreter, bundle: Bundle, *, delegate: str) -> None:
        self.bundle = bundle
        self.delegate = delegate
        """'edgetpu' or 'cpu': what actually runs the model."""
        self._interpreter = interpreter
        inp = interpreter.get_input_details()[0]
        out, frames_out = _outputs(interpreter, bundle)
        self._input_index = inp["index"]
        self._output_index = out["index"]
        self.input_dtype = np.dtype(inp["dtype"])
        self._input_shape = tuple(int(x) for x in inp["shape"])
        scale, zero = inp["quantization"]
        self.input_quantization = Quantization(float(scale), int(zero)) if scale else None
        scale, zero = out["quantization"]
        self.output_quantization = Quantization(float(scale), int(zero)) if scale else None
        self._sigmoid = bundle.output_kind == "logits"
        if self.input_quantization is not None:
            info = np.iinfo(self.input_dtype)
            self._q_low, self._q_high = info.min, info.max
            self._inv_scale = np.float32(1.0 / self.input_quantization.scale)
            self._zero = np.float32(self.input_quantization.zero_point)
        self._table = None
        output_dtype = np.dtype(out["dtype"])
        if self.output_quantization is not None and output_dtype.itemsize == 1:
            # An 8-bit output has 256 possible values: dequantize (and squash) them once, then
            # each window's scores are one table lookup instead of six array operations.
            raw = np.arange(256, dtype=np.uint8).view(output_dtype)
            self._table = self._scores(raw)
        self.last_frames: np.ndarray | None = None
        """Frame probabilities (steps, n_labels) of the last window, when the model has them."""
        self._frames_index = None
        if frames_out is not None:
            self._frames_index = frames_out["index"]
            self._frames_shape = (int(frames_out["shape"][1]), len(bundle.labels))
            self._frames_q = frames_out["quantization"]
            self._frames_table = None
            if np.dtype(frames_out["dtype"]).itemsize == 1:  # 256 values: one lookup, as above
                self._frames_table = self._frame_scores(np.arange(256, dtype=np.uint8).view(frames_out["dtype"]))

    def _frame_scores(self, raw: np.ndarray) -> np.ndarray:
        """Raw frame output values (logits, maybe quantized) -> probabilities, float32."""
        values = raw.astype(np.float32)
        scale, zero = self._frames_q
        if scale:
            values = (values - np.float32(zero)) * np.float32(scale)
        return (1.0 / (1.0 + np.exp(-values))).astype(np.float32)

    def _scores(self, raw: np.ndarray) -> np.ndarray:
        """Raw output values -> probabilities, float32."""
        values = raw.astype(np.float32)
        if self.output_quantization is not None:
            values -= self.output_quantization.zero_point
            values *= self.output_quantization.scale
        if self._sigmoid:
            values = (1.0 / (1.0 + np.exp(-values))).astype(np.float32)
        return values

    def quantize(self, frames: np.ndarray) -> np.ndarray:
        """float32 dB frames (any leading shape, n_mels last) -> the model's input dtype."""
        if self.input_quantization is None:
            return frames.astype(self.input_dtype, copy=False)
        q = frames * self._inv_scale
        q += self._zero
        np.rint(q, out=q)
        # maximum + minimum: np.clip's Python wrapper costs more than both ufuncs together.
        np.maximum(q, self._q_low, out=q)
        np.minimum(q, self._q_high, out=q)
        return q.astype(self.input_dtype)

    def predict(self, window: np.ndarray) -> np.ndarray:
        """window: (frames, n_mels) float32 dB or input-dtype values. Returns (n_labels,) 0..1."""
        if window.dtype != self.input_dtype:
            window = self.quantize(window)
        self._interpreter.set_tensor(self._input_index, window.reshape(self._input_shape))
        self._interpreter.invoke()
        raw = self._interpreter.get_tensor(self._output_index).reshape(-1)
        if self._frames_index is not None:
            frames = self._interpreter.get_tensor(self._frames_index).reshape(self._frames_shape)
            self.last_frames = (self._frames_table[frames.view(np.uint8)] if self._frames_table is not None
                                else self._frame_scores(frames))
        if self._table is not None:
            return self._table[raw.view(np.uint8)]
        return self._scores(raw)

    def timed_predict(self, window: np.ndarray) -> tuple[np.ndarray, float]:
        """:meth:`predict` and its wall time in seconds."""
        t0 = time.perf_counter()
        scores = self.predict(window)
        return scores, time.perf_counter() - t0


def _outputs(interpreter, bundle: Bundle) -> tuple[dict, dict | None]:
    """(window output, frame output or None) of the interpreter, told apart by shape: the frame
    output is the one of model.json's ``frames.shape``."""
    outs = interpreter.get_output_details()
    declared = bundle.frames.get("shape") if bundle.frames else None
    if len(outs) == 2 and declared is not None:
        is_frames = [[int(x) for x in o["shape"]] == list(declared) for o in outs]
        if sum(is_frames) == 1:
            return outs[is_frames.index(False)], outs[is_frames.index(True)]
    return outs[0], None


def _check(interpreter, bundle: Bundle, path: Path) -> None:
    """Refuse a model file whose tensors disagree with model.json."""
    inp = interpreter.get_input_details()
    out = interpreter.get_output_details()
    expected = 2 if bundle.frames else 1
    if len(inp) != 1 or len(out) != expected:
        raise BundleError(
            f"{path}: expected one input and {expected} output tensor(s) (model.json "
            f"{'declares' if bundle.frames else 'declares no'} frame output), got {len(inp)} and {len(out)}"
        )
    out, frames_out = _outputs(interpreter, bundle)
    if bundle.frames and frames_out is None:
        raise BundleError(f"{path}: no output of shape {bundle.frames['shape']} (model.json frames.shape)")
    if frames_out is not None:
        declared_q = _quantization_of(bundle.frames.get("quantization"))
        scale, zero = frames_out["quantization"]
        actual_q = Quantization(float(scale), int(zero)) if scale else None
        if np.dtype(frames_out["dtype"]).name != bundle.frames["dtype"] or not _same(actual_q, declared_q):
            raise BundleError(
                f"{path}: frame output {np.dtype(frames_out['dtype']).name} {actual_q} but model.json "
                f"says {bundle.frames['dtype']} {declared_q}"
            )
    inp = inp[0]
    shape = tuple(int(x) for x in inp["shape"])
    if shape != bundle.input_shape:
        raise BundleError(
            f"{path}: input shape {list(shape)} but model.json says {list(bundle.input_shape)}"
        )
    if np.dtype(inp["dtype"]).name != bundle.input_dtype:
        raise BundleError(
            f"{path}: input dtype {np.dtype(inp['dtype']).name} but model.json says "
            f"{bundle.input_dtype}"
        )
    if np.dtype(out["dtype"]).name != bundle.output_dtype:
        raise BundleError(
            f"{path}: output dtype {np.dtype(out['dtype']).name} but model.json says "
            f"{bundle.output_dtype}"
        )
    n_out = int(np.prod(out["shape"]))
    if n_out != len(bundle.labels):
        raise BundleError(
            f"{path}: {n_out} outputs but model.json names {len(bundle.labels)} labels"
        )
    for name, tensor, declared in (
        ("input", inp, bundle.input_quantization),
        ("output", out, bundle.output_quantization),
    ):
        scale, zero = tensor["quantization"]
        actual = Quantization(float(scale), int(zero)) if scale else None
        if not _same(actual, declared):
            raise BundleError(
                f"{path}: {name} quantization {actual} but model.json says {declared}"
            )


def _quantization_of(value) -> Quantization | None:
    return Quantization(float(value["scale"]), int(value["zero_point"])) if value else None


def _same(actual: Quantization | None, declared: Quantization | None) -> bool:
    if actual is None or declared is None:
        return actual is None and declared is None
    return bool(np.isclose(actual.scale, declared.scale, rtol=1e-5)) and actual.zero_point == declared.zero_point


def load_classifier(bundle: Bundle, *, delegate: str = "cpu", num_threads: int = 1) -> Classifier:
    """Load the bundle's model into an interpreter, on the Edge TPU when asked and possible."""
    Interpreter, load_delegate = _interpreter_api()
    if delegate == "edgetpu":
        path = bundle.variant_path("edgetpu") or bundle.model_path
        try:
            # The runtime's Delegate object, when it cannot open the library, prints a stray
            # "Exception ignored ... AttributeError" traceback as it is collected: ask the
            # dynamic loader first, so a missing library is one warning line.
            ctypes.CDLL(EDGETPU_LIBRARY)
            tpu = load_delegate(EDGETPU_LIBRARY)
            interpreter = Interpreter(
                model_path=str(path), experimental_delegates=[tpu], num_threads=num_threads
            )
            interpreter.allocate_tensors()
            _check(interpreter, bundle, path)
            return Classifier(interpreter, bundle, delegate="edgetpu")
        except (OSError, ValueError, RuntimeError) as exc:
            log.warning(
                "Edge TPU unavailable (%s); running the int8 model on the CPU",
                " ".join(str(exc).split()),
            )
    # The CPU runs the plain int8 model even when --model named the Edge TPU variant.
    path = bundle.model_path.parent / bundle.manifest.get("model_file", bundle.model_path.name)
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise BundleError(
            f"{path}: LiteRT cannot load the model ({' '.join(str(exc).split())})"
        ) from None
    _check(interpreter, bundle, path)
    return Classifier(interpreter, bundle, delegate="cpu")
