"""Site adaptation by distillation: other runs of the recipe teach the model the new site.

Self-training (:mod:`train.adapt_select`) can only take the calls the model already ranks
highest; the calls it misses score low, and it cannot pick those. Several models of the same
recipe trained at other seeds, averaged, rank a new site's windows better than any one of them
(on the two Bobwhite sites, three models' mean score beat the single models' mean clip ROC-AUC
in every direction; BENCHMARKS.md, "Six seeds, ensembles, distillation").
``python -m train.adapt --distill-from RUN ...`` takes those runs as teachers: their mean score of every window of the site becomes the
window's target (soft, not a 0/1 pseudo-label: nothing is thrown away, nothing is rounded to a
call), and the model is fine-tuned on the site's windows with those targets together with its
own training data, as self-training fine-tunes it. The device then runs one model, the size it
was. For a model with a frame output the teachers' mean frame scores are the frame targets too.

The teachers must score what the model scores: the same labels, features and window length
(:func:`check_teacher_runs` refuses others, in one line).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from device.runrecord import RunRecord, RunRecordError
from train.adapt_site import SiteWindows


class TeacherRunError(Exception):
    """A teacher run that cannot teach this model (missing, or scoring something else)."""


def check_teacher_runs(paths: list[Path], student: RunRecord) -> list[Path]:
    """The run folders of ``paths``, checked against the run they teach (``student``): a
    model.keras, and the same labels, window length and features. Reads run.json only (no
    TensorFlow), so a wrong teacher is one line before anything loads."""
    folders = []
    for path in paths:
        folder = path.parent if path.is_file() else path
        if not (folder / "model.keras").is_file():
            raise TeacherRunError(
                f"{path}: no model.keras there; --distill-from takes run folders python -m train wrote"
            )
        try:
            teacher = RunRecord.load(folder)
        except RunRecordError as exc:
            raise TeacherRunError(str(exc)) from None
        for what, mine, theirs in (
            ("labels", list(student.labels), list(teacher.labels)),
            ("window_s", student.window_s, teacher.window_s),
            ("features", student.features, teacher.features),
        ):
            if mine != theirs:
                raise TeacherRunError(
                    f"{folder}: its {what} ({theirs}) differ from the run's ({mine}); a teacher must "
                    "score what the model scores (train it from the same config at another seed)"
                )
        folders.append(folder)
    return folders


def load_teacher_runs(folders: list[Path]) -> list:
    """The Keras models of the run folders :func:`check_teacher_runs` passed."""
    from train.adapt_tune import load_model

    return [load_model(folder / "model.keras") for folder in folders]


def site_targets(
    teachers: list, site: SiteWindows, *, batch: int = 512
) -> tuple[np.ndarray, np.ndarray | None]:
    """The teachers' mean probabilities of every window of ``site`` (as the device would cut it):
    window targets (N, n_labels) and, when the teachers have a frame output, frame targets
    (N, steps, n_labels) (else None)."""
    from train.fit import predict_both

    windows: list[np.ndarray] = []
    frames: list[np.ndarray] = []
    for start in range(0, len(site), batch):
        x = site.model_inputs(np.arange(start, min(start + batch, len(site))))
        scored = [predict_both(teacher, x) for teacher in teachers]
        windows.append(np.mean([w for w, _ in scored], axis=0))
        steps = [f for _, f in scored if f is not None]
        if steps:
            frames.append(np.mean(steps, axis=0))
    window_targets = np.concatenate(windows).astype(np.float32)
    if not frames:
        return window_targets, None
    return window_targets, np.concatenate(frames).astype(np.float32)
