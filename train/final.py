"""The final model's recipe, chosen by cross-validation: epochs, thresholds, verification windows.

Cross-validation measures a recipe; the model to deploy should then hear every group. Each fold
of :func:`train.core.train_final` leaves a :class:`HeldOut` (its test windows, scored by the fold
model that never trained on them); :func:`final_plan` pools them into what the final model
trains and is calibrated with:

- epochs: the median of the folds' kept epochs (rounded half up; every member's, for an
  ensemble), of the same cosine schedule: with every group in training nothing is left to stop
  early on;
- thresholds: ``train.calibration`` applied to the pooled out-of-fold scores, the same rule a
  single run applies to its validation split, on every held-out window at once;
- verification windows: the pooled held-out windows. The final model trains on them, so they
  check its int8 conversion against float and estimate nothing; the estimate of accuracy is the
  pooled out-of-fold scores, which the final model's report and run.json carry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from device.config import DetectionSection, TrainSection
from device.detector import detector_params
from train.datasets import Recording
from train.decision import calibrate_thresholds
from train.windows import WindowSet


@dataclass
class HeldOut:
    """One fold's test split as its own model scored it (an out-of-fold sample)."""

    windows: WindowSet
    scores: np.ndarray
    """(N, n_labels) probabilities of ``windows`` by the fold's model, which never trained on them."""
    timelines: dict
    """Recording name -> (starts, probabilities) every hop_s (false-alarm calibration, event extents)."""
    recordings: list[Recording]
    best_epochs: list[int]
    """The kept epoch of the fold's model: one, or one per ensemble member."""


@dataclass
class FinalPlan:
    """What cross-validation chose for the final model, trained on every recording."""

    epochs: int
    """Epochs to train: the median of the folds' kept epochs (every ensemble member's)."""
    fold_epochs: list[int]
    thresholds: dict
    """{label: Threshold} calibrated on the folds' pooled out-of-fold scores."""
    held_out: WindowSet
    """Every fold's test windows, pooled: the final model's verification windows."""
    held_out_scores: np.ndarray
    """Their out-of-fold scores: the cross-validated estimate of accuracy."""
    folds: int
    timelines: dict
    """The folds' held-out recordings' timelines, by their own fold models (event extent trims)."""
    recordings: list[Recording]
    """The folds' held-out recordings."""


def final_plan(
    *,
    cfg: TrainSection,
    held_out: list[HeldOut],
    window_s: float,
    hop_s: float,
    detection: DetectionSection,
) -> FinalPlan:
    """The final model's recipe from the folds: the median of their kept epochs (rounded half
    up), and thresholds calibrated by ``cfg.calibration`` on their pooled out-of-fold scores
    (false alarms counted by the device's detector with the ``detection`` settings)."""

    labels = list(cfg.labels)
    epochs = [e for h in held_out for e in h.best_epochs]
    windows = WindowSet(
        *(
            np.concatenate([getattr(h.windows, f) for h in held_out])
            for f in ("x", "y", "source", "start_s", "kind")
        )
    )
    scores = np.concatenate([h.scores for h in held_out])
    timelines = {name: t for h in held_out for name, t in h.timelines.items()}
    recordings = [r for h in held_out for r in h.recordings]
    thresholds = calibrate_thresholds(
        cfg=cfg,
        labels=labels,
        y=windows.y,
        scores=scores,
        timelines=timelines,
        recordings=recordings,
        window_s=window_s,
        hop_s=hop_s,
        detection=detector_params(
            labels=tuple(labels), bundle_thresholds=dict.fromkeys(labels, 0.5), detection=detection
        ),
    )
    return FinalPlan(
        epochs=max(1, int(np.floor(np.median(epochs) + 0.5))),
        fold_epochs=epochs,
        thresholds=thresholds,
        held_out=windows,
        held_out_scores=scores,
        folds=len(held_out),
        timelines=timelines,
        recordings=recordings,
    )
