"""Reading audio files and changing their sample rate, for training and replay alike.

Files are read with soundfile (libsndfile: wav, flac, ogg, opus, mp3), downmixed to mono by
averaging channels, and resampled with :class:`Resampler`, a streaming polyphase filter: a
whole file and the same file fed block by block give the same samples, so training, replay
and the live microphone path all see identical audio.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3")
"""File name endings that replay and training pick up from folders (case-insensitive)."""
MAX_ABS_SAMPLE = 1000.0
"""A float sample beyond this magnitude (60 dB over full scale) is not audio: such a file is
refused rather than analysed into silently wrong scores."""

log = logging.getLogger(__name__)


class AudioError(Exception):
    """An audio file that cannot be used; the message is one line that names the file."""


class Resampler:
    """Streaming polyphase resampler from ``rate_in`` to ``rate_out`` Hz (float32, mono).

    A Kaiser-windowed FIR low-pass (beta 5, the filter of scipy's ``resample_poly``) applied
    polyphase: output ``j`` only multiplies the taps that meet real input samples. The filter's
    delay is removed, so output sample ``j`` is aligned with time ``j / rate_out``; :meth:`flush`
    returns the tail, after which the total length is ``ceil(n_in * rate_out / rate_in)``.
    Not thread-safe: one owner.

    NumPy only, no SciPy: importing ``scipy.signal`` costs the device tens of MiB of RSS and a
    second of CPU at start-up, and its ``upfirdn`` does one multiply-add at a time. Here a
    whole block of outputs is one matrix product (BLAS, SIMD) and a few additions; see
    :meth:`_causal_outputs`.
    """

    _CHUNK_VALUES = 1 << 19
    """Bound on the temporary of one matrix product, in float32 values (2 MiB)."""
    MAX_WEIGHT_VALUES = 1 << 22
    """Largest polyphase matrix (float32 values, 16 MiB). Rates with a large least common
    multiple (a prime rate such as 44111 Hz to 16 kHz would need 16000 x 88222 weights,
    5.6 GB) use the direct windowed-sinc path instead: the same filter evaluated at each
    output's position, in blocks of bounded size."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        if rate_in <= 0 or rate_out <= 0:
            raise ValueError(f"sample rates must be positive, got {rate_in} -> {rate_out}")
        g = math.gcd(int(rate_in), int(rate_out))
        self.up, self.down = int(rate_out) // g, int(rate_in) // g
        self.passthrough = self.up == self.down
        self._n_in = 0  # input samples received
        self._n_out = 0  # outputs returned
        self.direct = False
        if self.passthrough:
            return
        # Half the filter length in upsampled samples; a multiple of `down` so that the
        # filter's delay is a whole number of output samples.
        half_len = self.down * math.ceil(10 * max(self.up, self.down) / self.down)
        self._history = np.zeros(0, np.float32)
        self._history_start = 0  # absolute index of _history[0]
        # Polyphase weights: about up x (2 half_len / up + down) values.
        self.direct = self.up * (2 * half_len // self.up + 2 * self.down) > self.MAX_WEIGHT_VALUES
        if self.direct:
            self._half_in = half_len / self.up  # filter half-width, input samples
            self._fc = min(1.0, self.up / self.down)  # cutoff, fraction of the input Nyquist
            return
        self._delay_out = half_len // self.down
        self._taps = lowpass_taps(2 * half_len + 1, 1.0 / max(self.up, self.down)) * self.up
        self._period_weights()
        self._history = np.zeros(0, np.float32)
        self._history_start = 0  # absolute index of _history[0]
        self._n_full = 0  # outputs of the causal (delayed) filter computed so far

    def _period_weights(self) -> None:
        """The filter as one matrix per period of ``up`` outputs.

        Causal output j = sum_n taps[j * down - n * up] * x[n]. Outputs p * up + r (r < up)
        read inputs p * down + a .. p * down + a + pieces * down - 1, the same offsets in every
        period p, so with W[r, s] the tap that output r applies to input p * down + a + s, a
        period's outputs are W @ those inputs. W is cut into ``pieces`` blocks of ``down``
        columns, stacked as ``_weights`` (pieces * up, down).
        """
        up, down, taps = self.up, self.down, self._taps
        r = np.arange(up)
        base = r * down // up  # newest input of output r, relative to p * down
        first = (r * down - (len(taps) - 1) + up - 1) // up  # oldest input with a tap, same base
        self._offset = int(first.min())  # a
        self._pieces = -(-(int(base.max()) - self._offset + 1) // down)
        w = np.zeros((up, self._pieces * down), np.float32)
        for row in range(up):
            n = np.arange(first[row], base[row] + 1)
            w[row, n - self._offset] = taps[row * down - n * up]
        self._weights = np.ascontiguousarray(
            w.reshape(up, self._pieces, down).transpose(1, 0, 2).reshape(self._pieces * up, down)
        )

    def _inputs(self, start: int, stop: int) -> np.ndarray:
        """Input samples ``start .. stop - 1`` (absolute), zeros before 0 and past the end."""
        h0, h1 = self._history_start, self._history_start + len(self._history)
        if h0 <= start and stop <= h1:
            return self._history[start - h0 : stop - h0]
        out = np.zeros(stop - start, np.float32)
        lo, hi = max(start, h0), min(stop, h1)
        if lo < hi:
            out[lo - start : hi - start] = self._history[lo - h0 : hi - h0]
        return out

    def _periods(self, p0: int, p1: int) -> np.ndarray:
        """Causal outputs of periods p0 .. p1 - 1, i.e. outputs p0 * up .. p1 * up - 1.

        Rows of ``down`` inputs: X[i] = inputs (p0 + i) * down + a + (0 .. down - 1). Then
        Z = weights @ X.T, and period p0 + i is the sum over pieces k of column i + k of Z's
        k-th block of rows. (Z this way round keeps those additions on contiguous memory:
        about 4x faster than X @ weights.T at 48 kHz.)
        """
        up, pieces, n = self.up, self._pieces, p1 - p0
        start = p0 * self.down + self._offset
        x = self._inputs(start, start + (n + pieces - 1) * self.down).reshape(-1, self.down)
        z = self._weights @ x.T
        y = z[:up, :n].copy()
        for k in range(1, pieces):
            y += z[k * up : (k + 1) * up, k : k + n]
        return (y.T if up > 1 else y).reshape(-1)

    def _causal_outputs(self, stop: int) -> np.ndarray:
        """Causal filter outputs ``self._n_full .. stop - 1``, whole periods at a time (the
        part of a period before ``_n_full`` is computed again and dropped)."""
        if stop <= self._n_full:
            return np.zeros(0, np.float32)
        up = self.up
        p_first, p_stop = self._n_full // up, -(-stop // up)
        step = max(1, self._CHUNK_VALUES // (self._pieces * up))
        parts = [self._periods(p, min(p + step, p_stop)) for p in range(p_first, p_stop, step)]
        out = parts[0] if len(parts) == 1 else np.concatenate(parts)
        out = out[self._n_full - p_first * up : stop - p_first * up]
        self._n_full = stop
        return out

    def _trim_history(self) -> None:
        # The next computation starts at the period holding output _n_full (see _periods).
        keep_from = max(0, (self._n_full // self.up) * self.down + self._offset)
        if keep_from > self._history_start:
            self._history = self._history[keep_from - self._history_start :].copy()
            self._history_start = keep_from

    def _emit(self, causal: np.ndarray) -> np.ndarray:
        """Drop the filter delay from the front of the causal output stream."""
        skip = max(0, self._delay_out - (self._n_full - len(causal)))
        out = causal[skip:]
        self._n_out += len(out)
        return out

    PHASES = 1024
    """Direct path: the filter is tabulated at this many positions per input sample and
    interpolated linearly between them (error far below the int8 model's resolution)."""

    def _direct_table(self) -> np.ndarray:
        """(PHASES + 1, 2 reach) weights: row p is the filter for an output at p / PHASES of
        an input sample past input n0, over inputs n0 - reach + 1 .. n0 + reach."""
        half, fc, reach = self._half_in, self._fc, math.ceil(self._half_in)
        table = np.empty((self.PHASES + 1, 2 * reach), np.float32)
        rows = max(1, (1 << 15) // (2 * reach))  # np.i0's float64 temporaries stay small
        for r0 in range(0, self.PHASES + 1, rows):
            frac = np.arange(r0, min(r0 + rows, self.PHASES + 1)) / self.PHASES
            tau = frac[:, None] - np.arange(-reach + 1, reach + 1)[None, :]
            u = np.clip(tau / half, -1.0, 1.0)
            w = fc * np.sinc(fc * tau) * np.i0(5.0 * np.sqrt(1.0 - u * u))
            w[np.abs(tau) > half] = 0.0
            table[r0 : r0 + len(frac)] = w / w.sum(axis=1, keepdims=True)  # unit gain at 0 Hz
        return table

    def _direct_outputs(self, stop: int) -> np.ndarray:
        """Outputs ``_n_out .. stop - 1`` by the direct path: output j is the Kaiser-windowed
        sinc (the polyphase filter, as a function of time) centred on input position
        j * down / up, over the inputs within its half-width; blocks of outputs keep the
        temporaries under _CHUNK_VALUES."""
        if not hasattr(self, "_table"):
            self._table = self._direct_table()
        table = self._table
        reach = math.ceil(self._half_in)
        width = 2 * reach
        step = max(1, self._CHUNK_VALUES // width)
        parts = []
        for j0 in range(self._n_out, stop, step):
            j = np.arange(j0, min(j0 + step, stop), dtype=np.int64)
            n0 = (j * self.down) // self.up
            pos = (j * self.down - n0 * self.up) * (self.PHASES / self.up)
            p = np.minimum(pos.astype(np.int64), self.PHASES - 1)
            a = (pos - p).astype(np.float32)[:, None]
            w = table[p] * (1.0 - a) + table[p + 1] * a
            x = self._inputs(int(n0[0]) - reach + 1, int(n0[-1]) + reach + 1)
            idx = (n0 - n0[0])[:, None] + np.arange(width)[None, :]
            parts.append(np.einsum("ij,ij->i", w, x[idx]).astype(np.float32))
        out = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        self._n_out += len(out)
        keep_from = max(0, (self._n_out * self.down) // self.up - reach)
        if keep_from > self._history_start:
            self._history = self._history[keep_from - self._history_start :].copy()
            self._history_start = keep_from
        return out

    def process(self, block: np.ndarray) -> np.ndarray:
        """block: mono float32 at ``rate_in``. Returns the output samples it makes available."""
        block = np.asarray(block, dtype=np.float32)
        if self.passthrough:
            self._n_in += len(block)
            self._n_out += len(block)
            return block
        self._history = np.concatenate((self._history, block))
        self._n_in += len(block)
        if self.direct:
            # Output j needs inputs up to floor(j * down / up) + ceil(half width).
            reach = math.ceil(self._half_in)
            stop = ((self._n_in - reach) * self.up - 1) // self.down + 1 if self._n_in > reach else 0
            return self._direct_outputs(max(stop, self._n_out))
        # Output j (causal) needs inputs up to floor(j * down / up).
        stop = (self._n_in * self.up - 1) // self.down + 1 if self._n_in else 0
        out = self._emit(self._causal_outputs(stop))
        self._trim_history()
        return out

    def flush(self) -> np.ndarray:
        """The remaining output (the filter's tail), padding the input with zeros."""
        total = math.ceil(self._n_in * self.up / self.down)
        if self.passthrough or self._n_out >= total:
            return np.zeros(0, np.float32)
        if self.direct:
            return self._direct_outputs(total)
        out = self._emit(self._causal_outputs(total + self._delay_out))
        return out[: total - (self._n_out - len(out))]


def lowpass_taps(n_taps: int, cutoff: float, beta: float = 5.0) -> np.ndarray:
    """Kaiser-windowed sinc low-pass, unit gain at 0 Hz, float32; ``cutoff`` as a fraction of
    the Nyquist frequency. The same taps as ``scipy.signal.firwin(n_taps, cutoff,
    window=("kaiser", beta))`` (a test checks), without importing SciPy."""
    n = np.arange(n_taps) - (n_taps - 1) / 2
    taps = cutoff * np.sinc(cutoff * n) * np.kaiser(n_taps, beta)
    return (taps / taps.sum()).astype(np.float32)


def downmix_weights(channels: int) -> np.ndarray:
    """Weights that average ``channels`` channels into one, float32: ``block @ weights`` is
    ~20x faster than ``block.mean(axis=1)`` (shared by file replay and the microphone)."""
    return np.full(channels, 1.0 / channels, np.float32)


@contextlib.contextmanager
def decoder_quiet(path: Path):
    """Keep libmpg123's notes ("Illegal Audio-MPEG-Header ...") off the console: it writes
    them to fd 2 itself. The log writes to its own duplicate of fd 2 (device.logsetup), so
    nothing of ours is lost meanwhile. Only for MP3, the one chatty decoder."""
    if path.suffix.lower() != ".mp3":
        yield
        return
    try:
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        yield
        return
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _open(path: Path) -> soundfile.SoundFile:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise AudioError(f"{path}: no such file") from None
    except OSError as exc:
        raise AudioError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(mode):
        raise AudioError(f"{path}: is a folder, expected an audio file")
    if not stat.S_ISREG(mode):
        # Opening a FIFO blocks until a writer comes: it would hang the whole replay.
        raise AudioError(f"{path}: not a regular file (a FIFO, device or socket); skipped")
    try:
        with decoder_quiet(path):
            audio = soundfile.SoundFile(str(path))
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"{path}: not readable as audio ({_reason(exc)})") from None
    if audio.frames == 0:
        audio.close()
        raise AudioError(f"{path}: contains no audio samples")
    # libsndfile quietly shortens a WAV whose data chunk is cut off; its log says so.
    cut = re.search(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", audio.extra_info, re.M)
    if cut:
        audio.close()
        raise AudioError(
            f"{path}: truncated, header promises {cut[1]} bytes of audio, file holds {cut[2]}"
        )
    return audio


def _reason(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def audio_info(path: str | Path) -> tuple[int, int, float]:
    """(sample rate Hz, channels, duration s) of a file, without decoding it."""
    path = Path(path)
    with _open(path) as audio:
        return audio.samplerate, audio.channels, audio.frames / audio.samplerate


def stream_audio(
    path: str | Path, sample_rate: int, *, block_s: float = 10.0
) -> Iterator[np.ndarray]:
    """Yield mono float32 blocks of a file at ``sample_rate``, about ``block_s`` seconds each.

    Memory stays bounded whatever the file's length. Raises :class:`AudioError` (one line,
    naming the file) for a missing, empty, unreadable or truncated file.
    """
    path = Path(path)
    with _open(path) as audio:
        expected = audio.frames
        resampler = Resampler(audio.samplerate, sample_rate)
        # Reads are bounded however high the rate or many the channels (2 MiB of float32);
        # what they give is gathered into blocks of about block_s at the output rate.
        block_frames = max(1, min(int(block_s * audio.samplerate), (1 << 19) // audio.channels))
        capped = block_frames < int(block_s * audio.samplerate)
        target = max(1, int(block_s * sample_rate)) if capped else 1
        pending: list[np.ndarray] = []
        pending_n = 0
        read = 0
        try:
            # read() rather than blocks(): blocks() pads a short file with zeros up to the
            # length its header promises, hiding a truncated mp3.
            while True:
                with decoder_quiet(path):
                    block = audio.read(block_frames, dtype="float32", always_2d=True)
                if not len(block):
                    break
                _check_samples(block, path, read)
                read += len(block)
                mono = block @ downmix_weights(block.shape[1]) if block.shape[1] > 1 else block[:, 0]
                out = resampler.process(mono)
                if len(out):
                    pending.append(out)
                    pending_n += len(out)
                if pending_n >= target:
                    yield pending[0] if len(pending) == 1 else np.concatenate(pending)
                    pending, pending_n = [], 0
        except (soundfile.LibsndfileError, RuntimeError) as exc:
            raise AudioError(f"{path}: decoding failed after {read} samples ({_reason(exc)})") from None
        if pending:
            yield pending[0] if len(pending) == 1 else np.concatenate(pending)
        # libsndfile reports the length from the header; a file cut short reads fewer frames.
        # MP3 and Ogg lengths come from an estimate in the header: allow 1 % slack there.
        slack = expected // 100 if audio.format in ("MP3", "OGG", "MPEG") else 0
        if read < expected - slack:
            raise AudioError(
                f"{path}: truncated, header promises {expected} samples, file holds {read}"
            )
        tail = resampler.flush()
        if len(tail):
            yield tail


def _check_samples(block: np.ndarray, path: Path, offset: int) -> None:
    """AudioError for NaN, infinite or absurdly large samples (a float file written wrong)."""
    lo, hi = float(block.min()), float(block.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise AudioError(f"{path}: non-finite samples (NaN or infinity) after sample {offset}; "
                         "not audio")
    if max(-lo, hi) > MAX_ABS_SAMPLE:
        raise AudioError(f"{path}: samples of magnitude {max(-lo, hi):.3g} after sample "
                         f"{offset} (full scale is 1): not audio")


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """The whole file as mono float32 at ``sample_rate`` Hz (see :func:`stream_audio`)."""
    blocks = list(stream_audio(path, sample_rate))
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def find_audio_files(paths: list[str | Path]) -> list[Path]:
    """Files named directly, plus audio files found recursively in folders, sorted per folder."""
    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            for p in sorted(p for p in entry.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS):
                if p.is_file():
                    found.append(p)
                elif not p.is_dir():
                    # A FIFO would block the run when opened; a socket or device is no file.
                    log.warning("%s: not a regular file (a FIFO, device or socket); skipped", p)
        else:
            found.append(entry)
    return found
