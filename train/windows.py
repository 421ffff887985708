"""Model windows cut out of cached log-mel features: crops, negatives, balance, evaluation tiles.

A window is ``frames = params.window_frames(window_s)`` consecutive frames of a recording's
log-mel features (frame ``i`` starts at ``i * hop_length`` samples), so a window starting at
``start_s`` is exactly what the device computes for that stretch of audio. Frames before the
start or after the end of a file are the dB floor, as the device's zero padding gives.

Cropping (training): an annotation shorter than the window lands wholly inside it; a longer
one is cropped inside the annotation; each epoch draws fresh positions, shifted by up to
``time_shift_s`` (never so far that less than half of a short call, or half of the window,
stays covered). A window is positive for a label when it covers half of an annotation of that
label or half of the window. Negatives come from negative clips and annotations, hard
negatives, and background stretches that touch no positive or ignored annotation. With
``negatives_beside_calls``, also the window just before and just after each call (jittered by
the time shift, overlapping at most a quarter of the call): tables on a fixed chunk grid call the
chunk beside a call background even when the call spills a little into it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from device.features import FeatureParams
from train.datasets import NEGATIVE, DatasetError, Recording


def floor_db(params: FeatureParams) -> float:
    """dB value of digital silence (the log floor): what padding frames hold."""
    return float(10 * np.log10(params.log_floor))


def merged_regions(recording: Recording, label: str) -> list[tuple[float, float]]:
    """Annotations of ``label`` with touching or overlapping ones merged (a run of 3 s chunks is one call)."""
    regions: list[list[float]] = []
    for a in sorted(recording.annotations, key=lambda a: a.start_s):
        if a.label != label:
            continue
        if regions and a.start_s <= regions[-1][1] + 1e-6:
            regions[-1][1] = max(regions[-1][1], a.end_s)
        else:
            regions.append([a.start_s, a.end_s])
    return [(s, e) for s, e in regions]


def window_labels(recording: Recording, start_s: float, window_s: float, labels: list[str]) -> tuple[np.ndarray, bool]:
    """(y, ambiguous): y[i] = 1 when the window covers half of a ``labels[i]`` annotation or half
    of the window; ambiguous when it touches one less than that, or touches an ignored stretch
    without being positive (such windows are left out of evaluation and of negatives)."""
    end_s = start_s + window_s
    y = np.zeros(len(labels), np.float32)
    ambiguous = False
    for i, label in enumerate(labels):
        for s, e in merged_regions(recording, label):
            overlap = min(e, end_s) - max(s, start_s)
            if overlap >= min(0.5 * (e - s), 0.5 * window_s) - 1e-6:
                y[i] = 1.0
            elif overlap > 1e-6:
                ambiguous = True
    if not y.any() and any(min(e, end_s) - max(s, start_s) > 1e-6 for s, e in recording.ignored):
        ambiguous = True
    return y, ambiguous and not y.any()


UNKNOWN = -1.0
"""Frame target: no loss on this step."""
SOMEWHERE = -2.0
"""Frame target: the label is somewhere in the window (a positive clip); the loss uses the
window's highest step."""


def frame_targets(recording: Recording, start_s: float, *, steps: int, step_s: float,
                  labels: list[str]) -> np.ndarray:
    """(steps, n_labels) float32 targets of the frame output for the window starting at
    ``start_s``: step t spans [start_s + t step_s, start_s + (t + 1) step_s)."""
    out = np.zeros((steps, len(labels)), np.float32)
    lo = start_s + np.arange(steps) * step_s
    hi = lo + step_s
    if recording.kind == "clips":
        clip_label = recording.annotations[0].label if recording.annotations else NEGATIVE
        for i, label in enumerate(labels):
            if clip_label == label:
                out[:, i] = SOMEWHERE
        return out
    for i, label in enumerate(labels):
        for s, e in merged_regions(recording, label):
            out[:, i] += np.clip(np.minimum(hi, e) - np.maximum(lo, s), 0.0, None) / step_s
    np.minimum(out, 1.0, out=out)
    for s, e in recording.ignored:
        touched = (np.minimum(hi, e) - np.maximum(lo, s) > 1e-6) & ~(out > 0.5).any(axis=1)
        out[touched] = UNKNOWN
    return out


def crop_range(start_s: float, end_s: float, *, window_s: float, shift_s: float, duration_s: float) -> tuple[float, float]:
    """Range of window starts, seconds, for an annotation [start_s, end_s)."""
    length = end_s - start_s
    if length <= window_s:
        slack = min(shift_s, length / 2)
        lo, hi = end_s - window_s - slack, start_s + slack
    else:
        slack = min(shift_s, window_s / 2)
        lo, hi = start_s - slack, end_s - window_s + slack
    if duration_s >= window_s:  # keep the window inside the file when the file allows
        lo, hi = min(max(lo, 0.0), duration_s - window_s), max(min(hi, duration_s - window_s), 0.0)
    else:
        lo, hi = min(max(lo, duration_s - window_s), 0.0), max(min(hi, 0.0), duration_s - window_s)
    return lo, max(lo, hi)


def free_intervals(recording: Recording, window_s: float,
                   besides: tuple[float, float] | None = None) -> list[tuple[float, float]]:
    """Ranges of window starts whose window touches no positive or ignored stretch (except the
    region ``besides``, when given: annotations inside it do not block)."""
    if not recording.unannotated_negative or recording.duration_s < window_s:
        return []
    blocked = sorted([(a.start_s, a.end_s) for a in recording.annotations if a.label != NEGATIVE]
                     + list(recording.ignored))
    if besides is not None:
        blocked = [(s, e) for s, e in blocked if not (s >= besides[0] - 1e-6 and e <= besides[1] + 1e-6)]
    intervals, cursor = [], 0.0
    for s, e in blocked + [(recording.duration_s + window_s, recording.duration_s + window_s)]:
        # starts t with [t, t + W) inside [cursor, s)
        if s - window_s >= cursor:
            intervals.append((cursor, min(s, recording.duration_s) - window_s))
        cursor = max(cursor, e)
    return [(lo, hi) for lo, hi in intervals if hi >= lo]


def crop(features: np.ndarray, start_frame: int, frames: int, floor: float) -> np.ndarray:
    """frames x n_mels slice starting at ``start_frame`` (may be negative), floor-padded."""
    out = np.full((frames, features.shape[1]), floor, np.float32)
    lo, hi = max(start_frame, 0), min(start_frame + frames, len(features))
    if hi > lo:
        out[lo - start_frame:hi - start_frame] = features[lo:hi]
    return out


@dataclass(frozen=True)
class WindowSet:
    """Fixed windows (validation, test, calibration) with where they came from."""

    x: np.ndarray
    """(N, frames, n_mels, 1) float32 log-mel dB."""
    y: np.ndarray
    """(N, n_labels) float32 0/1."""
    source: np.ndarray
    """(N,) str: recording name."""
    start_s: np.ndarray
    """(N,) float: window start, seconds from the start of the recording."""
    kind: np.ndarray
    """(N,) str: clips, selections or background."""

    def __len__(self) -> int:
        return len(self.y)


class WindowSampler:
    """Draws each epoch's training windows from the training recordings. Seeded per epoch."""

    def __init__(self, *, recordings: list[Recording], features: dict[str, np.ndarray], labels: list[str],
                 params: FeatureParams, window_s: float, shift_s: float, negatives_per_minute: list[float],
                 max_positive_ratio: float, min_windows: int = 0, negatives_beside_calls: bool = False,
                 context_frames: int = 0) -> None:
        """recordings: the training split. negatives_per_minute[i]: rate for recordings[i].
        context_frames: each window also carries this many frames before it (for a front end with
        state, :mod:`train.frontend`); before the file's start they repeat its first frame.
        min_windows: draw rounds of fresh crops until an epoch has at least this many windows.
        negatives_beside_calls: every epoch, also the windows just before and just after each
        annotated call in a long recording (when nothing else is annotated there; up to
        ``shift_s`` either way, taking in at most a quarter of the call) as negatives."""
        self.recordings, self.features, self.labels = recordings, features, labels
        self.params, self.window_s = params, window_s
        self.frames = params.window_frames(window_s)
        self.context = context_frames
        self.floor = floor_db(params)
        self.max_positive_ratio = max_positive_ratio
        self.min_windows = min_windows
        self.positives: list[tuple[int, float, float]] = []  # (recording, lo_s, hi_s) crop ranges
        self.negatives: list[tuple[int, float, float]] = []
        self.background: list[tuple[int, list[tuple[float, float]], int]] = []  # (rec, starts, per epoch)
        shift_s = min(shift_s, window_s / 2)
        for index, r in enumerate(recordings):
            for label in labels:
                for s, e in merged_regions(r, label):
                    self.positives.append((index, *crop_range(s, e, window_s=window_s, shift_s=shift_s,
                                                              duration_s=r.duration_s)))
            for a in r.annotations:
                if a.label == NEGATIVE:
                    self.negatives.append((index, *crop_range(a.start_s, a.end_s, window_s=window_s,
                                                              shift_s=shift_s, duration_s=r.duration_s)))
            intervals = free_intervals(r, window_s)
            if negatives_beside_calls:
                for s, e in (region for label in labels for region in merged_regions(r, label)):
                    # The window one over, jittered by the crops' time shift: it may take in up to
                    # a quarter of the call (a call's edge, as it often spills out of its chunk).
                    edge = min(shift_s, (e - s) / 4)
                    allowed = free_intervals(r, window_s, besides=(s, e))
                    for lo, hi in ((e - edge, e + shift_s), (s - window_s - shift_s, s - window_s + edge)):
                        beside = _clip_to(allowed, lo, hi)
                        if beside:
                            self.negatives.append((index, *beside))
            free_s = sum(hi - lo + window_s for lo, hi in intervals)
            count = round(negatives_per_minute[index] * free_s / 60)
            if intervals and count == 0 and negatives_per_minute[index] > 0:
                count = 1
            if count:
                self.background.append((index, intervals, count))
        self.mix_sources = [(i, iv) for i, iv, _ in self.background]
        self.mix_sources += [(i, [(lo, hi)]) for i, lo, hi in self.negatives]
        if not self.positives:
            raise DatasetError("train.split: the training split holds no positive annotations")
        if not self.negatives and not self.background:
            raise DatasetError("train.split: the training split holds no negatives (negative clips, "
                               "background or unannotated recording time)")

    @property
    def negatives_per_round(self) -> int:
        return len(self.negatives) + sum(count for _, _, count in self.background)

    @property
    def positives_per_round(self) -> int:
        """Positive windows per round: each positive once, oversampled (fresh crops) up to
        ``max_positive_ratio`` positives per negative; never fewer than there are positives."""
        return max(len(self.positives), round(self.max_positive_ratio * self.negatives_per_round))

    @property
    def rounds(self) -> int:
        """Rounds of sampling per epoch, to reach ``min_windows``."""
        return max(1, -(-self.min_windows // (self.positives_per_round + self.negatives_per_round)))

    @property
    def positives_per_epoch(self) -> int:
        return self.rounds * self.positives_per_round

    @property
    def negatives_per_epoch(self) -> int:
        return self.rounds * self.negatives_per_round

    def _draw(self, rng: np.random.Generator) -> list[tuple[int, float]]:
        """(recording index, start_s) of one epoch's windows."""
        return [pick for _ in range(self.rounds) for pick in self._draw_round(rng)]

    def _draw_round(self, rng: np.random.Generator) -> list[tuple[int, float]]:
        picks: list[tuple[int, float]] = []
        n_pos = self.positives_per_round
        order = np.concatenate([rng.permutation(len(self.positives))
                                for _ in range(-(-n_pos // len(self.positives)))])[:n_pos]
        for k in order:
            index, lo, hi = self.positives[k]
            picks.append((index, rng.uniform(lo, hi)))
        for index, lo, hi in self.negatives:
            picks.append((index, rng.uniform(lo, hi)))
        for index, intervals, count in self.background:
            picks.extend((index, start) for start in _uniform_in(intervals, count, rng))
        return picks

    def window(self, index: int, start_s: float) -> np.ndarray:
        """(context + frames, n_mels) float32 dB window of recording ``index`` starting at ``start_s``."""
        frame = round(start_s * self.params.frame_rate)
        out = crop(self.features[self.recordings[index].name], frame - self.context,
                   self.context + self.frames, self.floor)
        before = self.context - frame  # context rows before the file starts
        if 0 < before <= self.context:
            out[:before] = out[before]  # a smoother starting there holds the first frame's level
        return out

    def epoch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """x (N, context + frames, n_mels) float32 dB, y (N, n_labels) float32, unaugmented, shuffled."""
        x, y, _ = self.epoch_with_frames(rng, steps=0, step_frames=1)
        return x, y

    def epoch_with_frames(self, rng: np.random.Generator, *, steps: int,
                          step_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`epoch` (the same draw for the same generator) and the frame targets
        (N, steps, n_labels) of a frame output with ``step_frames`` spectrogram frames a step
        (:func:`frame_targets`; steps 0: none)."""
        picks = self._draw(rng)
        order = rng.permutation(len(picks))
        x = np.empty((len(picks), self.context + self.frames, self.params.n_mels), np.float32)
        y = np.zeros((len(picks), len(self.labels)), np.float32)
        f = np.zeros((len(picks), steps, len(self.labels)), np.float32)
        step_s = step_frames / self.params.frame_rate
        for row, k in enumerate(order):
            index, start = picks[k]
            x[row] = self.window(index, start)
            y[row] = window_labels(self.recordings[index], start, self.window_s, self.labels)[0]
            if steps:
                # The window starts on a whole frame (self.window rounds the same way).
                start = round(start * self.params.frame_rate) / self.params.frame_rate
                f[row] = frame_targets(self.recordings[index], start, steps=steps, step_s=step_s,
                                       labels=self.labels)
        return x, y, f

    def mixing_windows(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, context + frames, n_mels) background windows (negative material of the training split)."""
        out = np.empty((n, self.context + self.frames, self.params.n_mels), np.float32)
        if not self.mix_sources:
            out[:] = self.floor
            return out
        for row, k in enumerate(rng.integers(len(self.mix_sources), size=n)):
            index, intervals = self.mix_sources[k]
            out[row] = self.window(index, _uniform_in(intervals, 1, rng)[0])
        return out


def _clip_to(intervals: list[tuple[float, float]], lo: float, hi: float) -> tuple[float, float] | None:
    """The part of [lo, hi] inside one of ``intervals`` (the first that overlaps), or None."""
    for a, b in intervals:
        if max(a, lo) <= min(b, hi) + 1e-9:
            return max(a, lo), max(a, min(b, hi))
    return None


def _uniform_in(intervals: list[tuple[float, float]], count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` points uniformly spread over a union of closed intervals (zero-length ones allowed)."""
    widths = np.array([hi - lo for lo, hi in intervals]) + 1e-3
    chosen = rng.choice(len(intervals), size=count, p=widths / widths.sum())
    lo = np.array([intervals[k][0] for k in chosen])
    hi = np.array([intervals[k][1] for k in chosen])
    return lo + rng.random(count) * (hi - lo)


def tile_starts(duration_s: float, window_s: float, hop_s: float) -> np.ndarray:
    """Window starts covering a file at ``hop_s``; the last window ends at the file's end.
    A file shorter than one window gets one (padded) window at 0, as the device scores it."""
    if duration_s <= window_s:
        return np.zeros(1)
    starts = np.arange(0.0, duration_s - window_s + 1e-6, hop_s)
    if duration_s - window_s - starts[-1] > 1e-3 and hop_s < window_s:
        starts = np.append(starts, duration_s - window_s)
    return starts


def evaluation_windows(*, recordings: list[Recording], features: dict[str, np.ndarray], labels: list[str],
                       params: FeatureParams, window_s: float, clip_hop_s: float) -> WindowSet:
    """Deterministic windows of held-out recordings.

    Clips: windows every ``clip_hop_s`` (a clip's score is the max over them), labelled by the
    clip. Long recordings and background: back-to-back chunks of ``window_s`` from 0 (the 3 s
    chunks of chunk-level metrics), labelled by overlap; ambiguous chunks are left out.
    """
    frames, floor = params.window_frames(window_s), floor_db(params)
    xs, ys, sources, starts, kinds = [], [], [], [], []
    for r in recordings:
        hop = clip_hop_s if r.kind == "clips" else window_s
        for start in tile_starts(r.duration_s, window_s, hop):
            y, ambiguous = window_labels(r, start, window_s, labels)
            if r.kind == "clips":
                y = np.array([float(r.annotations[0].label == label) for label in labels], np.float32)
            elif ambiguous:
                continue
            xs.append(crop(features[r.name], round(start * params.frame_rate), frames, floor))
            ys.append(y)
            sources.append(r.name)
            starts.append(start)
            kinds.append(r.kind)
    n_mels = params.n_mels
    return WindowSet(
        x=(np.stack(xs) if xs else np.zeros((0, frames, n_mels), np.float32))[..., None],
        y=np.array(ys, np.float32).reshape(-1, len(labels)),
        source=np.array(sources, dtype=str),
        start_s=np.array(starts, np.float64),
        kind=np.array(kinds, dtype=str),
    )
