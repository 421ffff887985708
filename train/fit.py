"""The training loop: fresh crops and augmentation every epoch, early stopping on validation.

Each epoch draws new windows from :class:`train.windows.WindowSampler`, augments them
(:mod:`train.augment`) and runs one pass of Adam on a from-logits binary cross-entropy, with a
cosine learning-rate decay over ``epochs``. After each epoch the validation windows are scored.
The kept weights are those of the latest epoch whose mean validation PR-AUC is within
``MIN_DELTA`` of the best so far: small validation sets saturate near 1.0 early, and at an equal
score the longer-trained, lower-learning-rate weights generalise better to new sites. Training
stops after ``patience`` epochs that fall short of that.

A model with a frame output (:func:`train.model.has_frames`) also learns it: a masked
from-logits binary cross-entropy against the frame targets where the annotations give call
times, and for positive clips (a call somewhere, time unknown) the cross-entropy of the
window's highest step against 1 (multiple-instance learning). Validation, early stopping and
the window scores use the window output.

Weight averaging (``weight_averaging="ema"``): :class:`WeightAverage` keeps an exponential
moving average of every weight over the training steps, and validation, early stopping and the
kept weights use the average, while training goes on from the raw weights. It is not Keras'
``use_ema``: ``Model.fit`` calls ``optimizer.finalize_variable_values`` at the end of every call,
which with ``use_ema`` overwrites the trained weights with their average (this loop calls ``fit``
once per epoch, so training would restart from the average every epoch), and the optimizer
averages trainable variables only, leaving BatchNorm's moving statistics those of the raw weights.
Averaged statistics do not fit averaged weights either: the averaged network's activations have
other means and variances than the average of the raw networks' (on Bobwhite, the average with
averaged statistics lost validation PR-AUC epoch after epoch while the raw weights gained; see
BENCHMARKS.md), so the statistics are estimated again for the averaged weights on training windows
before each validation (:func:`estimate_batchnorm`, as SWA's ``update_bn`` does).
Early in training the averaged depthwise kernels respond less to the data than the raw ones, so
the re-estimated BatchNorm gains are larger (1.5-2x after 4 tiny epochs) and so is the int8 noise
they amplify; once the model has learned (10 epochs on the synthetic set, frame head, 3 seeds) the
int8 logit error is 0.11 of the logit's sd averaged, 0.09 raw, and neither loses ROC-AUC to int8
on 240 fresh clips (BENCHMARKS.md, "Weight averaging with the frame head").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np
from sklearn.metrics import average_precision_score

from train.augment import AugmentParams, augment
from train.model import has_frames
from train.windows import SOMEWHERE, WindowSampler, WindowSet


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
        return {
            "loss": self.loss,
            "val_loss": self.val_loss,
            "val_pr_auc": self.val_pr_auc,
            "windows": self.windows,
            "seconds": self.seconds,
            "best_epoch": self.best_epoch,
        }


class WeightAverage(keras.callbacks.Callback):
    """Exponential moving average of all the model's weights (trainable ones and BatchNorm's
    moving statistics, which :func:`estimate_batchnorm` replaces), updated after every step:
    ``average = momentum * average + (1 - momentum) * weights``, starting at the first step's
    weights; kept across ``Model.fit`` calls. Accumulated in float64, returned in the weights'
    dtypes. Not thread-safe (one training loop)."""

    def __init__(self, momentum: float) -> None:
        super().__init__()
        self.momentum = momentum
        self.steps = 0
        self._average: list[np.ndarray] | None = None

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        weights = self.model.get_weights()
        if self._average is None:
            self._average = [np.asarray(w, np.float64) for w in weights]
        else:
            for average, w in zip(self._average, weights, strict=True):
                average *= self.momentum
                average += (1.0 - self.momentum) * w
        self.steps += 1

    def weights(self) -> list[np.ndarray]:
        """The averaged weights, in ``model.get_weights()`` order and dtypes."""
        if self._average is None:
            return self.model.get_weights()
        return [
            a.astype(w.dtype) for a, w in zip(self._average, self.model.get_weights(), strict=True)
        ]


def estimate_batchnorm(
    model: keras.Model, x: np.ndarray, *, batch_size: int, windows: int = 512
) -> None:
    """Set every BatchNorm layer's moving mean and variance to the mean of its batch statistics
    over the first ``windows`` of ``x`` (model inputs, shuffled), in batches of ``batch_size``,
    for the model's current weights. Runs the model in training mode, so it also advances the
    dropout seed: callers restore ``model.variables`` if the training run must not see it."""
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    subset = x[:windows]
    try:
        for i, start in enumerate(range(0, len(subset), batch_size)):
            for layer in norms:  # a running mean: moving = (i * moving + batch) / (i + 1)
                layer.momentum = i / (i + 1)
            model(subset[start : start + batch_size], training=True)
    finally:
        for layer, momentum in zip(norms, momenta, strict=True):
            layer.momentum = momentum


WEIGHT_AVERAGING = ("none", "ema")

MIN_DELTA = 0.005
"""Validation PR-AUC differences smaller than this count as a tie."""


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))


def predict_probabilities(model: keras.Model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """(N, n_labels) window probabilities of (N, frames, n_mels, 1) windows."""
    return predict_both(model, x, batch_size)[0]


def predict_both(
    model: keras.Model, x: np.ndarray, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray | None]:
    """Window probabilities (N, n_labels) and, for a model with a frame output, frame
    probabilities (N, steps, n_labels) (else None)."""
    frames = has_frames(model)
    n_labels = int(model.output_shape[0][-1] if frames else model.output_shape[-1])
    if len(x) == 0:
        steps = int(model.output_shape[1][1]) if frames else 0
        return np.zeros((0, n_labels), np.float32), (
            np.zeros((0, steps, n_labels), np.float32) if frames else None
        )
    out = model.predict(x, batch_size=batch_size, verbose=0)
    if frames:
        return sigmoid(out[0]), sigmoid(out[1][:, :, 0, :])
    return sigmoid(out), None


def member_seeds(seed: int, members: int) -> list[int]:
    """Seeds of an ensemble's ``members`` models for a run at ``seed``: the first is ``seed`` (so
    the first member is the model one run at that seed trains), the others drawn from NumPy's
    seed sequence of (seed, member), 32-bit values, so they are not the seeds of runs at other
    small seeds (a one-in-four-billion chance per pair)."""
    return [seed] + [int(np.random.SeedSequence([seed, i]).generate_state(1)[0]) for i in range(1, members)]


def frame_loss(y_true, y_pred):
    """Per window: the mean from-logits cross-entropy over steps with a target in [0, 1], plus,
    per label marked ``SOMEWHERE``, that of the highest step against 1. Shapes (N, steps, 1, L)."""
    from keras import ops

    known = ops.cast(y_true >= 0, y_pred.dtype)
    target = ops.clip(y_true, 0.0, 1.0)
    bce = ops.relu(y_pred) - y_pred * target + ops.log1p(ops.exp(-ops.abs(y_pred)))
    somewhere = ops.cast(
        ops.max(ops.cast(y_true <= SOMEWHERE + 0.5, y_pred.dtype), axis=(1, 2)), y_pred.dtype
    )
    best = ops.max(y_pred, axis=(1, 2))  # (N, L)
    mil = ops.relu(-best) + ops.log1p(ops.exp(-ops.abs(best)))
    total = ops.sum(bce * known, axis=(1, 2, 3)) + ops.sum(mil * somewhere, axis=1)
    count = ops.sum(known, axis=(1, 2, 3)) + ops.sum(somewhere, axis=1)
    return total / ops.maximum(count, 1.0)


def _bce(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def _mean_pr_auc(y: np.ndarray, p: np.ndarray) -> float:
    values = [
        average_precision_score(y[:, i], p[:, i])
        for i in range(y.shape[1])
        if 0 < y[:, i].sum() < len(y)
    ]
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
    step_frames: int = 0,
    weight_averaging: str = "none",
    ema_momentum: float = 0.99,
    log: Callable[[str], None] = print,
) -> History:
    """Train ``model`` in place (best weights restored) and return its history.

    Seeded, with TensorFlow's deterministic kernels: the same config, data and thread count give
    the same weights (multi-threaded reductions would otherwise add up in whatever order the
    threads finish, and one ulp in the first epoch grows into a different model).

    ``to_inputs`` turns the augmented dB crops into model inputs (:func:`train.frontend.window_inputs`).
    ``stop_after``: train exactly this many epochs of the ``epochs``-long schedule and keep the
    last weights, whatever validation says (a final model, whose epoch count cross-validation chose).
    ``step_frames``: spectrogram frames per step of the frame output (:func:`train.model.step_frames`;
    0: the window's frames over its steps, rounded down).
    ``weight_averaging``: "ema" validates, keeps and leaves in ``model`` the moving average of the
    weights (:class:`WeightAverage` with ``ema_momentum``) instead of the weights as trained."""
    import tensorflow as tf

    if weight_averaging not in WEIGHT_AVERAGING:
        raise ValueError(
            f"weight_averaging must be one of {WEIGHT_AVERAGING}, got {weight_averaging!r}"
        )
    average = WeightAverage(ema_momentum) if weight_averaging == "ema" else None

    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)
    steps = epochs * -(-(sampler.positives_per_epoch + sampler.negatives_per_epoch) // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps, alpha=0.05)
    bce = keras.losses.BinaryCrossentropy(from_logits=True)
    frames = has_frames(model)
    steps = int(model.output_shape[1][1]) if frames else 0
    step_frames = step_frames or (sampler.frames // steps if steps else 1)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule), loss=[bce, frame_loss] if frames else bce
    )
    history = History()
    best_score, best_weights, waited = None, model.get_weights(), 0
    for epoch in range(1, (stop_after or epochs) + 1):
        began = time.monotonic()
        rng = np.random.default_rng([seed, epoch])
        x, y, f = sampler.epoch_with_frames(rng, steps=steps, step_frames=step_frames)
        n_labels = y.shape[1]
        # Frame targets ride along as extra label columns (mixup mixes them with the same weights).
        x, y = augment(
            x,
            np.concatenate([y, f.reshape(len(y), -1)], axis=1),
            params=augment_params,
            rng=rng,
            floor=sampler.floor,
            backgrounds=sampler.mixing_windows,
            frame_rate=sampler.params.frame_rate,
        )
        y, f = y[:, :n_labels], y[:, n_labels:].reshape(len(y), steps, 1, n_labels)
        if to_inputs is not None:
            x = to_inputs(x)
        fitted = model.fit(
            x[..., None],
            [y, f] if frames else y,
            batch_size=batch_size,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[average] if average else None,
        )
        loss = float(fitted.history["loss"][-1])
        trained = None
        if average is not None:  # validate (and keep) the average; train on from the raw weights
            trained = [v.numpy() for v in model.variables]  # the dropout seed too
            model.set_weights(average.weights())
            estimate_batchnorm(model, x[..., None], batch_size=batch_size)
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
        if trained is not None:
            for variable, value in zip(model.variables, trained, strict=True):
                variable.assign(value)
        history.loss.append(loss)
        history.val_loss.append(val_loss)
        history.val_pr_auc.append(val_pr)
        history.windows.append(len(y))
        history.seconds.append(time.monotonic() - began)
        log(
            f"epoch {epoch:3d}/{epochs}  windows {len(y):5d}  loss {loss:.4f}  val_loss {val_loss:.4f}  "
            f"val_pr_auc {val_pr:.4f}  {history.seconds[-1]:5.1f} s{'  *' if improved else ''}"
        )
        if waited >= patience and stop_after is None:
            log(
                f"early stop: no validation improvement for {patience} epochs; best epoch {history.best_epoch}"
            )
            break
    model.set_weights(best_weights)
    # A plain loss in the saved compile config, so model.keras loads anywhere without this package.
    model.compile(loss=bce)
    return history
