"""Device cost of the events bench (:mod:`bench.events`): CPU seconds per hour of audio of the
demo and Capuchinbird bundles with and without the frame output (``bench.daemon``'s in-process
worker), and of the stitcher and frame rule alone.
"""

from __future__ import annotations

from pathlib import Path


def cost_rows(candidates: list[Path], *, repo: Path, hop_s: float) -> list[str]:
    """Device CPU per audio hour (bench.daemon's in-process worker) of the demo models, without
    and with the frame output (the stitcher and the frame rule run in the whole worker), and the
    stitcher and frame rule alone on an hour of windows."""
    from bench.daemon import pipeline_cpu
    from device.bundle import load_bundle

    runs = [run for run in candidates if (run / "model.json").is_file()]
    if not runs:
        return ["(not measured: no bundle)"]
    lines = [
        "| bundle | events from | front end | inference (ms per window) | front end + inference, target <= 2 "
        "| whole worker (ring, features, inference, stitcher, detector, queue) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    layout = None
    for run in runs:
        bundle = load_bundle(run)
        cpu = pipeline_cpu(run / "model.tflite")
        layout = bundle.frame_layout(hop_s) or layout
        both = cpu["front end"] + cpu["inference"]
        lines.append(
            f"| `{run.relative_to(repo)}` | {'frames (stitched)' if bundle.frame_rule else 'window scores'} "
            f"| {cpu['front end']:.2f} | {cpu['inference']:.2f} ({cpu['invoke_ms']:.3f}) "
            f"| {both:.2f} ({'met' if both <= 2.0 else 'not met'}) | {cpu['worker']:.2f} |"
        )
    if layout is not None:
        lines += [
            "",
            f"The stitcher and the frame rule alone (`device.detector.Detector` with the frame layout, fed "
            f"an hour of windows every {hop_s} s, low scores): {frame_rule_cpu(layout, hop_s=hop_s):.2f} CPU-s per audio hour.",
        ]
    return lines


def frame_rule_cpu(layout, *, hop_s: float) -> float:
    """CPU seconds of the stitcher + frame rule for one hour of windows every ``hop_s`` (best of 3)."""
    import numpy as np

    from bench import best_cpu_seconds
    from device.detector import Detector, DetectorParams

    windows = int(3600 / hop_s)
    frames = (np.random.default_rng(0).random((windows, layout.steps, 1)) * 0.3).astype(np.float32)

    def work() -> None:
        detector = Detector(
            {"call": DetectorParams(threshold=0.5, hysteresis=0.1)}, hop_s=hop_s, frames=layout
        )
        for k in range(windows):
            detector.update(k * hop_s, k * hop_s + 3.0, [0.1], frames[k])
        detector.finish()

    return best_cpu_seconds(work)
