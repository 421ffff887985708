"""Stage: features. The front end (log-mel or PCEN): defined once, used by training, conversion
checks and the device.

Contract: mono float32 samples at ``FeatureParams.sample_rate`` Hz in, (frames, n_mels) float32
out (log-mel in dB, or PCEN); :class:`StreamingFrontEnd` is not thread-safe (one owner, the
worker), the batch functions are.

Pure NumPy/SciPy, float32. Framing is not centred (frame ``i`` covers samples
``[i * hop_length, i * hop_length + n_fft)``), so a stream can reproduce it exactly: a frame
exists as soon as its last sample has arrived. No per-clip normalisation happens here.

Two front ends share the mel power spectrum (floored at ``log_floor``):

- ``logmel``: 10 log10 of it, dB;
- ``pcen``: per-channel energy normalisation (Lostanlen et al. 2019, "Per-Channel Energy
  Normalization: Why and How", the definition of ``librosa.pcen``): each band divided by a
  causal first-order smoothing of itself raised to ``pcen_gain``, then root-compressed. It
  follows each band's background level over ``pcen_time_constant_s``, so a recorder's gain, a
  site's steady noise and the distance of a call move it far less than they move log-mel. The
  smoother's state is carried from frame to frame (and across pushes); it starts at the first
  frame's own power (librosa's steady-state start), so a stream and a whole file agree.

Two entry points per front end share one implementation:

- :func:`features` (and :func:`logmel`) turns a whole signal into frames (training, replay of
  short files, tests);
- :class:`StreamingFrontEnd` takes chunks of any size and returns only the frames each chunk
  completes, so the cost of a hop grows with the hop, not with the model window.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import cast

import numpy as np

from device.config.fields import setting_problems
from device.config.rules import feature_problems
from device.config.sections_features import FeatureSection

FEATURE_KIND = "logmel-v1"
_PCEN_FIELDS = ("pcen_time_constant_s", "pcen_gain", "pcen_bias", "pcen_power", "pcen_eps")
_BLOCK_FRAMES = 128
"""Frames per block in :func:`logmel`. NumPy's FFT (float32 since NumPy 2) is ~5x slower per
frame on 512-frame blocks than on 64-128 here; small blocks also keep the intermediates in the
CPU cache. NumPy's FFT rather than scipy.fft: importing scipy.fft costs ~30 MiB of RSS on the
device, for ~0.1 CPU-s more per hour of streamed audio."""
_DB_PER_NEPER = np.float32(10.0 / np.log(10.0))  # 10 log10(x) == _DB_PER_NEPER * ln(x)


class FeatureParamsError(ValueError):
    """Feature settings that this code cannot reproduce (unknown key, unsupported value)."""


@dataclass(frozen=True)
class FeatureParams(FeatureSection):
    """Every setting of the front end: the ``train.features`` section of config.yaml (defaults,
    bounds and descriptions live there, once) plus the recipe's ``kind``. Part of the model
    bundle: change one, retrain. Checked on construction, so a model.json is held to the same
    bounds as a config."""

    kind: str = FEATURE_KIND
    """Name and version of the feature recipe; a device refuses bundles made for another."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            # Types first, so the range checks below compare numbers; numpy scalars are
            # accepted and stored as plain int/float (model.json must serialise them).
            value, kind = getattr(self, f.name), cast(type, type(f.default))
            if kind is str:
                ok = isinstance(value, str)
            else:
                number = numbers.Integral if kind is int else numbers.Real
                ok = isinstance(value, number) and not isinstance(value, bool)
            if not ok:
                expected = {int: "an integer", float: "a number", str: "a string"}[kind]
                raise FeatureParamsError(f"{f.name}: must be {expected}, got {value!r}")
            object.__setattr__(self, f.name, kind(value))
        problems = setting_problems(self)
        if self.kind != FEATURE_KIND:
            problems.append(f"kind: this device computes {FEATURE_KIND!r}, got {self.kind!r}")
        problems += feature_problems(self)
        if problems:
            raise FeatureParamsError("; ".join(problems))

    @classmethod
    def from_dict(cls, values: dict) -> FeatureParams:
        """Build from a mapping (config or model.json); unknown keys are refused, not ignored.

        Values are not converted: ``"16000"`` or ``16000.5`` for an integer setting is an error,
        never silently turned into something else.
        """
        if not isinstance(values, Mapping):
            raise FeatureParamsError(f"features must be a mapping, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in set(values) - known)
        if unknown:
            raise FeatureParamsError(
                f"unknown feature setting(s) {', '.join(unknown)}: this device cannot reproduce them"
            )
        return cls(**values)

    def to_dict(self) -> dict:
        """Every setting; a log-mel front end leaves out the PCEN ones (and ``front_end``), so its
        model.json reads exactly as before PCEN existed and older devices still load it."""
        values = dataclasses.asdict(self)
        if self.front_end == "logmel":
            for name in ("front_end",) + _PCEN_FIELDS:
                del values[name]
        return values

    @property
    def pcen_smoothing(self) -> float:
        """Smoother coefficient s per frame, from the time constant as ``librosa.pcen`` derives it."""
        t_frames = self.pcen_time_constant_s * self.frame_rate
        return float((np.sqrt(1 + 4 * t_frames**2) - 1) / (2 * t_frames**2))

    @property
    def frame_rate(self) -> float:
        """Frames per second."""
        return self.sample_rate / self.hop_length

    def n_frames(self, n_samples: int) -> int:
        """Number of complete frames in ``n_samples`` samples (0 when shorter than one frame)."""
        return 0 if n_samples < self.n_fft else 1 + (n_samples - self.n_fft) // self.hop_length

    def window_frames(self, window_s: float) -> int:
        """Frames in a model window of ``window_s`` seconds."""
        return self.n_frames(round(window_s * self.sample_rate))

    @cached_property
    def _window(self) -> np.ndarray:
        # Periodic Hann, as scipy.signal.get_window("hann", n, fftbins=True) and librosa; written
        # out because importing scipy.signal costs ~50 MiB of RSS on the device.
        n = np.arange(self.win_length)
        window = 0.5 - 0.5 * np.cos(2 * np.pi * n / self.win_length)
        pad = self.n_fft - self.win_length
        return np.pad(window, (pad // 2, pad - pad // 2)).astype(np.float32)

    @cached_property
    def _pcen_kernel(self) -> tuple[np.ndarray, np.ndarray]:
        """(L, p), float32: for a block of n frames, smoother = L[:n, :n] @ power + p[:n] * previous,
        L[j, k] = s (1 - s)^(j - k) for k <= j, p[j] = (1 - s)^(j + 1)."""
        s = self.pcen_smoothing
        j = np.arange(_BLOCK_FRAMES)
        lag = j[:, None] - j[None, :]
        kernel = np.where(lag >= 0, s * (1 - s) ** np.maximum(lag, 0), 0.0)
        return kernel.astype(np.float32), ((1 - s) ** (j + 1))[:, None].astype(np.float32)

    @cached_property
    def _mel_basis_t(self) -> np.ndarray:
        """Transposed mel filterbank, shape (n_fft // 2 + 1, n_mels), float32, C-contiguous."""
        return np.ascontiguousarray(mel_filterbank(self).T)


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    log_part = min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep
    return np.where(hz >= min_log_hz, log_part, hz / f_sp)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    log_part = min_log_hz * np.exp(logstep * (np.maximum(mel, min_log_mel) - min_log_mel))
    return np.where(mel >= min_log_mel, log_part, mel * f_sp)


def mel_filterbank(params: FeatureParams) -> np.ndarray:
    """Triangular mel filters, shape (n_mels, n_fft // 2 + 1), Slaney-normalised, float32."""
    fft_hz = np.linspace(0, params.sample_rate / 2, params.n_fft // 2 + 1)
    edges_hz = _mel_to_hz(
        np.linspace(_hz_to_mel(params.fmin), _hz_to_mel(params.fmax), params.n_mels + 2)
    )
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    return weights.astype(np.float32)


_RFFT_TAKES_OUT = np.lib.NumpyVersion(np.__version__) >= "2.0.0"
"""``np.fft.rfft(..., out=)`` exists from NumPy 2.0; older NumPy (with tflite_runtime) copies."""


class _SpectrumBuffers:
    """One caller's arrays for the FFT of up to ``rows`` frames, reused from block to block.

    NumPy's rfft of float32 frames runs in float64: it casts the frames up and the spectrum back
    down, and allocated those temporaries (~1 MiB for a 128-frame block) afresh for every block.
    Between a replay's other large arrays the allocator hands them back to the system each time,
    so every block paid page faults for them: ~0.5 CPU-s per audio hour. The casts are done here
    into these arrays, the same conversions in the same order, so the mel power is bit for bit
    what ``np.fft.rfft(frames * window)`` gives. Not thread-safe: one owner.
    """

    def __init__(self, params: FeatureParams, rows: int) -> None:
        bins = params.n_fft // 2 + 1
        self.windowed = np.empty((rows, params.n_fft), np.float64)
        """Frames times the window (product rounded to float32, as NumPy does), float64."""
        self.spectrum = np.empty((rows, bins), np.complex128)
        self.power = np.empty((rows, bins), np.float32)
        self.imag_power = np.empty((rows, bins), np.float32)


def _frames_to_mel_power(
    frames: np.ndarray, params: FeatureParams, buffers: _SpectrumBuffers
) -> np.ndarray:
    """(n, n_fft) float32 sample frames -> (n, n_mels) float32 mel power, floored at log_floor.
    ``buffers`` holds at least n rows."""
    n = len(frames)
    windowed, spectrum = buffers.windowed[:n], buffers.spectrum[:n]
    np.multiply(frames, params._window, out=windowed, dtype=np.float32)
    if _RFFT_TAKES_OUT:
        np.fft.rfft(windowed, axis=-1, out=spectrum)
    else:  # NumPy < 2 (tflite_runtime images): the same transform, its result copied in
        spectrum[...] = np.fft.rfft(windowed, axis=-1)
    # |X|^2 before the filterbank: half the multiply-adds of filtering the interleaved
    # (re, im) view, and ~20 % faster for a 0.5 s push (25 frames). Each part is rounded to
    # float32 (the complex64 spectrum NumPy returns) before it is squared.
    power, imag_power = buffers.power[:n], buffers.imag_power[:n]
    np.square(spectrum.real, out=power, dtype=np.float32)
    np.square(spectrum.imag, out=imag_power, dtype=np.float32)
    power += imag_power
    mel = power @ params._mel_basis_t
    np.maximum(mel, params.log_floor, out=mel)
    return mel


def _frames_to_logmel(
    frames: np.ndarray, params: FeatureParams, buffers: _SpectrumBuffers
) -> np.ndarray:
    """(n, n_fft) float32 sample frames -> (n, n_mels) float32 log-mel in dB."""
    mel = _frames_to_mel_power(frames, params, buffers)
    np.log(mel, out=mel)  # natural log and a scale: several times faster than log10 here
    mel *= _DB_PER_NEPER
    return mel


def pcen_smooth(
    power: np.ndarray, params: FeatureParams, previous: np.ndarray | None
) -> np.ndarray:
    """Each band's smoothed power M, float32 (n, n_mels), of (n, n_mels) mel power:
    M[t] = (1 - s) M[t - 1] + s E[t], starting from ``previous`` (the smoother after the last
    frame before these), or at E[0] when None (a new stream). Blocks of at most 128 frames, each
    one matrix product, so a stream's cost grows with its chunks and whole files stay fast (the
    block borders move with the chunking: streams and files agree to float32 rounding)."""
    power = np.asarray(power, np.float32)
    kernel, decay = params._pcen_kernel
    state = power[0] if previous is None and len(power) else previous
    if len(power) <= _BLOCK_FRAMES:  # a stream's push: one product
        n = len(power)
        return kernel[:n, :n] @ power + decay[:n] * state
    out = np.empty(power.shape, np.float32)
    for start in range(0, len(power), _BLOCK_FRAMES):
        block = power[start : start + _BLOCK_FRAMES]
        n = len(block)
        out[start : start + n] = kernel[:n, :n] @ block + decay[:n] * state
        state = out[start + n - 1]
    return out


def pcen_from_power(power: np.ndarray, smooth: np.ndarray, params: FeatureParams) -> np.ndarray:
    """PCEN, float32 (n, n_mels): (E / (eps + M)^alpha + delta)^r - delta^r, as librosa.pcen."""
    value = np.asarray(smooth, np.float32) + np.float32(params.pcen_eps)
    np.power(value, np.float32(-params.pcen_gain), out=value)  # (eps + M)^-alpha
    value *= power
    value += np.float32(params.pcen_bias)
    if params.pcen_power == 0.5:
        np.sqrt(value, out=value)
    else:
        np.power(value, np.float32(params.pcen_power), out=value)
    value -= np.float32(params.pcen_bias**params.pcen_power)
    return value


def pcen_of_logmel(logmel_db: np.ndarray, params: FeatureParams) -> np.ndarray:
    """PCEN (n, n_mels) float32 of a whole recording's log-mel dB frames (as cached by training):
    the same frames :func:`features` gives for the file, up to the dB round trip (~1e-6)."""
    power = np.power(
        np.float32(10.0), np.asarray(logmel_db, np.float32) / np.float32(10.0), dtype=np.float32
    )
    return pcen_from_power(power, pcen_smooth(power, params, None), params)


def logmel(samples: np.ndarray, params: FeatureParams) -> np.ndarray:
    """Log-mel spectrogram of a whole signal.

    samples: mono float32 (or castable) at ``params.sample_rate``, full scale +-1.
    Returns float32 dB (10 log10 of mel power), shape (n_frames, n_mels); (0, n_mels) when
    the signal is shorter than one frame.
    """
    return _per_frame(samples, params, _frames_to_logmel, None)


def _mel_power(
    samples: np.ndarray, params: FeatureParams, buffers: _SpectrumBuffers | None = None
) -> np.ndarray:
    """Mel power (not dB) of a whole signal, shape (n_frames, n_mels) float32 (PCEN's input)."""
    return _per_frame(samples, params, _frames_to_mel_power, buffers)


def _per_frame(
    samples: np.ndarray, params: FeatureParams, transform, buffers: _SpectrumBuffers | None
) -> np.ndarray:
    """``transform(frames, params, buffers)`` over the signal's frames, in blocks of
    _BLOCK_FRAMES; ``buffers`` (of _BLOCK_FRAMES rows) a stream's own, or None for this call's."""
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"features expect mono samples, got shape {samples.shape}")
    n = params.n_frames(len(samples))
    if n == 0:
        return np.zeros((0, params.n_mels), np.float32)
    # Overlapping frames as a view, no copy. np.ndarray costs a few microseconds less per call
    # than as_strided, which counts for a stream's many small pushes.
    step = samples.itemsize
    frames = np.ndarray(
        (n, params.n_fft), np.float32, buffer=samples, strides=(params.hop_length * step, step)
    )
    if buffers is None:
        buffers = _SpectrumBuffers(params, min(n, _BLOCK_FRAMES))
    if n <= _BLOCK_FRAMES:
        return transform(frames, params, buffers)
    out = np.empty((n, params.n_mels), np.float32)
    for start in range(0, n, _BLOCK_FRAMES):
        stop = start + _BLOCK_FRAMES
        out[start:stop] = transform(frames[start:stop], params, buffers)
    return out


def features(samples: np.ndarray, params: FeatureParams) -> np.ndarray:
    """The model's input frames of a whole signal, by ``params.front_end``: float32
    (n_frames, n_mels), log-mel dB (:func:`logmel`) or PCEN (a stream started at sample 0)."""
    if params.front_end == "logmel":
        return logmel(samples, params)
    power = _mel_power(samples, params)
    if len(power) == 0:
        return power
    return pcen_from_power(power, pcen_smooth(power, params, None), params)


class StreamingFrontEnd:
    """The front end over a stream: each :meth:`push` returns the frames that its chunk completes.

    Keeps at most ``n_fft - 1`` pending samples between calls (and, for PCEN, the smoother's
    n_mels values), so the work per call is proportional to the chunk, never to the model
    window. The frames it returns are those of :func:`features` on the concatenated stream.
    Not thread-safe: one owner.
    """

    def __init__(self, params: FeatureParams) -> None:
        self.params = params
        self._pending = np.zeros(0, np.float32)
        self._smooth: np.ndarray | None = None
        self._buffers = _SpectrumBuffers(params, _BLOCK_FRAMES)
        self.frames_emitted = 0
        """Frames returned so far; frame ``k`` ends at sample ``k * hop_length + n_fft``."""

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """chunk: mono float32 samples, any length. Returns (k, n_mels) float32, k >= 0."""
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim != 1:
            raise ValueError(f"push expects mono samples, got shape {chunk.shape}")
        buffer = np.concatenate((self._pending, chunk)) if len(self._pending) else chunk
        n = self.params.n_frames(len(buffer))
        if n == 0:
            self._pending = buffer.copy()
            return np.zeros((0, self.params.n_mels), np.float32)
        complete = buffer[: (n - 1) * self.params.hop_length + self.params.n_fft]
        if self.params.front_end == "logmel":
            out = _per_frame(complete, self.params, _frames_to_logmel, self._buffers)
        else:
            power = _mel_power(complete, self.params, self._buffers)
            smooth = pcen_smooth(power, self.params, self._smooth)
            self._smooth = smooth[-1].copy()
            out = pcen_from_power(power, smooth, self.params)
        self._pending = buffer[n * self.params.hop_length :].copy()
        self.frames_emitted += n
        return out

    def reset(self) -> None:
        """Forget pending samples and the PCEN smoother (after a gap in the audio, e.g. a
        reopened microphone): the next frame starts a new stream."""
        self._pending = np.zeros(0, np.float32)
        self._smooth = None
        self.frames_emitted = 0


StreamingLogMel = StreamingFrontEnd
"""The name from before PCEN: a stream of whichever front end the params name."""
