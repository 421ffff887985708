"""What training leaves in a run folder, read and checked before TensorFlow is even imported.

The run folder contract (written by ``python -m train``)::

    runs/<name>/
      model.keras         Keras 3 model: (None, frames, n_mels, 1) float32 log-mel dB -> (None, n_labels) LOGITS
      run.json            labels, features, window_s, thresholds (probability units), recommended_hop_s, ...
      calibration.npy     float32 (N, frames, n_mels, 1): training windows for int8 calibration
      test_windows.npz    x (N, frames, n_mels, 1) float32, y (N, n_labels) 0/1, source (N,), start_s (N,)
      config.resolved.yaml, report.md, metrics.json, ...

Every problem is a :class:`convert.ConvertInputError` naming the file (exit code 2).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from convert import ConvertInputError
from device.runrecord import RETRAIN, RUN_JSON, RunRecord, RunRecordError

MODEL_KERAS = "model.keras"
CALIBRATION = "calibration.npy"
TEST_WINDOWS = "test_windows.npz"
RESOLVED_CONFIG = "config.resolved.yaml"


@dataclass(frozen=True, kw_only=True)
class RunFolder(RunRecord):
    """A run folder whose files exist and agree with its run.json (the :class:`RunRecord` it
    is); the arrays are loaded on demand."""

    path: Path

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_KERAS

    @property
    def window_shape(self) -> tuple[int, int, int]:
        """(frames, n_mels, 1): one model input without the batch axis."""
        return (self.features.window_frames(self.window_s), self.features.n_mels, 1)

    def calibration_windows(self, *, max_windows: int) -> np.ndarray:
        """At most ``max_windows`` training windows, float32 (n, frames, n_mels, 1).

        Evenly spaced over the saved sample, so a sample saved in class or file order is still
        covered end to end.
        """
        windows = _load_windows(self.path / CALIBRATION, self.window_shape)
        if len(windows) > max_windows:
            windows = windows[np.linspace(0, len(windows) - 1, max_windows).round().astype(int)]
        return np.ascontiguousarray(windows, dtype=np.float32)

    def test_windows(self) -> tuple[np.ndarray, np.ndarray]:
        """The held-out test split: x float32 (N, frames, n_mels, 1), y float32 (N, n_labels) of 0/1."""
        path = self.path / TEST_WINDOWS
        try:
            with np.load(path, allow_pickle=False) as data:
                if "x" not in data or "y" not in data:
                    raise ConvertInputError(f"{path}: needs arrays 'x' and 'y'; {RETRAIN}")
                x, y = data["x"], data["y"]
        except (OSError, ValueError) as exc:
            raise ConvertInputError(f"{path}: cannot read ({exc}); {RETRAIN}") from None
        _check_shape(path, x, self.window_shape)
        if y.ndim == 1 and len(self.labels) == 1:
            y = y[:, None]
        if y.shape != (len(x), len(self.labels)):
            raise ConvertInputError(
                f"{path}: y has shape {list(y.shape)}, expected [{len(x)}, {len(self.labels)}] "
                f"(one column per label of {RUN_JSON})"
            )
        if not np.isin(y, (0, 1)).all():
            raise ConvertInputError(f"{path}: y must hold 0/1 labels")
        return x.astype(np.float32, copy=False), y.astype(np.float32, copy=False)


def _check_shape(path: Path, windows: np.ndarray, shape: tuple[int, int, int]) -> None:
    if windows.ndim != 4 or tuple(windows.shape[1:]) != shape or len(windows) == 0:
        raise ConvertInputError(
            f"{path}: windows of shape {list(windows.shape)}, expected [N>0, {', '.join(map(str, shape))}] "
            f"from the features and window_s in {RUN_JSON}; {RETRAIN}"
        )
    if not np.issubdtype(windows.dtype, np.floating):
        raise ConvertInputError(f"{path}: windows must be float log-mel dB, got {windows.dtype}")


def _load_windows(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    try:
        windows = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConvertInputError(f"{path}: cannot read ({exc}); {RETRAIN}") from None
    _check_shape(path, windows, shape)
    if not np.isfinite(windows).all():
        raise ConvertInputError(f"{path}: calibration windows contain NaN or infinity; {RETRAIN}")
    return windows


def load_run_folder(path: str | Path) -> RunFolder:
    """Check that ``path`` is a complete run folder and read run.json (arrays stay on disk)."""
    path = Path(path)
    if not path.is_dir():
        raise ConvertInputError(
            f"{path}: no such run folder; pass the folder 'python -m train' wrote (runs/<name>)"
        )
    for name, what in (
        (RUN_JSON, "run description"),
        (MODEL_KERAS, "Keras model"),
        (CALIBRATION, "calibration windows for int8 quantization"),
        (TEST_WINDOWS, "test windows for verification"),
    ):
        if not (path / name).is_file():
            raise ConvertInputError(f"{path / name}: missing ({what}); {RETRAIN}")
    try:
        record = RunRecord.load(path)
    except RunRecordError as exc:
        raise ConvertInputError(str(exc)) from None
    run = RunFolder(path=path, **{f.name: getattr(record, f.name) for f in fields(record)})
    # Header-only reads: a wrong shape is reported before minutes of TensorFlow start-up.
    _load_windows(path / CALIBRATION, run.window_shape)
    return run
