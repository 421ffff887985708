"""Per-label decision thresholds: at a target precision, at the best F1, or at a false-alarm rate per hour.

Thresholds are probabilities (sigmoid of the logit), chosen on validation data, never test.
A threshold sits halfway between the last score it accepts and the next lower one, so a score
equal to it is not a coin toss between two neighbouring windows.

False alarms are counted as the device counts events: consecutive overlapping windows above
the threshold in one recording make one alarm. The rate is alarms per hour of the audio the
negative windows cover.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
    values = np.array([_at(cut_scores, below, k) for k in near])
    pick = int(np.argmin(np.abs(np.log(values) - np.log1p(-values))))
    k = near[pick]
    return Threshold(float(values[pick]), "f1", {"f1": float(f1[k]), "precision": float(precision[k]),
                                                 "recall": float(recall[k]), "best_f1": best,
                                                 "tolerance": float(tolerance)})


def alarm_rate(*, sources: np.ndarray, starts: np.ndarray, scores: np.ndarray, window_s: float,
               thresholds: np.ndarray, max_event_s: float = 60.0) -> tuple[np.ndarray, float]:
    """(alarms per hour for each threshold, hours of audio covered) for negative windows.

    sources/starts/scores: (N,) per window; an alarm is a run of windows of one source, each
    overlapping the previous, all scoring >= the threshold. A run longer than ``max_event_s``
    counts once per started ``max_event_s``, as the device closes and reopens such events
    (otherwise a detector stuck on would count as one alarm).
    """
    order = np.lexsort((starts, sources))
    src, st, sc = sources[order], np.asarray(starts, np.float64)[order], scores[order]
    n = len(sc)
    same_run = np.r_[False, (src[1:] == src[:-1]) & (st[1:] <= st[:-1] + window_s + 1e-6)]
    # Covered time: each window adds what does not overlap the previous one of its source.
    added = np.where(same_run, np.minimum(np.r_[0.0, np.diff(st)], window_s), window_s)
    hours = float(added.sum()) / 3600
    thresholds = np.asarray(thresholds, np.float64)
    counts = np.zeros(len(thresholds))
    index = np.arange(n)
    for b0 in range(0, len(thresholds), 64):  # blocks bound the (thresholds x windows) memory
        above = sc[None, :] >= thresholds[b0:b0 + 64, None]
        previous = np.c_[np.zeros((len(above), 1), bool), above[:, :-1]]
        begins = above & ~(previous & same_run[None, :])
        first = np.maximum.accumulate(np.where(begins, index, 0), axis=1)
        segment = np.floor((st[None, :] - st[first]) / max_event_s + 1e-9)
        reopened = above & ~begins & (segment > np.c_[np.zeros((len(above), 1)), segment[:, :-1]])
        counts[b0:b0 + 64] = begins.sum(axis=1) + reopened.sum(axis=1)
    return counts / max(hours, 1e-9), hours


def threshold_at_false_alarms(*, sources: np.ndarray, starts: np.ndarray, scores: np.ndarray,
                              window_s: float, per_hour: float, max_event_s: float = 60.0) -> Threshold:
    """Lowest threshold at which negative audio (every higher threshold too) gives at most
    ``per_hour`` alarms per hour."""
    scores = np.asarray(scores, np.float64)
    if len(scores) == 0:
        return Threshold(0.5, "default", {}, "no negative audio to calibrate on; 0.5 used")
    distinct = np.unique(scores)[::-1]
    if len(distinct) > _MAX_CANDIDATES:
        distinct = np.unique(np.quantile(scores, np.linspace(0, 1, _MAX_CANDIDATES)))[::-1]
    # Highest candidate first; thresholds above every score give no alarms at all.
    rates, hours = alarm_rate(sources=np.asarray(sources), starts=np.asarray(starts, np.float64),
                              scores=scores, window_s=window_s, thresholds=distinct, max_event_s=max_event_s)
    bad = np.flatnonzero(rates > per_hour + 1e-9)
    if len(bad) == 0:  # even the lowest score is fine
        k = len(distinct) - 1
        value, rate = float(np.clip(distinct[k] / 2, LOWEST, HIGHEST)), float(rates[k])
    elif bad[0] == 0:
        value, rate = _between(1.0, distinct[0]), 0.0
    else:
        k = bad[0] - 1
        value, rate = _between(distinct[k], distinct[k + 1]), float(rates[k])
    note = "" if hours >= 0.5 else f"only {hours * 60:.1f} min of negative audio: the rate is a rough estimate"
    return Threshold(value, "false_alarms", {"false_alarms_per_hour": rate, "hours": hours}, note)
