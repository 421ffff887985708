"""Fine-tuning on pseudo-labels, and the check that an adapted model did not get worse.

:func:`fine_tune` starts from the trained weights (BatchNormalization's statistics follow the
new mix of windows, part of what adapts the model to the site); :func:`validation_check`
compares the original and the adapted model on labelled windows the adaptation never used.

An ensemble (``train.model.ensemble``, :func:`train.model.ensemble`) is one Keras model whose
outputs average nested members ``member_1..N`` (:func:`ensemble_members` finds them); it is
fine-tuned as one model, jointly, the loss on the averaged output the device scores (what
``model.fit`` on it does). Fitting each member alone on the same pseudo-labels was measured
(BENCHMARKS.md, "Adapting an ensemble") and did no better.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from device.config import Config
from train.adapt_site import SiteWindows


def load_model(path: Path):
    """The Keras model of ``path``, uncompiled (fine_tune compiles it). An ensemble's members
    were saved compiled, each with an optimizer of its own, and Keras warns once per member that
    it skips their state (fine-tuning uses a fresh optimizer anyway): not the user's concern."""
    import warnings

    import keras

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        return keras.models.load_model(path, compile=False)


def ensemble_members(model) -> list:
    """The nested member models of an ensemble built by :func:`train.model.ensemble` (in order,
    ``member_1..N``); empty for a single model."""
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.Model) and layer.name.startswith("member_")]


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
    rows: np.ndarray,
    targets: np.ndarray,
    frame_targets: np.ndarray | None = None,
    config: Config,
    epochs: int,
    learning_rate: float,
    pseudo_share: float,
    round_: int,
    log: Callable[[str], None],
) -> None:
    """Train ``model`` in place for ``epochs`` epochs at a constant ``learning_rate``: each the
    run's own training windows, freshly drawn, plus the site's windows ``rows`` with their
    ``targets`` (N, n_labels) drawn with replacement (``pseudo_share`` of the epoch), all
    augmented as training augments. Targets are 0/1 pseudo-labels (self-training) or the
    teachers' mean probabilities (:mod:`train.adapt_distill`).

    A model with a frame output (``pooling: time``) trains both outputs, as training does: the
    run's windows with their frame targets; a site window with its ``frame_targets`` (N, steps,
    n_labels) when given, else a call as a call somewhere in its window (the frame loss takes its
    best step) and background as no call at any step."""
    import keras

    from train.augment import augment
    from train.fit import frame_loss
    from train.frontend import window_inputs
    from train.model import has_frames, step_frames
    from train.windows import SOMEWHERE

    cfg = config.train
    params = sampler.params
    bce = keras.losses.BinaryCrossentropy(from_logits=True)
    frames = has_frames(model)
    steps = int(model.output_shape[1][1]) if frames else 0
    per_step = step_frames(
        frames=sampler.frames,
        n_mels=params.n_mels,
        filters=list(cfg.model.filters),
        stem_stride=cfg.model.stem_stride,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate), loss=[bce, frame_loss] if frames else bce
    )
    augment_params = cfg.augment
    for epoch in range(1, epochs + 1):
        rng = np.random.default_rng([cfg.seed, 17, round_, epoch])
        # The same draw either way (WindowSampler.epoch_with_frames).
        x, y, f = sampler.epoch_with_frames(rng, steps=steps, step_frames=per_step)
        n = round(pseudo_share / (1 - pseudo_share) * len(x))
        pick = rng.integers(len(rows), size=n)
        x = np.concatenate([x, site.training_crops(rows[pick], rng)])
        y = np.concatenate([y, targets[pick]])
        if frame_targets is not None:
            f = np.concatenate([f, frame_targets[pick]])
        else:
            pseudo_f = np.where(targets[pick][:, None, :] > 0, SOMEWHERE, 0.0).astype(np.float32)
            f = np.concatenate([f, np.repeat(pseudo_f, steps, axis=1)])
        n_labels = y.shape[1]
        order = rng.permutation(len(x))
        # Frame targets ride along as extra label columns, as in train.fit.
        x, y = augment(
            x[order],
            np.concatenate([y, f.reshape(len(y), -1)], axis=1)[order],
            params=augment_params,
            rng=rng,
            floor=sampler.floor,
            backgrounds=sampler.mixing_windows,
            frame_rate=params.frame_rate,
        )
        y, f = y[:, :n_labels], y[:, n_labels:].reshape(len(y), steps, 1, n_labels)
        fitted = model.fit(
            window_inputs(x, params)[..., None],
            [y, f] if frames else y,
            batch_size=cfg.batch_size,
            epochs=1,
            shuffle=False,
            verbose=0,
        )
        log(
            f"round {round_} epoch {epoch}/{epochs}  windows {len(y)} ({n} pseudo-labelled)  "
            f"loss {float(fitted.history['loss'][-1]):.4f}"
        )
    model.compile(loss=bce)  # a plain loss in the saved config, as train.fit leaves it
