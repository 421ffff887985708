"""python -m device --plot FILE[:START-END]: what the detector heard, as a PNG.

The chosen stretch of a recording (seconds; the whole file without a range) is analysed by the
replay pipeline by itself, then drawn: the log-mel spectrogram the model sees on top, each
label's window scores below with its threshold (and the threshold minus the hysteresis, where
an event ends), and the events as shaded spans on both. Times are seconds in the file.

matplotlib is a workstation dependency (``pip install .[workstation]``), never on the device;
without it the command says so in one line (exit status 2).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile

from device.audio import stream_audio
from device.config import Config
from device.detector import detector_params
from device.features import logmel
from device.recording import Recording

if TYPE_CHECKING:
    from device.replay import ReplaySettings
    from device.runtime import Classifier


class PlotError(Exception):
    """Bad --plot argument, unreadable file or no matplotlib; one line (exit status 2)."""


def parse_plot_spec(spec: str) -> tuple[Path, float | None, float | None]:
    """``FILE``, ``FILE:START-END`` or ``FILE:START-`` (seconds) -> (file, start, end)."""
    m = re.fullmatch(r"(.+?):(\d+(?:\.\d*)?)-(\d+(?:\.\d*)?)?", spec)
    if m and not Path(spec).exists():
        path, start, end = Path(m.group(1)), float(m.group(2)), m.group(3)
        end = float(end) if end else None
        if end is not None and end <= start:
            raise PlotError(f"--plot: END must be after START in {spec!r}")
    else:
        path, start, end = Path(spec), None, None
    if not path.is_file():
        raise PlotError(f"--plot: {path}: no such file")
    return path, start, end


def plot_file(spec: str, *, settings: ReplaySettings, cfg: Config, classifier: Classifier,
              out: Path | None = None) -> Path:
    """Draw the PNG for ``spec`` (see :func:`parse_plot_spec`); returns its path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError(
            "--plot needs matplotlib, which is workstation-only (pip install .[workstation])"
        ) from None
    from device.replay import analyse_file, preload

    path, start, end = parse_plot_spec(spec)
    params = classifier.bundle.features
    rate = params.sample_rate
    audio = np.concatenate(list(stream_audio(path, rate)) or [np.zeros(0, np.float32)])
    first = round((start or 0.0) * rate)
    audio = audio[first : None if end is None else round(end * rate)]
    if not len(audio):
        raise PlotError(f"--plot: {path} has no audio in {spec!r}")
    offset = first / rate
    with tempfile.TemporaryDirectory(prefix="callwatch-plot-") as tmp:
        piece = Path(tmp) / "piece.wav"
        soundfile.write(piece, audio, rate, subtype="FLOAT")
        settings = replace(settings, scores=True, clips_dir=None, realtime=False)
        preload(settings, cfg, classifier)
        result = analyse_file(Recording(str(piece), path.name, None, None, None, 0.0), settings)
    spec_db = logmel(audio, params)
    thresholds = {
        label: p.threshold
        for label, p in detector_params(
            labels=classifier.bundle.labels,
            bundle_thresholds=classifier.bundle.thresholds,
            detection=cfg.detection,
        ).items()
    }
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    duration = len(audio) / rate
    top.imshow(spec_db.T, origin="lower", aspect="auto", cmap="magma",
               extent=(offset, offset + duration, 0, params.n_mels))
    top.set_ylabel("mel band")
    top.set_title(f"{path.name}  {offset:.1f}-{offset + duration:.1f} s")
    if result.scores is not None:
        mids = offset + (result.scores[:, 0] + result.scores[:, 1]) / 2
        for i, label in enumerate(result.labels):
            line = bottom.plot(mids, result.scores[:, 2 + i], label=label)[0]
            bottom.axhline(thresholds[label], color=line.get_color(), linestyle="--", linewidth=1)
            bottom.axhline(thresholds[label] - cfg.detection.hysteresis, color=line.get_color(),
                           linestyle=":", linewidth=1)
    for e in result.events:
        for ax in (top, bottom):
            ax.axvspan(offset + e.start_s, offset + e.end_s, color="cyan", alpha=0.2)
        bottom.text(offset + e.start_s, 1.02, e.label, fontsize="small")
    bottom.set_ylim(0, 1.1)
    bottom.set_ylabel("score")
    bottom.set_xlabel("seconds in the file")
    bottom.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    if out is None:
        out = Path(f"{path.stem}_{offset:.0f}-{offset + duration:.0f}s.callwatch.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
