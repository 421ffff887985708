"""Training-only augmentation, on log-mel dB windows, seeded by the caller's generator.

Mixing happens in the mel power domain: the power spectrum of a sum of independent sounds is,
on average, the sum of their power spectra, so ``10 log10(10^(a/10) + g 10^(b/10))`` is the
log-mel of the mixture up to the random phase cross-term. Working on cached features instead
of waveforms keeps an epoch to a fraction of a second instead of re-running the front end.

- colouring (``eq_db``): a random smooth gain curve over the mel bands (a tilt and a ripple,
  microphone and habitat), before the background is mixed in: a curve on the whole window would
  be undone by the model's per-band mean, but the call's colour against another site's
  background is not;
- reverberation (``reverb_p``): a synthetic exponential tail per band, shorter for higher bands
  (air and foliage absorb them first), at a random RT60 and direct-to-reverberant ratio, added
  in the power domain before mixing;
- background mixing at a random SNR (total window power of the clean window over the added
  background), from background recordings and negative stretches of the training split;
- gain in dB (everything above the padding floor moves together);
- a shift along the mel axis of up to ``freq_shift_bands`` bands (calls of individuals and
  populations differ in pitch; the vacated edge bands repeat their neighbour);
- SpecAugment time and frequency masks (filled with the window's per-band mean, which the
  model's per-band normalisation maps to zero);
- optionally mixup of two windows (power-domain mix, labels combined with the same weights).

Validation and test windows never pass through here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from device.config import AugmentSection

AugmentParams = AugmentSection
"""The ``train.augment`` section of config.yaml is the augmentation's parameters (defaults,
bounds and descriptions live there, once); tests build one with the values they pin."""


def _power(db: np.ndarray) -> np.ndarray:
    return np.power(np.float32(10.0), db / np.float32(10.0), dtype=np.float32)


def mix_at_snr(x: np.ndarray, background: np.ndarray, snr_db: np.ndarray, floor: float) -> np.ndarray:
    """Mix (n, frames, n_mels) dB windows with backgrounds so that each SNR is ``snr_db[i]`` dB."""
    signal, noise = _power(x), _power(background)
    gain = signal.sum(axis=(1, 2)) / np.maximum(noise.sum(axis=(1, 2)), 1e-30) / 10 ** (snr_db / 10)
    mixed = signal + gain[:, None, None].astype(np.float32) * noise
    return np.maximum(10 * np.log10(np.maximum(mixed, 1e-30)), floor).astype(np.float32)


def colour(x: np.ndarray, eq_db: float, rng: np.random.Generator, floor: float) -> np.ndarray:
    """(n, frames, n_mels) dB windows, each with a random smooth gain curve over the bands: a
    tilt of up to +-eq_db from the lowest to the highest band plus a cosine ripple of up to
    +-eq_db / 2 (1 to 3 half periods). Padding (the floor) stays the floor."""
    n, _, bands = x.shape
    position = np.linspace(-1.0, 1.0, bands)
    tilt = rng.uniform(-eq_db, eq_db, size=(n, 1))
    ripple = rng.uniform(-eq_db / 2, eq_db / 2, size=(n, 1))
    periods = rng.integers(1, 4, size=(n, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1))
    curve = (tilt * position + ripple * np.cos(np.pi * periods * position + phase)).astype(np.float32)
    return np.where(x > floor, np.maximum(x + curve[:, None, :], floor), x)


def reverberate(x: np.ndarray, *, rt60_s: np.ndarray, drr_db: np.ndarray, frame_rate: float,
                floor: float) -> np.ndarray:
    """(n, frames, n_mels) dB windows plus an exponential tail per band: power
    P + g sum_k a^k P[t - k], with a per frame from the band's RT60 (``rt60_s[i]`` for the lowest
    band, half of it for the highest) and g giving the tail ``drr_db[i]`` dB less energy than the
    direct sound."""
    n, frames, bands = x.shape
    power = _power(x)
    rt60 = rt60_s[:, None] * np.linspace(1.0, 0.5, bands)[None, :]  # (n, bands)
    a = np.power(10.0, -6.0 / (rt60 * frame_rate)).astype(np.float32)  # 60 dB in rt60 seconds
    g = (np.power(10.0, -drr_db / 10)[:, None] * (1 - a) / a).astype(np.float32)
    tail = np.zeros((n, bands), np.float32)
    out = power.copy()
    above = np.maximum(power - np.float32(10 ** (floor / 10)), 0)  # digital silence has no echo
    for t in range(1, frames):
        tail = a * (tail + above[:, t - 1])
        out[:, t] += g * tail
    return np.maximum(10 * np.log10(np.maximum(out, 1e-30)), floor).astype(np.float32)


def shift_bands(window: np.ndarray, shift: int) -> np.ndarray:
    """(frames, n_mels) window moved ``shift`` bands up (positive) or down, edges repeated."""
    index = np.clip(np.arange(window.shape[1]) - shift, 0, window.shape[1] - 1)
    return window[:, index]


def _uniform(rng: np.random.Generator, bounds: list[float], n: int) -> np.ndarray:
    """n draws from [low, high) of a ``[low, high]`` setting."""
    return np.asarray(rng.uniform(bounds[0], bounds[1], size=n))


def augment(
    x: np.ndarray,
    y: np.ndarray,
    *,
    params: AugmentParams,
    rng: np.random.Generator,
    floor: float,
    backgrounds: Callable[[int, np.random.Generator], np.ndarray] | None = None,
    frame_rate: float = 50.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Augmented copies of a batch: x (n, frames, n_mels) dB, y (n, n_labels).

    ``backgrounds(k, rng)`` returns k (frames, n_mels) dB windows to mix in; None disables mixing.
    ``frame_rate``: frames per second (for reverberation times). The same generator state gives
    the same output; colouring and reverberation draw from it only when enabled, so a config
    without them augments exactly as before they existed.
    """
    x = x.copy()
    y = y.copy()
    n, frames, bands = x.shape
    if params.eq_db > 0:
        x = colour(x, params.eq_db, rng, floor)
    if params.reverb_p > 0:
        chosen = np.flatnonzero(rng.random(n) < params.reverb_p)
        if len(chosen):
            x[chosen] = reverberate(x[chosen], rt60_s=_uniform(rng, params.reverb_rt60_s, len(chosen)),
                                    drr_db=_uniform(rng, params.reverb_drr_db, len(chosen)),
                                    frame_rate=frame_rate, floor=floor)
    if backgrounds is not None and params.background_p > 0:
        chosen = np.flatnonzero(rng.random(n) < params.background_p)
        if len(chosen):
            snr = _uniform(rng, params.snr_db, len(chosen))
            x[chosen] = mix_at_snr(x[chosen], backgrounds(len(chosen), rng), snr, floor)
    gain = _uniform(rng, params.gain_db, n).astype(np.float32)
    above = x > floor
    x = np.where(above, np.maximum(x + gain[:, None, None], floor), x)
    if params.freq_shift_bands:
        shifts = np.asarray(rng.integers(-params.freq_shift_bands, params.freq_shift_bands + 1, size=n))
        for k in np.flatnonzero(shifts):
            x[k] = shift_bands(x[k], int(shifts[k]))
    band_mean = x.mean(axis=1, keepdims=True)  # (n, 1, bands)
    for i in range(n):
        for _ in range(params.time_masks):
            width = int(rng.integers(0, params.time_mask_frames + 1))
            if width:
                t0 = int(rng.integers(0, max(1, frames - width)))
                x[i, t0:t0 + width] = band_mean[i]
        for _ in range(params.freq_masks):
            width = int(rng.integers(0, params.freq_mask_bands + 1))
            if width:
                f0 = int(rng.integers(0, max(1, bands - width)))
                x[i, :, f0:f0 + width] = band_mean[i, :, f0:f0 + width]
    if params.mixup_alpha > 0 and n > 1:
        lam = np.asarray(rng.beta(params.mixup_alpha, params.mixup_alpha, size=n), dtype=np.float32)
        partner = rng.permutation(n)
        mixed = lam[:, None, None] * _power(x) + (1 - lam[:, None, None]) * _power(x[partner])
        x = np.maximum(10 * np.log10(np.maximum(mixed, 1e-30)), floor).astype(np.float32)
        y = lam[:, None] * y + (1 - lam[:, None]) * y[partner]
    return x.astype(np.float32, copy=False), y
