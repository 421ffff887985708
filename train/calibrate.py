"""Per-label decision thresholds: at a target precision, at the best F1, or at a false-alarm rate per hour.

Thresholds are probabilities (sigmoid of the logit), chosen on validation data, never test.
A threshold sits halfway between the last score it accepts and the next lower one, so a score
equal to it is not a coin toss between two neighbouring windows.

False alarms are the events the device's own detector (``device.detector``) makes of negative
windows, with the detection settings the bundle ships (smoothing, k-of-n, hysteresis, merging,
refractory time, longest event). The rate is alarms per hour of the audio the negative windows
cover. The extent trims, the other thing the detector takes from the bundle, are calibrated
here too (:func:`calibrate_extent`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from device.detector import DetectorParams, detect

LOWEST, HIGHEST = 1e-6, 1 - 1e-6
"""Thresholds stay inside (0, 1), as model.json requires."""
_MAX_CANDIDATES = 2000


@dataclass(frozen=True)
class Threshold:
    """A calibrated threshold and what it achieved on the data it was chosen on."""

    value: float
    """Probability, 0..1 exclusive."""
    method: str
    """'precision', 'f1' or 'false_alarms' (or 'default' when the data could not decide)."""
    achieved: dict
    """precision/recall or false_alarms_per_hour reached on the calibration data."""
    note: str = ""
    """Why the target was not met, when it was not."""

    def to_dict(self) -> dict:
        return {"threshold": self.value, "method": self.method, "achieved": self.achieved,
                **({"note": self.note} if self.note else {})}


def _between(accepted: float, rejected: float | None) -> float:
    value = accepted if rejected is None else (accepted + rejected) / 2
    return float(np.clip(value, LOWEST, HIGHEST))


def _cuts(y: np.ndarray, scores: np.ndarray):
    """Candidate cuts after each distinct score (accept scores >= the cut), highest first:
    (cut scores, the next lower distinct score or NaN, true positives, windows accepted)."""
    order = np.argsort(-scores, kind="stable")
    s, hits = scores[order], y[order]
    last = np.r_[s[1:] != s[:-1], True]
    cut_scores = s[last]
    return cut_scores, np.r_[cut_scores[1:], np.nan], np.cumsum(hits)[last], np.flatnonzero(last) + 1


def _at(cut_scores: np.ndarray, below: np.ndarray, k: int) -> float:
    return _between(cut_scores[k], None if np.isnan(below[k]) else below[k])


def threshold_at_precision(y: np.ndarray, scores: np.ndarray, *, target: float) -> Threshold:
    """Threshold with the most recall at a precision of at least ``target`` on (y, scores);
    of the thresholds giving that recall, the highest.

    y: (N,) 0/1; scores: (N,) probabilities. Falls back to the best-F1 threshold, with a note,
    when no threshold reaches the target, and to 0.5 when there are no positives.
    """
    y = np.asarray(y) > 0.5
    scores = np.asarray(scores, np.float64)
    if not y.any():
        return Threshold(0.5, "default", {}, "no positive windows to calibrate on; 0.5 used")
    cut_scores, below, tp, accepted = _cuts(y, scores)
    precision, recall = tp / accepted, tp / y.sum()
    ok = np.flatnonzero(precision >= target - 1e-12)
    note = ""
    if len(ok):
        # Most recall the target allows; of the cuts giving it, the highest (fewest false alarms).
        k = ok[np.flatnonzero(recall[ok] >= recall[ok[-1]] - 1e-12)[0]]
    else:
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        k = int(np.argmax(f1))
        note = f"target precision {target} not reached on validation (best {precision.max():.3f}); best-F1 threshold used"
    return Threshold(_at(cut_scores, below, k), "precision", {"precision": float(precision[k]), "recall": float(recall[k])}, note)


def threshold_at_best_f1(y: np.ndarray, scores: np.ndarray) -> Threshold:
    """Threshold at the best F1 on (y, scores), robust to a small validation set: as many false
    alarms as misses, about, so counts of detections stay unbiased.

    Of the cuts whose F1 is within one standard error of the best (``sqrt(F1 (1 - F1) / n)``
    over the n validation positives, and at least ``1 / n``, one call's worth), the one nearest
    0.5, the decision boundary the training loss itself draws (the one-standard-error rule of
    model selection, applied to the threshold). With a few dozen validation calls the single best
    cut hugs whichever call scored lowest and moves from run to run (0.07 to 0.84 over the
    capuchin folds); within its own noise, the model's boundary is the steadier choice. With
    plenty of validation data the tolerance shrinks to the best cut.

    y: (N,) 0/1; scores: (N,) probabilities. 0.5 when there are no positives.
    """
    y = np.asarray(y) > 0.5
    scores = np.asarray(scores, np.float64)
    if not y.any():
        return Threshold(0.5, "default", {}, "no positive windows to calibrate on; 0.5 used")
    n = int(y.sum())
    cut_scores, below, tp, accepted = _cuts(y, scores)
    precision, recall = tp / accepted, tp / n
    f1 = 2 * tp / (accepted + n)
    best = float(f1.max())
    tolerance = max(np.sqrt(best * (1 - best) / n), 1 / n)
    near = np.flatnonzero(f1 >= best - tolerance - 1e-12)
    values = np.array([_at(cut_scores, below, int(k)) for k in near])
    pick = int(np.argmin(np.abs(np.log(values) - np.log1p(-values))))
    k = near[pick]
    return Threshold(float(values[pick]), "f1", {"f1": float(f1[k]), "precision": float(precision[k]),
                                                 "recall": float(recall[k]), "best_f1": best,
                                                 "tolerance": float(tolerance)})


def covered_hours(sources: np.ndarray, starts: np.ndarray, window_s: float) -> float:
    """Hours of audio that windows (sources, starts: (N,)) cover, overlaps counted once."""
    if len(starts) == 0:
        return 0.0
    order = np.lexsort((starts, sources))
    src, st = np.asarray(sources)[order], np.asarray(starts, np.float64)[order]
    same = np.r_[False, (src[1:] == src[:-1]) & (st[1:] <= st[:-1] + window_s + 1e-6)]
    added = np.where(same, np.minimum(np.r_[0.0, np.diff(st)], window_s), window_s)
    return float(added.sum()) / 3600


def _timelines(sources: np.ndarray, starts: np.ndarray, scores: np.ndarray):
    """(starts, scores) of each source, in time order."""
    order = np.lexsort((starts, sources))
    src, st, sc = np.asarray(sources)[order], np.asarray(starts, np.float64)[order], np.asarray(scores)[order]
    cuts = np.flatnonzero(src[1:] != src[:-1]) + 1
    return list(zip(np.split(st, cuts), np.split(sc, cuts)))


def alarm_rate(*, sources: np.ndarray, starts: np.ndarray, scores: np.ndarray, window_s: float, hop_s: float,
               thresholds: np.ndarray, params: DetectorParams) -> tuple[np.ndarray, float]:
    """(alarms per hour for each threshold, hours of audio covered) for negative windows.

    sources/starts/scores: (N,) per window. An alarm is an event the device's detector
    (``params``, its threshold replaced by each of ``thresholds``) makes of one source's
    windows; windows more than a hop apart are a gap in the audio (as where positive windows
    were left out), where the detector is finished as the device finishes it.
    """
    hours = covered_hours(np.asarray(sources), np.asarray(starts, np.float64), window_s)
    timelines = _timelines(np.asarray(sources), np.asarray(starts, np.float64), np.asarray(scores, np.float64))
    counts = np.array([sum(len(detect(st, sc, replace(params, threshold=_inside(t)), window_s=window_s, hop_s=hop_s))
                           for st, sc in timelines) for t in np.asarray(thresholds, np.float64)], np.float64)
    return counts / max(hours, 1e-9), hours


def _inside(value: float) -> float:
    return float(np.clip(value, LOWEST, HIGHEST))


def threshold_at_false_alarms(*, sources: np.ndarray, starts: np.ndarray, scores: np.ndarray,
                              window_s: float, hop_s: float, per_hour: float,
                              params: DetectorParams) -> Threshold:
    """Lowest threshold at which negative audio (every higher candidate threshold too) gives at
    most ``per_hour`` alarms per hour, alarms counted by the device's detector with ``params``
    (:func:`lowest_threshold`)."""
    scores = np.asarray(scores, np.float64)
    sources, starts = np.asarray(sources), np.asarray(starts, np.float64)
    timelines = _timelines(sources, starts, scores)

    def alarms_at(value: float) -> int:
        params_at = replace(params, threshold=value)
        return sum(len(detect(st, sc, params_at, window_s=window_s, hop_s=hop_s)) for st, sc in timelines)

    return lowest_threshold(scores, hours=covered_hours(sources, starts, window_s), per_hour=per_hour,
                            alarms_at=alarms_at)


def lowest_threshold(scores: np.ndarray, *, hours: float, per_hour: float,
                     alarms_at: Callable[[float], int]) -> Threshold:
    """Lowest threshold at which ``alarms_at(threshold)`` alarms over ``hours`` of negative audio
    (at every higher candidate threshold too) are at most ``per_hour`` per hour.

    scores: the values the threshold is compared with (window scores, or a frame track's
    cells). Candidates lie between the distinct scores (at most ``_MAX_CANDIDATES``, by
    quantile), tried from the highest down until one gives too many alarms.
    """
    scores = np.asarray(scores, np.float64)
    if len(scores) == 0:
        return Threshold(0.5, "default", {}, "no negative audio to calibrate on; 0.5 used")
    distinct = np.unique(scores)[::-1]
    if len(distinct) > _MAX_CANDIDATES:
        distinct = np.unique(np.quantile(scores, np.linspace(0, 1, _MAX_CANDIDATES)))[::-1]

    def rate_at(value: float) -> float:
        return alarms_at(value) / max(hours, 1e-9)

    # Each candidate sits between one distinct score and the next lower (below the lowest: at
    # half of it); the rate is measured at the very value returned, since smoothing and
    # hysteresis compare other numbers than the raw scores with it.
    candidates = [_between(distinct[j], distinct[j + 1]) for j in range(len(distinct) - 1)]
    candidates.append(_inside(distinct[-1] / 2))
    value = _between(1.0, distinct[0])
    rate = rate_at(value)
    for candidate in candidates:  # highest first
        candidate_rate = rate_at(candidate)
        if candidate_rate > per_hour + 1e-9:
            break
        value, rate = candidate, candidate_rate
    note = "" if hours >= 0.5 else f"only {hours * 60:.1f} min of negative audio: the rate is a rough estimate"
    if rate > per_hour + 1e-9:
        note = f"scores at the top of the range: even the highest threshold gives {rate:.1f} per hour"
    return Threshold(value, "false_alarms", {"false_alarms_per_hour": rate, "hours": hours}, note)


def calibrate_extent(recordings: list[tuple[list, list]], *, window_s: float, hop_s: float,
                     min_calls: int = 5) -> dict:
    """Extent trims (``device.detector``) from events made with no trim (the windows' span)
    and the annotated calls of the same recordings.

    recordings: per recording, (events, calls), each a list of (start_s, end_s). Only
    one-to-one pairs count (an event touching exactly one call that touches no other event):
    the trims are the medians of (call start - event start) and of (event end - call end).
    With fewer than ``min_calls`` such pairs, the centre rule ((window_s - hop_s) / 2 each side).
    Returns {"rule": "trim" or "centre", "trim_s": [start, end], "calls": pairs used}.
    """
    def touching(a, b):
        return min(a[1], b[1]) - max(a[0], b[0]) > 1e-6

    starts, ends = [], []
    for events, calls in recordings:
        for e in events:
            mine = [c for c in calls if touching(e, c)]
            if len(mine) == 1 and sum(touching(other, mine[0]) for other in events) == 1:
                starts.append(mine[0][0] - e[0])
                ends.append(e[1] - mine[0][1])
    centre = (window_s - hop_s) / 2
    if len(starts) < min_calls:
        return {"rule": "centre", "trim_s": [centre, centre], "calls": len(starts)}
    trim = [float(np.clip(np.median(x), 0.0, window_s)) for x in (starts, ends)]
    return {"rule": "trim", "trim_s": [round(trim[0], 3), round(trim[1], 3)], "calls": len(starts)}
