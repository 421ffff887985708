"""Log-mel features of whole recordings, computed once with the device's front end and cached.

Training crops windows out of these arrays every epoch, so audio is decoded and resampled
once per file and feature setting, not once per epoch (50 three-minute MP3s take a while).
The cache key covers the file's path, size and modification time and every feature
parameter, so an edited file or a changed front end is recomputed, never reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from device.audio import AudioError, load_audio
from device.features import FeatureParams, logmel

CACHE_VERSION = 1


def _key(path: Path, params: FeatureParams) -> str:
    # Log-mel dB whatever the front end (PCEN is computed from it, train.frontend): one entry.
    params = dataclasses.replace(params, front_end="logmel")
    stat = path.stat()
    blob = json.dumps([CACHE_VERSION, str(path.resolve()), stat.st_size, stat.st_mtime_ns,
                       params.to_dict()], sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


def recording_features(path: Path, params: FeatureParams, cache_dir: Path | None) -> np.ndarray:
    """(frames, n_mels) float32 log-mel dB of a whole file (``device.features.logmel``), whatever
    ``params.front_end`` says (:mod:`train.frontend` turns it into the model's inputs).

    Raises :class:`device.audio.AudioError` (one line naming the file) when it cannot be read.
    """
    cached = None
    if cache_dir is not None:
        cached = Path(cache_dir) / f"{_key(path, params)}.npy"
        if cached.is_file():
            try:
                return np.load(cached)
            except (OSError, ValueError):
                pass  # a damaged cache entry: recompute it
    features = logmel(load_audio(path, params.sample_rate), params)
    if len(features) == 0:
        raise AudioError(f"{path}: shorter than one spectrogram frame ({params.n_fft} samples)")
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f"{cached.stem}.{os.getpid()}.tmp.npy")  # concurrent runs
        np.save(tmp, features)
        tmp.replace(cached)
    return features
