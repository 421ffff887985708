"""Draw docs/events.png: how window scores become events, and what start and end mean.

    .venv/bin/python scripts/event_figure.py [--out docs/events.png]

Three calls (the last two 1.2 s apart), 3 s windows every 0.5 s, and an idealised model that
scores a window high when it holds at least half of a call (as training labels windows), and
each 0.32 s step of its frame output high when the step's centre is in a call. The events are
the device's own (``device.detector``), with the extent trims a bundle would carry, and by the
frame rule (steps stitched across windows). Needs matplotlib (the workstation profile).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from device.detector import DetectorParams, LabelDetector, detect_frames  # noqa: E402
from device.frames import FrameLayout  # noqa: E402

WINDOW_S, HOP_S, THRESHOLD = 3.0, 0.5, 0.5
CALLS = [(4.2, 4.9), (9.6, 10.2), (11.4, 12.0)]
LAYOUT = FrameLayout(steps=9, step_frames=16, frame_s=0.02, cell_frames=5)
"""The frame output of the default architecture (3 s windows, 0.32 s steps), 0.1 s cells."""
TRIMS = (2.55, 2.5)
"""Start and end trims as training calibrates them for this window and call length."""
DURATION_S = 16.0


def score(start: float) -> float:
    """An idealised model: high when the window holds at least half of a call."""
    held = max(min(e, start + WINDOW_S) - max(s, start) - 0.5 * (e - s) for s, e in CALLS)
    return 0.95 if held >= -1e-9 else 0.05


def frame_events():
    starts = np.arange(0, DURATION_S - WINDOW_S + 1e-9, HOP_S)
    step_s = LAYOUT.step_frames * LAYOUT.frame_s
    centres = starts[:, None] + (np.arange(LAYOUT.steps) + 0.5) * step_s
    frames = np.array([[0.95 if any(s <= t < e for s, e in CALLS) else 0.05 for t in row] for row in centres])
    return detect_frames(starts, frames, DetectorParams(threshold=THRESHOLD, hysteresis=0.1), layout=LAYOUT,
                         hop_s=HOP_S)


def events(start_trim: float, end_trim: float):
    detector = LabelDetector("call", DetectorParams(threshold=THRESHOLD, hysteresis=0.1, start_trim_s=start_trim,
                                                    end_trim_s=end_trim), hop_s=HOP_S)
    out = []
    for start in np.arange(0, DURATION_S - WINDOW_S + 1e-9, HOP_S):
        out += [d for d in detector.update(start, start + WINDOW_S, score(start)) if d.closed]
    return out + detector.finish()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "events.png"))
    args = parser.parse_args(argv)
    starts = np.arange(0, DURATION_S - WINDOW_S + 1e-9, HOP_S)
    fig, (ax_calls, ax_windows, ax_events) = plt.subplots(
        3, 1, figsize=(10, 6.8), sharex=True, gridspec_kw={"height_ratios": [0.8, 3, 1.4]})
    for s, e in CALLS:
        ax_calls.axvspan(s, e, color="tab:green", alpha=0.8)
        for ax in (ax_windows, ax_events):
            ax.axvspan(s, e, color="tab:green", alpha=0.12)
    ax_calls.set_yticks([])
    ax_calls.set_title("the calls (what an ecologist marks in Raven)", loc="left", fontsize=10)
    for k, start in enumerate(starts):
        fired = score(start) >= THRESHOLD
        ax_windows.plot([start, start + WINDOW_S], [k, k], lw=4, solid_capstyle="butt",
                        color="tab:red" if fired else "0.8")
        ax_windows.plot(start + WINDOW_S, k, "|", color="k", ms=6)
    ax_windows.set_yticks([])
    ax_windows.set_ylabel("model windows\n(one row per hop)")
    ax_windows.set_title(f"{WINDOW_S:.0f} s windows every {HOP_S} s; red: score >= threshold. The model has "
                         "the window's score at its end (|), so an event opens there and is published at once",
                         loc="left", fontsize=9)
    rows = [("windows' span (before)", events(0.0, 0.0), "0.5"),
            (f"event = span trimmed by {TRIMS[0]} / {TRIMS[1]} s (the bundle's extent rule)", events(*TRIMS),
             "tab:blue"),
            ("frame rule: the frame output's steps stitched across windows (pooling: time)", frame_events(),
             "tab:purple")]
    for y, (name, found, colour) in enumerate(rows):
        for d in found:
            ax_events.plot([d.start_s, d.end_s], [y, y], lw=8, solid_capstyle="butt", color=colour)
        ax_events.text(0.1, y + 0.32, name, fontsize=9, va="bottom")
    ax_events.set_ylim(-0.6, len(rows) + 0.1)
    ax_events.set_yticks([])
    ax_events.set_xlabel("seconds from the start of the source (start_s, end_s)")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
