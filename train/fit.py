"""The training loop: fresh crops and augmentation every epoch, early stopping on validation.

Each epoch draws new windows from :class:`train.windows.WindowSampler`, augments them
(:mod:`train.augment`) and runs one pass of Adam on a from-logits binary cross-entropy, with a
cosine learning-rate decay over ``epochs``. After each epoch the validation windows are scored.
The kept weights are those of the latest epoch whose mean validation PR-AUC is within
``MIN_DELTA`` of the best so far: small validation sets saturate near 1.0 early, and at an equal
score the longer-trained, lower-learning-rate weights generalise better to new sites. Training
stops after ``patience`` epochs that fall short of that.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np
from sklearn.metrics import average_precision_score

from train.augment import AugmentParams, augment
from train.windows import WindowSampler, WindowSet


@dataclass
class History:
    """Per-epoch training record (for the report's training curves)."""

    loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_pr_auc: list[float] = field(default_factory=list)
    windows: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    best_epoch: int = 0
    """1-based epoch whose weights were kept."""

    def to_dict(self) -> dict:
        return {"loss": self.loss, "val_loss": self.val_loss, "val_pr_auc": self.val_pr_auc,
                "windows": self.windows, "seconds": self.seconds, "best_epoch": self.best_epoch}


MIN_DELTA = 0.005
"""Validation PR-AUC differences smaller than this count as a tie."""


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))


def predict_probabilities(model: keras.Model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """(N, n_labels) probabilities of (N, frames, n_mels, 1) windows."""
    if len(x) == 0:
        return np.zeros((0, model.output_shape[-1]), np.float32)
    return sigmoid(model.predict(x, batch_size=batch_size, verbose=0))


def _bce(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def _mean_pr_auc(y: np.ndarray, p: np.ndarray) -> float:
    values = [average_precision_score(y[:, i], p[:, i]) for i in range(y.shape[1]) if 0 < y[:, i].sum() < len(y)]
    return float(np.mean(values)) if values else float("nan")


def fit(
    model: keras.Model,
    *,
    sampler: WindowSampler,
    validation: WindowSet,
    augment_params: AugmentParams,
    epochs: int,
    patience: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    to_inputs: Callable[[np.ndarray], np.ndarray] | None = None,
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
) -> History:
    """Train ``model`` in place (best weights restored) and return its history.

    Seeded, with TensorFlow's deterministic kernels: the same config, data and thread count give
    the same weights (multi-threaded reductions would otherwise add up in whatever order the
    threads finish, and one ulp in the first epoch grows into a different model).

    ``to_inputs`` turns the augmented dB crops into model inputs (:func:`train.frontend.window_inputs`).
    ``stop_after``: train exactly this many epochs of the ``epochs``-long schedule and keep the
    last weights, whatever validation says (a final model, whose epoch count cross-validation chose)."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)
    steps = epochs * -(-(sampler.positives_per_epoch + sampler.negatives_per_epoch) // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True))
    history = History()
    best_score, best_weights, waited = None, model.get_weights(), 0
    for epoch in range(1, (stop_after or epochs) + 1):
        began = time.monotonic()
        rng = np.random.default_rng([seed, epoch])
        x, y = sampler.epoch(rng)
        x, y = augment(x, y, params=augment_params, rng=rng, floor=sampler.floor,
                       backgrounds=sampler.mixing_windows, frame_rate=sampler.params.frame_rate)
        if to_inputs is not None:
            x = to_inputs(x)
        fitted = model.fit(x[..., None], y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
        loss = float(fitted.history["loss"][-1])
        if len(validation):
            p = predict_probabilities(model, validation.x)
            val_loss, val_pr = _bce(validation.y, p), _mean_pr_auc(validation.y, p)
        else:
            val_loss, val_pr = loss, float("nan")
        score = -val_loss if np.isnan(val_pr) else val_pr
        improved = best_score is None or score >= best_score - MIN_DELTA or stop_after is not None
        if improved:
            best_score = score if best_score is None else max(best_score, score)
            best_weights, waited, history.best_epoch = model.get_weights(), 0, epoch
        else:
            waited += 1
        history.loss.append(loss)
        history.val_loss.append(val_loss)
        history.val_pr_auc.append(val_pr)
        history.windows.append(len(y))
        history.seconds.append(time.monotonic() - began)
        log(f"epoch {epoch:3d}/{epochs}  windows {len(y):5d}  loss {loss:.4f}  val_loss {val_loss:.4f}  "
            f"val_pr_auc {val_pr:.4f}  {history.seconds[-1]:5.1f} s{'  *' if improved else ''}")
        if waited >= patience and stop_after is None:
            log(f"early stop: no validation improvement for {patience} epochs; best epoch {history.best_epoch}")
            break
    model.set_weights(best_weights)
    return history
