"""An optional teacher for site adaptation: a scorer the user supplies, one more view to agree with.

A model that already knows the species (BirdNET through a package the user installs, say; its
licence is non-commercial, so callwatch never depends on it or ships it) can vouch for, or veto,
the student's pseudo-labels: its score of a window is stacked with the student's views
(:func:`train.adapt_select.agreement`), so a pseudo-call must score high for the teacher too, and
site background low for it too.

What counts is the teacher's *ranking* of the site's windows, not its scale
(:func:`on_student_scale`): each teacher score is replaced by the student's score at the same
quantile of the site, so the teacher ranks a window as high as the student must. A general model
scores a species' calls on its own scale (BirdNET v2.4 gives the Bobwhite covey-call clips a median
probability of 0.01, their absences 0.0003), and stacked raw it would veto every call. The
student's calibrated threshold still guards the positives: a window the teacher ranks first is a
candidate only where the student's own score at that rank clears the threshold. The teacher is named as ``MODULE:FUNCTION`` (an importable
module) or ``path/to/file.py:FUNCTION``, and called once per file::

    def teacher(path: pathlib.Path, starts_s: numpy.ndarray, window_s: float, labels: list[str]) -> numpy.ndarray:
        '''(len(starts_s), len(labels)) probabilities in [0, 1] of the windows
        [start, start + window_s) of the audio file ``path``.'''
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np

from train.adapt_site import SiteWindows

Teacher = Callable[[Path, np.ndarray, float, list[str]], np.ndarray]


class TeacherError(Exception):
    """The teacher cannot be loaded or returned something unusable (one line for the user)."""


def load_teacher(spec: str) -> Teacher:
    """The function named by ``MODULE:FUNCTION`` or ``FILE.py:FUNCTION``."""
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise TeacherError(
            f"--teacher {spec!r}: expected MODULE:FUNCTION or path/to/file.py:FUNCTION"
        )
    try:
        if where.endswith(".py"):
            loader = importlib.util.spec_from_file_location("callwatch_teacher", where)
            if loader is None or loader.loader is None or not Path(where).is_file():
                raise TeacherError(f"--teacher {spec!r}: {where}: no such Python file")
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except TeacherError:
        raise
    except Exception as exc:  # the user's code: any failure to import is theirs to fix
        raise TeacherError(
            f"--teacher {spec!r}: cannot import {where} ({type(exc).__name__}: {exc})"
        ) from None
    function = getattr(module, name, None)
    if not callable(function):
        raise TeacherError(f"--teacher {spec!r}: {where} has no function {name!r}")
    return function


def teacher_view(teacher: Teacher, site: SiteWindows, labels: list[str]) -> np.ndarray:
    """(N, n_labels) the teacher's probabilities of every site window, in the site's order."""
    out = np.zeros((len(site), len(labels)))
    for i, path in enumerate(site.files):
        rows = np.flatnonzero(site.file_index == i)
        try:
            scores = np.asarray(
                teacher(path, site.start_s[rows], site.window_s, list(labels)), dtype=np.float64
            )
        except Exception as exc:  # the user's code
            raise TeacherError(f"teacher failed on {path} ({type(exc).__name__}: {exc})") from None
        if scores.shape != (len(rows), len(labels)) or not np.all((scores >= 0) & (scores <= 1)):
            raise TeacherError(
                f"teacher returned {scores.shape} for {path}, expected ({len(rows)}, {len(labels)}) "
                "probabilities in [0, 1]"
            )
        out[rows] = scores
    return out


def on_student_scale(teacher: np.ndarray, views: np.ndarray) -> np.ndarray:
    """The teacher's scores (N, n_labels) mapped onto the student's views (V, N, n_labels) by
    quantile: the window the teacher ranks at quantile q of the site gets the student's score at
    quantile q (over all views' scores of that label). Tied windows all take the tie's lowest
    rank: a window the teacher does not rank above others is not high for it, so a teacher that
    scores every window alike (one that hears nothing) vetoes every pseudo-call, and the windows
    it floors (BirdNET's logits clipped at -15) all sit at the bottom."""
    teacher = np.asarray(teacher, np.float64)
    n = teacher.shape[0]
    mapped = np.empty_like(teacher)
    for i in range(teacher.shape[1]):
        column = teacher[:, i]
        order = np.sort(column)
        quantile = (np.searchsorted(order, column, side="left") + 0.5) / n
        mapped[:, i] = np.quantile(np.asarray(views, np.float64)[:, :, i].ravel(), quantile)
    return mapped
