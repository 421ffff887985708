"""Stage: resampling. A streaming change of sample rate, and the downmix to mono.

Contract: :class:`Resampler` takes mono float32 blocks at ``rate_in`` Hz of any length and
returns mono float32 at ``rate_out`` Hz; a whole signal and the same signal fed block by block
give the same samples (so training, replay and the live microphone see identical audio).
Not thread-safe: one owner (the file reader, or the worker thread for the microphone).
NumPy only: no SciPy on the device.
"""

from __future__ import annotations

import math

import numpy as np


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
            stop = (
                ((self._n_in - reach) * self.up - 1) // self.down + 1 if self._n_in > reach else 0
            )
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
