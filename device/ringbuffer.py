"""Stage: the ring buffer between the microphone callback and the worker.

Contract: mono float32 samples, addressed by absolute index (int) since the start of the
source session; one producer thread (the audio callback), one consumer (the worker).

Preallocated NumPy, fixed memory, one producer (the audio callback) and one consumer (the
worker). Samples are addressed by their absolute index since the start of the source session,
so the worker can also take clip audio (pre-roll) from what it has already read.

Overflow: the producer never waits. When the worker falls behind by more than the capacity,
the oldest unread samples are overwritten; the next :meth:`RingBuffer.read` starts at the
oldest sample still held, and the skipped samples are added to ``overrun_samples`` (the worker
sees the jump in the returned start index and restarts its front end there).
"""

from __future__ import annotations

import threading
import time

import numpy as np


class RingBuffer:
    """Fixed-size float32 mono ring of the last ``capacity`` samples of a stream.

    Thread-safety: exactly one thread calls :meth:`write`, exactly one other calls
    :meth:`read`, :meth:`get` and :meth:`wait`. :meth:`reset` only while no producer runs.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"ring capacity must be >= 1 sample, got {capacity}")
        self.capacity = int(capacity)
        self._data = np.zeros(self.capacity, np.float32)
        self._written = 0
        """Absolute index one past the newest sample (published after the copy)."""
        self._read = 0
        """Absolute index of the next sample the consumer will read."""
        self._claimed = 0
        """Absolute index one past the samples the producer is writing (set before the copy)."""
        self._ready = threading.Event()
        self.overrun_samples = 0
        """Unread samples overwritten because the consumer fell behind (counted, not raised)."""

    @property
    def written(self) -> int:
        """Absolute index one past the newest sample."""
        return self._written

    @property
    def read_position(self) -> int:
        """Absolute index of the next unread sample."""
        return self._read

    def write(self, samples: np.ndarray) -> None:
        """Producer: append mono samples (copied). Never blocks, never allocates."""
        n = len(samples)
        if n == 0:
            return
        start = self._written
        if n > self.capacity:  # only the newest `capacity` samples can be kept
            samples = samples[n - self.capacity :]
            start += n - self.capacity
        m = len(samples)
        self._claimed = start + m  # announce before touching the data (see _oldest_valid)
        offset = start % self.capacity
        first = min(m, self.capacity - offset)
        self._data[offset : offset + first] = samples[:first]
        if first < m:
            self._data[: m - first] = samples[first:]
        self._written = start + m
        self._ready.set()

    def wait(self, timeout: float, *, until: int | None = None) -> bool:
        """Consumer: wait up to ``timeout`` s until the newest sample index reaches ``until``
        (default: any unread sample); True when it has."""
        target = self._read + 1 if until is None else until
        deadline = time.monotonic() + timeout
        while self._written < target:
            self._ready.clear()
            if self._written >= target:  # a write landed between the check and clear()
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._ready.wait(remaining):
                return self._written >= target
        return True

    def _oldest_valid(self) -> int:
        # A write in progress may already be overwriting samples up to `_claimed - capacity`.
        return max(0, self._claimed - self.capacity)

    def read(self, max_samples: int | None = None) -> tuple[int, np.ndarray]:
        """Consumer: the unread samples as (absolute start index, float32 copy).

        When the producer overwrote unread samples, the start index jumps past them (and
        ``overrun_samples`` grows); callers compare it with the index they expected.
        """
        written = self._written
        start = max(self._read, self._oldest_valid())
        stop = written if max_samples is None else min(written, start + max_samples)
        out = self._copy(start, stop)
        # Samples the producer overwrote while we copied are not trustworthy: drop them.
        valid_from = self._oldest_valid()
        if valid_from > start:
            cut = min(valid_from, stop) - start
            out = out[cut:]
            start += cut
        self.overrun_samples += start - self._read
        self._read = stop
        return start, out

    def get(self, start: int, stop: int) -> tuple[int, np.ndarray]:
        """Consumer: samples ``[start, stop)`` as far as still held: (actual start, copy).

        Used for event clips (pre-roll). Samples not yet written are not returned.
        """
        written = self._written
        start = max(start, self._oldest_valid())
        stop = min(stop, written)
        if stop <= start:
            return start, np.zeros(0, np.float32)
        out = self._copy(start, stop)
        valid_from = self._oldest_valid()
        if valid_from > start:
            cut = min(valid_from, stop) - start
            return start + cut, out[cut:]
        return start, out

    def _copy(self, start: int, stop: int) -> np.ndarray:
        n = stop - start
        if n <= 0:
            return np.zeros(0, np.float32)
        offset = start % self.capacity
        first = min(n, self.capacity - offset)
        if first == n:
            return self._data[offset : offset + n].copy()
        return np.concatenate((self._data[offset:], self._data[: n - first]))

    def reset(self, start: int = 0) -> None:
        """Empty the buffer and continue at absolute index ``start`` (no producer running)."""
        self._written = self._read = self._claimed = int(start)
        self._ready.clear()
