"""A new site's unlabelled recordings as windows: features, scores in several views, crops.

Every file is turned into the device's log-mel features once (the training cache), tiled into
windows every ``hop_s`` as the device scores a stream, and each window is scored in ``views``:
the window itself and the window shifted by a fraction of the hop either way
(:mod:`train.adapt_select` trusts only what every view agrees on). Training crops are cut from
the same features, jittered by up to the views' shift, with the context a stateful front end
needs (:mod:`train.frontend`), exactly as :class:`train.windows.WindowSampler` cuts them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.audio import AudioError
from device.features import FeatureParams
from train.cache import recording_features
from train.frontend import context_frames, recording_inputs
from train.windows import crop, floor_db, tile_starts

Predict = Callable[[np.ndarray], np.ndarray]
"""(n, frames, n_mels, 1) float32 model inputs -> (n, n_labels) probabilities."""


@dataclass
class SiteWindows:
    """The unlabelled site: its recordings' features and the windows tiled over them."""

    files: list[Path]
    """Recordings read (unreadable ones are skipped and reported)."""
    features: list[np.ndarray]
    """Per file, (frames, n_mels) float32 log-mel dB of the whole recording."""
    file_index: np.ndarray
    """(N,) int: the file each window comes from."""
    start_s: np.ndarray
    """(N,) float: window start, seconds from the start of its file."""
    params: FeatureParams
    window_s: float
    hop_s: float
    skipped: list[str]
    """One line per file that could not be read."""

    @property
    def sources(self) -> np.ndarray:
        """(N,) str: each window's file, as given."""
        return np.array([str(self.files[i]) for i in self.file_index], dtype=str)

    @property
    def hours(self) -> float:
        return sum(len(f) for f in self.features) / self.params.frame_rate / 3600

    def __len__(self) -> int:
        return len(self.start_s)

    def shift_s(self) -> float:
        """The views' shift either way, seconds: half the hop."""
        return self.hop_s / 2

    def score_views(self, predict: Predict, *, batch: int = 256) -> np.ndarray:
        """(3, N, n_labels) probabilities of every window shifted by -shift, 0, +shift seconds."""
        frames, floor = self.params.window_frames(self.window_s), floor_db(self.params)
        views = []
        for offset in (-self.shift_s(), 0.0, self.shift_s()):
            out = []
            for i, features in enumerate(self.features):
                inputs = recording_inputs(
                    features, self.params
                )  # what the device computes for the file
                starts = self.start_s[self.file_index == i] + offset
                for k in range(0, len(starts), batch):
                    x = np.stack(
                        [
                            crop(inputs, round(s * self.params.frame_rate), frames, floor)
                            for s in starts[k : k + batch]
                        ]
                    )
                    out.append(predict(x[..., None]))
            views.append(np.concatenate(out))
        return np.stack(views)

    def model_inputs(self, rows: np.ndarray) -> np.ndarray:
        """(n, frames, n_mels, 1) float32 model inputs of the windows ``rows`` as the device sees them."""
        frames, floor = self.params.window_frames(self.window_s), floor_db(self.params)
        cache: dict[int, np.ndarray] = {}
        out = []
        for row in rows:
            i = int(self.file_index[row])
            if i not in cache:
                cache[i] = recording_inputs(self.features[i], self.params)
            out.append(
                crop(cache[i], round(self.start_s[row] * self.params.frame_rate), frames, floor)
            )
        return (
            np.stack(out)[..., None]
            if out
            else np.zeros((0, frames, self.params.n_mels, 1), np.float32)
        )

    def training_crops(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(n, context + frames, n_mels) float32 dB crops of the windows ``rows``, each shifted at
        random by up to :meth:`shift_s` (the views agreed over that range), kept inside its file."""
        frames, floor = self.params.window_frames(self.window_s), floor_db(self.params)
        context = context_frames(self.params)
        out = np.empty((len(rows), context + frames, self.params.n_mels), np.float32)
        for k, row in enumerate(rows):
            features = self.features[int(self.file_index[row])]
            duration = len(features) / self.params.frame_rate
            start = self.start_s[row] + rng.uniform(-self.shift_s(), self.shift_s())
            start = min(max(start, 0.0), max(duration - self.window_s, 0.0))
            frame = round(start * self.params.frame_rate)
            out[k] = crop(features, frame - context, context + frames, floor)
            before = context - frame
            if 0 < before <= context:
                out[k, :before] = out[k, before]  # as WindowSampler.window: the file's first frame
        return out


def read_site(
    files: list[Path],
    *,
    params: FeatureParams,
    window_s: float,
    hop_s: float,
    cache_dir: Path | None,
) -> SiteWindows:
    """Features of every readable file and the windows every ``hop_s`` over each (a file shorter
    than one window is one zero-padded window, as the device scores it)."""
    kept: list[Path] = []
    features: list[np.ndarray] = []
    index: list[np.ndarray] = []
    starts: list[np.ndarray] = []
    skipped: list[str] = []
    for path in files:
        try:
            f = recording_features(path, params, cache_dir)
        except AudioError as exc:
            skipped.append(str(exc))
            continue
        s = tile_starts(len(f) / params.frame_rate, window_s, hop_s)
        index.append(np.full(len(s), len(kept)))
        starts.append(s)
        kept.append(path)
        features.append(f)
    return SiteWindows(
        files=kept,
        features=features,
        file_index=np.concatenate(index) if index else np.zeros(0, int),
        start_s=np.concatenate(starts) if starts else np.zeros(0),
        params=params,
        window_s=window_s,
        hop_s=hop_s,
        skipped=skipped,
    )
