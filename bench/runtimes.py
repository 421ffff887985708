"""LiteRT kernels: XNNPACK (ai_edge_litert's default) against TFLite's builtin int8 kernels.

ai_edge_litert applies its XNNPACK delegate to int8 models; tflite_runtime 2.14 (older Pi OS
images, NumPy < 2) runs the builtin kernels, which ai_edge_litert also runs when asked
(``OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES``): both give the same raw outputs bit for
bit (checked by hand with tflite_runtime 2.14 in a NumPy 1.26 venv; README, "Runtimes"). This
measures, on every window of a recording at a 0.5 s hop: CPU per window of each (best of 5),
how many windows' raw outputs differ and by how many quantization steps, and how many events
the device's detector makes from each.

Model: ``runs/capuchin`` or ``runs/demo`` (scripts/demo) when there, else bench.daemon's untrained model of the default
architecture. Audio: a real Capuchinbird soundscape when ../shared/data is there.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench import preamble

NAME = "runtimes"
REPO = Path(__file__).resolve().parents[1]


def run() -> str:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from bench.install import model_bundle, recording
    from device.audio import load_audio
    from device.bundle import load_bundle
    from device.features import logmel
    from device.runtime import load_classifier

    with tempfile.TemporaryDirectory(prefix="callwatch-bench-runtimes-") as tmp:
        model, model_note = model_bundle(Path(tmp))
        audio, audio_note = recording(Path(tmp))
        bundle = load_bundle(model)
        classifier = load_classifier(bundle)
        frames = logmel(load_audio(audio, bundle.features.sample_rate), bundle.features)
        n = bundle.input_shape[1]
        hop = max(1, round(0.5 * bundle.features.sample_rate / bundle.features.hop_length))
        windows = np.stack([classifier.quantize(frames[i:i + n]) for i in range(0, len(frames) - n + 1, hop)])

        def outputs(**kwargs) -> tuple[np.ndarray, float]:
            interpreter = Interpreter(model_path=str(bundle.model_path), num_threads=1, **kwargs)
            interpreter.allocate_tensors()
            inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
            best = float("inf")
            for _ in range(5):
                rows = []
                began = time.process_time()
                for window in windows:
                    interpreter.set_tensor(inp["index"], window.reshape(inp["shape"]))
                    interpreter.invoke()
                    rows.append(interpreter.get_tensor(out["index"]).reshape(-1).astype(int))
                best = min(best, (time.process_time() - began) / len(windows))
            return np.array(rows), best

        xnnpack, xnnpack_s = outputs()
        builtin, builtin_s = outputs(experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    steps = np.abs(xnnpack - builtin)
    differ = int((steps > 0).any(axis=1).sum())
    q = classifier.output_quantization
    score = 1.0 / (1.0 + np.exp(-(np.array([xnnpack, builtin]) - q.zero_point) * q.scale))
    return "\n".join([
        "## LiteRT kernels: XNNPACK and builtin int8",
        "",
        preamble(NAME),
        f"{len(windows)} windows of {audio_note} at a 0.5 s hop, {model_note}.",
        "",
        "| kernels | runtime | CPU per window, ms |",
        "|---|---|---|",
        f"| XNNPACK (default) | ai_edge_litert | {xnnpack_s * 1e3:.3f} |",
        f"| builtin int8 | ai_edge_litert without default delegates = tflite_runtime 2.14 | {builtin_s * 1e3:.3f} |",
        "",
        f"Windows whose raw output differs: {differ} of {len(windows)}, by at most "
        f"{int(steps.max())} quantization step(s) ({q.scale:.4g} in logits each); largest score "
        f"difference {float(np.abs(score[0] - score[1]).max()):.4f}. XNNPACK takes "
        f"{100 * (1 - xnnpack_s / builtin_s):.0f} % less CPU per window.",
        "",
    ])
