"""Fine-tuning on pseudo-labels, and the check that an adapted model did not get worse.

:func:`fine_tune` starts from the trained weights (BatchNormalization's statistics follow the
new mix of windows, part of what adapts the model to the site); :func:`validation_check`
compares the original and the adapted model on labelled windows the adaptation never used.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from device.config import Config
from train.adapt_select import PseudoLabels
from train.adapt_site import SiteWindows


def validation_check(
    *, y: np.ndarray, before: np.ndarray, after: np.ndarray, labels: list[str], tolerance: float
) -> dict:
    """Per label ROC-AUC and PR-AUC before and after adaptation on labelled windows; ``passed``
    is False when any of them dropped by more than ``tolerance`` (``worse`` says which), or
    when no label has both classes there (nothing to judge by: ``labels`` is empty)."""
    record: dict = {"windows": int(len(y)), "tolerance": tolerance, "labels": {}, "worse": []}
    for i, label in enumerate(labels):
        if not 0 < y[:, i].sum() < len(y):
            continue
        values = {
            f"{name}_{when}": float(fn(y[:, i], s[:, i]))
            for name, fn in (("roc_auc", roc_auc_score), ("pr_auc", average_precision_score))
            for when, s in (("before", before), ("after", after))
        }
        record["labels"][label] = values
        for name in ("roc_auc", "pr_auc"):
            if values[f"{name}_after"] < values[f"{name}_before"] - tolerance:
                record["worse"].append(
                    f"{label} {name.replace('_', '-').upper()} {values[f'{name}_before']:.3f} "
                    f"-> {values[f'{name}_after']:.3f}"
                )
    record["passed"] = bool(record["labels"]) and not record["worse"]
    return record


def fine_tune(
    model,
    *,
    sampler,
    site: SiteWindows,
    pseudo: PseudoLabels,
    config: Config,
    epochs: int,
    learning_rate: float,
    pseudo_share: float,
    round_: int,
    log: Callable[[str], None],
) -> None:
    """Train ``model`` in place for ``epochs`` epochs at a constant ``learning_rate``: each the
    run's own training windows, freshly drawn, plus pseudo-labelled site windows drawn with
    replacement (``pseudo_share`` of the epoch), all augmented as training augments."""
    import keras

    from train.augment import augment
    from train.frontend import window_inputs

    cfg = config.train
    params = sampler.params
    rows, pseudo_y = pseudo.indices, pseudo.y
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    augment_params = cfg.augment
    for epoch in range(1, epochs + 1):
        rng = np.random.default_rng([cfg.seed, 17, round_, epoch])
        x, y = sampler.epoch(rng)
        n = round(pseudo_share / (1 - pseudo_share) * len(x))
        pick = rng.integers(len(rows), size=n)
        x = np.concatenate([x, site.training_crops(rows[pick], rng)])
        y = np.concatenate([y, pseudo_y[pick]])
        order = rng.permutation(len(x))
        x, y = augment(
            x[order],
            y[order],
            params=augment_params,
            rng=rng,
            floor=sampler.floor,
            backgrounds=sampler.mixing_windows,
            frame_rate=params.frame_rate,
        )
        fitted = model.fit(
            window_inputs(x, params)[..., None],
            y,
            batch_size=cfg.batch_size,
            epochs=1,
            shuffle=False,
            verbose=0,
        )
        log(
            f"round {round_} epoch {epoch}/{epochs}  windows {len(y)} ({n} pseudo-labelled)  "
            f"loss {float(fitted.history['loss'][-1]):.4f}"
        )
