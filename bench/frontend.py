"""The log-mel front end: CPU time per hour of 16 kHz audio, batch and streaming, beside librosa.

Input: 10 minutes of seeded noise plus a repeating chirp at 16 kHz (the front end's cost does
not depend on what the audio contains), times scaled to one hour. Memory: the peak of what the
streaming front end allocates (tracemalloc), and the peak RSS of a process that does nothing
but stream 10 minutes through it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

from bench import best_cpu_seconds, preamble

NAME = "frontend"
SECONDS = 600
"""Length of the test signal, s; figures are scaled to one hour."""
TARGET_CPU_S_PER_HOUR = 1.0
"""Issue #2: streaming front end <= 1.0 CPU-second per hour of 16 kHz audio on one core."""
REPO = Path(__file__).resolve().parents[1]


def test_signal(seconds: float, sample_rate: int):
    import numpy as np

    rng = np.random.default_rng(2)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    sweep = t % 5.0  # a 5 s chirp, 200 Hz -> 6 kHz, over and over
    chirp = np.sin(2 * np.pi * (200 * sweep + 580 * sweep**2))
    return (0.05 * rng.standard_normal(len(t)) + 0.2 * chirp).astype(np.float32)


def stream_through(x, params, chunk: int) -> int:
    """Push ``x`` in ``chunk``-sample pieces, as the daemon does; returns the frame count."""
    from device.features import StreamingLogMel

    stream = StreamingLogMel(params)
    for start in range(0, len(x), chunk):
        stream.push(x[start : start + chunk])
    return stream.frames_emitted


def librosa_logmel(x, params):
    import librosa

    power = librosa.feature.melspectrogram(
        y=x, sr=params.sample_rate, n_fft=params.n_fft, win_length=params.win_length,
        hop_length=params.hop_length, window="hann", center=False, power=2.0,
        n_mels=params.n_mels, fmin=params.fmin, fmax=params.fmax, htk=False, norm="slaney",
    )
    return librosa.power_to_db(power, ref=1.0, amin=params.log_floor, top_db=None).T


def streaming_peak_kib(x, params, chunk: int) -> float:
    """Peak of what streaming allocates (input excluded, output frames not kept), KiB."""
    stream_through(x[: 10 * chunk], params, chunk)  # warm caches (window, filterbank)
    tracemalloc.start()
    stream_through(x, params, chunk)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 1024


def peak_rss_mib(code: str) -> float:
    """Peak RSS of a fresh Python process running ``code`` from the repository root, MiB."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
    report = (
        "\nstatus = open('/proc/self/status').read()\n"
        "print(next(l.split()[1] for l in status.splitlines() if l.startswith('VmHWM')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code + report], cwd=REPO, capture_output=True,
                         text=True, check=True)
    return int(out.stdout) / 1024


STREAM_10_MIN = textwrap.dedent(
    f"""
    import numpy as np
    from device.features import FeatureParams, StreamingLogMel
    stream, rng = StreamingLogMel(FeatureParams()), np.random.default_rng(0)
    for _ in range({SECONDS * 2}):  # 0.5 s chunks made one by one: the input is never held
        stream.push(rng.standard_normal(8000).astype(np.float32))
    """
)


def run() -> str:
    import numpy as np

    from device.features import FeatureParams, StreamingLogMel, logmel

    params = FeatureParams()
    x = test_signal(SECONDS, params.sample_rate)
    per_hour = 3600 / SECONDS
    hop = params.sample_rate // 2  # 0.5 s, the daemon's default detection.hop_s
    block = params.sample_rate // 20  # 0.05 s, the default audio callback block

    rows = [
        ("batch `logmel` (whole signal)", best_cpu_seconds(lambda: logmel(x, params))),
        ("streaming `StreamingLogMel`, 0.5 s pushes",
         best_cpu_seconds(lambda: stream_through(x, params, hop))),
        ("streaming `StreamingLogMel`, 0.05 s pushes",
         best_cpu_seconds(lambda: stream_through(x, params, block))),
        ("librosa 0.11 `melspectrogram` + `power_to_db` (float32)",
         best_cpu_seconds(lambda: librosa_logmel(x, params))),
    ]
    stream_cost = rows[1][1] * per_hour

    batch = logmel(x, params)
    stream = StreamingLogMel(params)
    streamed = np.concatenate([stream.push(x[i : i + hop]) for i in range(0, len(x), hop)])
    stream_vs_batch = float(np.abs(streamed - batch).max())
    librosa_vs_batch = float(np.abs(librosa_logmel(x, params) - batch).max())

    peak_kib = streaming_peak_kib(x, params, hop)
    rss = {
        "numpy": peak_rss_mib("import numpy"),
        "scipy.signal": peak_rss_mib("import numpy, scipy.signal"),
        "stream": peak_rss_mib(STREAM_10_MIN),
    }

    lines = [
        "## Log-mel front end",
        "",
        preamble(NAME),
        f"CPU time per hour of 16 kHz audio ({SECONDS / 60:.0f} min of noise and chirps, scaled "
        f"to an hour; best of 3), default `FeatureParams` ({params.n_mels} mels, n_fft "
        f"{params.n_fft}, hop {params.hop_length} = {params.frame_rate:.0f} frames/s):",
        "",
        "| front end | CPU s per hour of audio | x real time |",
        "|---|---:|---:|",
    ]
    for label, seconds in rows:
        cost = seconds * per_hour
        lines.append(f"| {label} | {cost:.2f} | {3600 / cost:,.0f} |")
    verdict = "met" if stream_cost <= TARGET_CPU_S_PER_HOUR else "NOT met"
    lines += [
        "",
        f"Target (issue #2): streaming at a 0.5 s hop <= {TARGET_CPU_S_PER_HOUR:.1f} CPU-s per "
        f"hour: **{verdict}** ({stream_cost:.2f}).",
        "",
        f"Same input, largest differences: streaming vs batch {stream_vs_batch:.1e} dB, "
        f"librosa vs ours {librosa_vs_batch:.1e} dB.",
        "",
        f"Memory while streaming at a 0.5 s hop: peak allocation {peak_kib:.0f} KiB "
        f"(tracemalloc; input excluded, frames handed on). Peak RSS of a process that streams "
        f"{SECONDS / 60:.0f} min through it: {rss['stream']:.0f} MiB, nearly all of it Python "
        f"with NumPy ({rss['numpy']:.0f} MiB): the front end uses NumPy's FFT and writes its Hann "
        f"window out, so SciPy (+{rss['scipy.signal'] - rss['numpy']:.0f} MiB for scipy.signal) "
        f"is never imported on the device (the resampler is NumPy too).",
    ]
    return "\n".join(lines) + "\n"
