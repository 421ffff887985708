"""Pseudo-labels for site adaptation: which unlabelled windows to trust, and as what.

Self-training goes wrong by confirmation bias: the model's own mistakes, fed back as labels,
grow. The selection here guards against that in four ways:

- **Agreement.** Each window is scored in several views (shifted in time by a fraction of the
  hop, :func:`agreement`): a pseudo-positive must score high in *every* view (the lowest view's
  score counts), a pseudo-negative low in every view (the highest counts). A score that
  depends on where the window happens to start is not trusted either way.
- **Quantiles, not a fixed score.** A window is a candidate positive when its agreed score is in
  the site's top ``1 - positive_quantile`` *and* above the run's own calibrated threshold; a
  candidate negative when it is in the site's bottom ``negative_quantile`` and below the
  threshold for every label. The cuts follow the site's score distribution (a site where
  everything scores a little higher or lower does not flood either class), and the threshold
  keeps a site without calls from turning its loudest background into "calls".
- **A cap per recording.** At most ``max_positives_per_recording`` positives from any one
  recording (its highest), so one noisy file that the model likes cannot dominate.
- **Class balance.** As many negatives per positive as training draws
  (``negatives_per_positive``), spread over the recordings in turn, drawn at random among the
  candidates (not only the very lowest: silence teaches nothing).

Pure NumPy: tests call :func:`select_pseudo_labels` with scripted scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SelectionParams:
    """How confident windows are chosen (see the module docstring)."""

    positive_quantile: float = 0.9
    """A candidate positive scores (in every view) at or above this quantile of the site's windows."""
    negative_quantile: float = 0.5
    """A candidate negative scores (in every view) at or below this quantile of the site's windows."""
    max_positives_per_recording: int = 2
    """Pseudo-positives taken from one recording at most (its highest-scoring windows)."""
    negatives_per_positive: float = 3.0
    """Pseudo-negatives per pseudo-positive (training's own ratio by default: 1 call per 3 windows)."""

    def __post_init__(self) -> None:
        if not 0 < self.positive_quantile < 1 or not 0 < self.negative_quantile < 1:
            raise ValueError("the positive and negative quantiles must be in (0, 1)")
        if self.negative_quantile >= self.positive_quantile:
            raise ValueError("the negative quantile must be below the positive quantile")
        if self.max_positives_per_recording < 1 or self.negatives_per_positive <= 0:
            raise ValueError(
                "max_positives_per_recording must be >= 1 and negatives_per_positive > 0"
            )


@dataclass(frozen=True)
class PseudoLabels:
    """Windows chosen as pseudo-labels, as indices into the site's scored windows."""

    positives: np.ndarray
    """(P,) int: window indices taken as positives."""
    negatives: np.ndarray
    """(M,) int: window indices taken as negatives (every label 0)."""
    y: np.ndarray
    """(P + M, n_labels) float32 0/1: positives' rows first (1 for each label it was chosen for)."""
    cuts: dict[str, dict[str, float]]
    """Per label, the scores that bounded the candidates: ``positive`` and ``negative``."""
    candidates: dict[str, int]
    """How many windows were candidates before the cap and the balance: ``positives``, ``negatives``."""

    @property
    def indices(self) -> np.ndarray:
        """(P + M,) int: positives then negatives, the order of ``y``."""
        return np.concatenate([self.positives, self.negatives]).astype(int)

    def to_dict(self, sources: np.ndarray) -> dict:
        """A summary for run.json: counts, cuts, and how many recordings gave positives."""
        return {
            "positives": int(len(self.positives)),
            "negatives": int(len(self.negatives)),
            "recordings_with_positives": int(len(set(sources[self.positives].tolist()))),
            "candidates": dict(self.candidates),
            "cuts": {
                label: {k: round(v, 6) for k, v in c.items()} for label, c in self.cuts.items()
            },
        }


def agreement(views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lowest, highest) score over views: views (V, N, n_labels) -> two (N, n_labels) arrays."""
    views = np.asarray(views, np.float64)
    return views.min(axis=0), views.max(axis=0)


def select_pseudo_labels(
    *,
    low: np.ndarray,
    high: np.ndarray,
    sources: np.ndarray,
    labels: list[str],
    thresholds: dict[str, float],
    params: SelectionParams,
    rng: np.random.Generator,
) -> PseudoLabels:
    """Choose pseudo-positives and pseudo-negatives among a site's windows.

    low, high: (N, n_labels) the lowest and highest score of each window over its views
    (:func:`agreement`); sources: (N,) the recording each window comes from; thresholds: the
    run's calibrated threshold per label (probability units)."""
    n, n_labels = low.shape
    positive_rows: dict[int, set[int]] = {}
    cuts: dict[str, dict[str, float]] = {}
    negative_ok = np.ones(n, bool)
    candidates_pos = 0
    for i, label in enumerate(labels):
        cut_pos = max(float(np.quantile(low[:, i], params.positive_quantile)), thresholds[label])
        cut_neg = min(float(np.quantile(high[:, i], params.negative_quantile)), thresholds[label])
        cuts[label] = {"positive": cut_pos, "negative": cut_neg}
        negative_ok &= high[:, i] <= cut_neg
        candidate = np.flatnonzero(low[:, i] >= cut_pos)
        candidates_pos += len(candidate)
        for source in np.unique(sources[candidate]):
            mine = candidate[sources[candidate] == source]
            best = mine[np.argsort(-low[mine, i], kind="stable")][
                : params.max_positives_per_recording
            ]
            for row in best:
                positive_rows.setdefault(int(row), set()).add(i)
    positives = np.array(sorted(positive_rows), int)
    negative_ok[positives] = False
    candidates = np.flatnonzero(negative_ok)
    wanted = int(round(params.negatives_per_positive * len(positives)))
    negatives = _spread(candidates, sources, wanted, rng)
    y = np.zeros((len(positives) + len(negatives), n_labels), np.float32)
    for k, row in enumerate(positives):
        y[k, sorted(positive_rows[int(row)])] = 1.0
    return PseudoLabels(
        positives=positives,
        negatives=negatives,
        y=y,
        cuts=cuts,
        candidates={"positives": int(candidates_pos), "negatives": int(len(candidates))},
    )


def _spread(
    candidates: np.ndarray, sources: np.ndarray, wanted: int, rng: np.random.Generator
) -> np.ndarray:
    """Up to ``wanted`` of ``candidates``, taking one recording's at a time in turn (random
    order within each recording, recordings in random order), so no recording dominates."""
    if wanted <= 0 or len(candidates) == 0:
        return np.zeros(0, int)
    queues = [
        list(rng.permutation(candidates[sources[candidates] == s]))
        for s in rng.permutation(np.unique(sources[candidates]))
    ]
    chosen: list[int] = []
    while len(chosen) < wanted and any(queues):
        for queue in queues:
            if queue and len(chosen) < wanted:
                chosen.append(int(queue.pop()))
    return np.array(sorted(chosen), int)
