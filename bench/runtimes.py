"""LiteRT kernels: XNNPACK (ai_edge_litert's default) against TFLite's builtin int8 kernels.

ai_edge_litert applies its XNNPACK delegate to int8 models; tflite_runtime 2.14 (older Pi OS
images, NumPy < 2) runs the builtin kernels, which ai_edge_litert also runs when asked
(``OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES``): both give the same raw outputs bit for
bit (checked by hand with tflite_runtime 2.14 in a NumPy 1.26 venv; README, "Runtimes"). For
each bundle this measures: CPU per window of each (every output read; the least of
:data:`TIMINGS` passes, the kernels taking turns) on one recording at a 0.5 s hop; on every window of the recordings, how many windows' raw outputs
differ and by how many quantization steps, for the window output and (a frame head) the frame
output; and the events the device's detector (:class:`device.detector.Detector`, the bundle's
event rule and thresholds, the default detection settings) makes from each kernel's scores.

Models: :data:`bench._models.DEVICE_BUNDLES` (the default frame head ``runs/demo``, the window
rule ``runs/demo_max``, ``runs/capuchin``) when there, else an untrained int8 model of the
schema's default architecture, the frame head (bench._models.architecture_bundle). Audio: the
first real Capuchinbird soundscapes when ../shared/data is there (CPU on the first one), else
synthetic audio.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path

from bench import preamble

NAME = "runtimes"
REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
HOP_S = 0.5
RECORDINGS = 10
"""Soundscapes whose windows are compared and whose events are counted."""
TIMINGS = 15
"""Passes over the first file's windows per kernel, the kernels taking turns."""


def recordings(folder: Path) -> tuple[list[Path], str]:
    """The first :data:`RECORDINGS` Capuchinbird soundscapes, else one synthetic file."""
    mp3s = sorted((DATA / "capuchin" / "recordings").glob("recording_*.mp3"))[:RECORDINGS]
    if mp3s:
        return (
            mp3s,
            f"{len(mp3s)} real Capuchinbird soundscapes (180 s each, 48 kHz stereo MP3, ../shared/data)",
        )
    from bench.install import recording

    path, note = recording(folder)
    return [path], note


def bundles(folder: Path) -> dict[str, Path]:
    """Row name -> bundle folder."""
    from bench._models import DEVICE_BUNDLES, architecture_bundle, architecture_note, device_bundles

    found = {
        f"`{name}`, {DEVICE_BUNDLES[name[5:]]}": path.parent
        for name, path in device_bundles().items()
    }
    if found:
        return found
    untrained = architecture_bundle(folder / "architecture").parent
    return {f"untrained default architecture, {architecture_note()}": untrained}


def _cpu_per_window(interpreter, windows) -> float:
    """CPU seconds per window of one pass: set the input, invoke, read every output."""
    inp = interpreter.get_input_details()[0]
    outs = interpreter.get_output_details()
    began = time.process_time()
    for window in windows:
        interpreter.set_tensor(inp["index"], window.reshape(inp["shape"]))
        interpreter.invoke()
        for o in outs:
            interpreter.get_tensor(o["index"])
    return (time.process_time() - began) / len(windows)


def compare(bundle_dir: Path, audio: list[Path]) -> dict:
    """CPU per window of each kernel, raw output differences and the events of each."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from device.audio import load_audio
    from device.bundle import load_bundle
    from device.config import validate
    from device.detector import Detector, detector_params
    from device.features import logmel
    from device.runtime import Classifier, load_classifier

    bundle = load_bundle(bundle_dir)
    quantizer = load_classifier(bundle)
    n = bundle.input_shape[1]
    hop = max(1, round(HOP_S * bundle.features.frame_rate))
    hop_s = hop / bundle.features.frame_rate
    per_file = []
    for path in audio:
        frames = logmel(load_audio(path, bundle.features.sample_rate), bundle.features)
        per_file.append(
            np.stack(
                [quantizer.quantize(frames[i : i + n]) for i in range(0, len(frames) - n + 1, hop)]
            )
        )
    kernels = {
        "xnnpack": {},
        "builtin": {
            "experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        },
    }
    cfg = validate({"detection": {"hop_s": HOP_S}})
    params = detector_params(
        labels=bundle.labels,
        bundle_thresholds=bundle.event_thresholds(),
        detection=cfg.detection,
        trims=bundle.extent_trims(hop_s),
    )
    out: dict = {"windows": sum(len(w) for w in per_file), "cpu_windows": len(per_file[0])}
    raw: dict[str, list[list[np.ndarray]]] = {}
    scores: dict[str, np.ndarray] = {}
    interpreters = {}
    for kernel, kwargs in kernels.items():
        interpreters[kernel] = Interpreter(
            model_path=str(bundle.model_path), num_threads=1, **kwargs
        )
        interpreters[kernel].allocate_tensors()
    # The kernels take turns, TIMINGS times, each keeping its least: a pass is a tenth of a
    # second, and this shared machine has slow spells longer than that.
    for kernel in kernels:
        out[f"{kernel}_ms"] = float("inf")
    for _ in range(TIMINGS):
        for kernel, interpreter in interpreters.items():
            seconds = _cpu_per_window(interpreter, per_file[0])
            out[f"{kernel}_ms"] = min(out[f"{kernel}_ms"], seconds * 1e3)
    for kernel, interpreter in interpreters.items():
        outs = sorted(interpreter.get_output_details(), key=lambda o: int(np.prod(o["shape"])))
        # The device's classifier on this interpreter: window and frame scores, then events.
        classifier = Classifier(interpreter, bundle, delegate="cpu")
        rows, probabilities, events = [], [], []
        for windows in per_file:
            detector = Detector(params, hop_s=hop_s, frames=bundle.frame_layout(hop_s))
            found = []
            for k, window in enumerate(windows):
                p = classifier.predict(window)
                frame_p = classifier.last_frames
                rows.append(
                    [interpreter.get_tensor(o["index"]).astype(int).reshape(-1) for o in outs]
                )
                probabilities.append(
                    np.concatenate([p, frame_p.reshape(-1)]) if frame_p is not None else p
                )
                start = k * hop_s
                found += detector.update(start, start + bundle.window_s, p, frame_p)
            found += detector.finish()
            events.append(
                Counter(
                    (d.label, round(d.start_s, 3), round(d.end_s, 3)) for d in found if d.closed
                )
            )
        raw[kernel], scores[kernel], out[f"{kernel}_events"] = rows, np.array(probabilities), events
    for j, name in enumerate(["window", "frames"][: len(outs)]):
        steps = np.array(
            [np.abs(a[j] - b[j]).max() for a, b in zip(raw["xnnpack"], raw["builtin"])]
        )
        out[name] = {
            "differ": int((steps > 0).sum()),
            "max_steps": int(steps.max()),
            "scale": float(outs[j]["quantization"][0]),
        }
    out["max_score_diff"] = float(np.abs(scores["xnnpack"] - scores["builtin"]).max())
    out["same_events"] = sum(
        sum((a & b).values()) for a, b in zip(out["xnnpack_events"], out["builtin_events"])
    )
    for kernel in kernels:
        out[f"{kernel}_events"] = sum(sum(c.values()) for c in out[f"{kernel}_events"])
    out["rule"] = "frames" if bundle.frame_rule else "window scores"
    return out


def run() -> str:
    with tempfile.TemporaryDirectory(prefix="callwatch-bench-runtimes-") as tmp:
        audio, audio_note = recordings(Path(tmp))
        results = {name: compare(path, audio) for name, path in bundles(Path(tmp)).items()}
    first = next(iter(results.values()))
    lines = [
        "## LiteRT kernels: XNNPACK and builtin int8",
        "",
        preamble(NAME),
        f"Audio: {audio_note}, every window at a {HOP_S} s hop ({first['windows']} windows). CPU "
        f"per window: the {first['cpu_windows']} windows of the first file, every output read, "
        f"the least of {TIMINGS} passes, the two kernels taking turns. Raw outputs compared window by window; a score is the sigmoid of the "
        "dequantized output, as the device computes it. Events: the device's detector "
        "(`device.detector.Detector`: the bundle's event rule and thresholds, the default "
        "detection settings) fed each kernel's scores, file by file. Bundles:",
        "",
        *[f"- {name}" for name in results],
        "",
        "| bundle | events from | XNNPACK (ai_edge_litert default), ms per window "
        "| builtin int8 (= tflite_runtime 2.14), ms per window | XNNPACK saves "
        "| windows whose window output differs (most steps) | windows whose frame output differs (most steps) "
        "| largest score difference | events XNNPACK / builtin / identical |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        short = name.split(",")[0]
        w = r["window"]
        f = r.get("frames")
        frames_cell = f"{f['differ']} ({f['max_steps']})" if f else "no frame output"
        lines.append(
            f"| {short} | {r['rule']} | {r['xnnpack_ms']:.3f} | {r['builtin_ms']:.3f} "
            f"| {100 * (1 - r['xnnpack_ms'] / r['builtin_ms']):.0f} % "
            f"| {w['differ']} ({w['max_steps']}) | {frames_cell} | {r['max_score_diff']:.4f} "
            f"| {r['xnnpack_events']} / {r['builtin_events']} / {r['same_events']} |"
        )
    lines += [
        "",
        "One quantization step is "
        + "; ".join(
            f"{name.split(',')[0]} {r['window']['scale']:.4g}"
            + (f" (frames {r['frames']['scale']:.4g})" if "frames" in r else "")
            for name, r in results.items()
        )
        + " in logits. An event is identical when its label, start and end agree to the millisecond.",
        "",
    ]
    return "\n".join(lines)
