"""Datasets read once per run: the inventory of recordings and every recording's log-mel
features (cached on disk), shared by the main run and every fold of cross-validation.

Features are (frames, n_mels) float32 log-mel dB of the whole file, computed by the device's
own front end (train.cache -> device.features).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.audio import AudioError
from device.config import TrainSection
from device.features import FeatureParams
from train.cache import recording_features
from train.datasets import DatasetError, Inventory, Recording, load_datasets
from train.frontend import recording_inputs

Log = Callable[[str], None]
"""Where progress lines go (print, or a test's list.append)."""


@dataclass
class Prepared:
    """Datasets read and their features computed, shared by the main run and every fold."""

    inventory: Inventory
    features: dict[str, np.ndarray]
    """Recording name -> (frames, n_mels) float32 log-mel dB of the whole file."""
    params: FeatureParams
    data_root: Path
    inputs: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    """Recording name -> (frames, n_mels) model inputs of the whole file (log-mel: the features
    themselves; PCEN: computed from them on first use, :mod:`train.frontend`)."""

    def inputs_of(self, name: str) -> np.ndarray:
        if name not in self.inputs:
            self.inputs[name] = recording_inputs(self.features[name], self.params)
        return self.inputs[name]


def prepare_data(
    *, train_cfg: TrainSection, data_root: Path, cache_dir: Path | None, log: Log = print
) -> Prepared:
    """Read every dataset and compute (or load cached) features; unreadable files are skipped."""
    params = FeatureParams.from_dict(train_cfg.features.to_dict())
    inventory = load_datasets(
        train_cfg.datasets, data_root=data_root, labels=list(train_cfg.labels)
    )
    features: dict[str, np.ndarray] = {}
    kept: list[Recording] = []
    began = time.monotonic()
    for i, r in enumerate(inventory.recordings, 1):
        try:
            features[r.name] = recording_features(r.path, params, cache_dir)
            kept.append(r)
        except AudioError as exc:
            inventory.warn(f"skipped: {exc}", skipped_file=True)
        if i % 50 == 0 or i == len(inventory.recordings):
            log(
                f"features: {i}/{len(inventory.recordings)} recordings ({time.monotonic() - began:.0f} s)"
            )
    inventory.recordings = kept
    for label in inventory.labels:
        if not any(r.positives(label) for r in kept):
            raise DatasetError(
                f"train.labels: every recording with {label!r} was unreadable (see warnings)"
            )
    for warning in inventory.warnings:
        log(f"warning: {warning}")
    return Prepared(inventory, features, params, Path(data_root))
