"""Stitching a model's frame output across overlapping windows into one track per label.

A model with a frame output (``pooling: time``) gives, for each window, one probability per
label and *step*: step t of a window whose first spectrogram frame is f0 stands for frames
[f0 + t step_frames, f0 + (t + 1) step_frames). Windows overlap (a 3 s window every 0.5 s), so
each moment is seen by several windows. The stitched track lives on a grid of *cells* of
``cell_frames`` spectrogram frames from time 0 (a divisor of the hop, so every window lands on
the grid the same way): a cell's score is the mean, over every window covering the cell's
centre, of the score of the step holding it. A cell is final once a window starts after it
(windows come in time order), so the stitcher keeps only the cells of the newest window: its
memory is bounded by the window's length, whatever the recording's.

Batch (:func:`stitch`) and streaming (:class:`FrameStitcher`, fed any run of windows and
finished at the end) give the same cells. The stitcher takes a window at a time (the live worker:
:meth:`FrameStitcher.push`) or a run of them (replay's block of audio:
:meth:`FrameStitcher.push_block`, in NumPy), with the same float64 sums either way.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import as_strided


@dataclass(frozen=True)
class FrameLayout:
    """Where a window's frame output lies in time, and the grid it is stitched on."""

    steps: int
    """Steps of the frame output per window."""
    step_frames: int
    """Spectrogram frames per step."""
    frame_s: float
    """Seconds per spectrogram frame (hop_length / sample_rate)."""
    cell_frames: int
    """Spectrogram frames per cell of the stitched track (:func:`cell_frames_for`)."""

    @property
    def cell_s(self) -> float:
        """Seconds per cell."""
        return self.cell_frames * self.frame_s

    def first_frame(self, start_s: float) -> int:
        """Spectrogram frame (from time 0) at which a window starting at ``start_s`` begins."""
        return round(start_s / self.frame_s)

    @classmethod
    def at_hop(
        cls, *, steps: int, step_frames: int, frame_rate: float, hop_s: float
    ) -> FrameLayout:
        """The layout for windows every ``hop_s`` seconds, ``frame_rate`` spectrogram frames a
        second: cells of :func:`cell_frames_for` the hop in frames (at least one frame)."""
        hop_frames = max(1, round(hop_s * frame_rate))
        return cls(
            steps=steps,
            step_frames=step_frames,
            frame_s=1.0 / frame_rate,
            cell_frames=cell_frames_for(hop_frames=hop_frames, step_frames=step_frames),
        )


def cell_frames_for(*, hop_frames: int, step_frames: int) -> int:
    """The largest divisor of the hop (frames) no longer than half a step: every window starts
    on a cell boundary, and a cell is finer than the steps it stitches."""
    limit = max(1, step_frames // 2)
    return max(d for d in range(1, hop_frames + 1) if hop_frames % d == 0 and d <= limit)


def at_frame_rate(params, *, hop_s: float, cell_s: float):
    """Window-rate ``DetectorParams`` for a track of cells: counts of windows (smoothing, k of
    n) become counts of cells spanning the same time ((count - 1) hops, plus one cell); times in
    seconds stay; no trims (a cell is its own extent)."""
    scale = max(1, round(hop_s / cell_s))

    def cells(count: int) -> int:
        return (count - 1) * scale + 1

    # A copy, not dataclasses.replace: the counts of cells may exceed the config's bounds on
    # counts of windows (validated already, in windows), which __post_init__ would check again.
    out = copy.copy(params)
    for name, value in (
        ("smoothing_windows", cells(params.smoothing_windows)),
        ("confirm_k", cells(params.confirm_k)),
        ("confirm_n", cells(params.confirm_n)),
        ("start_trim_s", 0.0),
        ("end_trim_s", 0.0),
    ):
        object.__setattr__(out, name, value)
    return out


class FrameStitcher:
    """Mean of the frame scores of every window covering each cell, streamed. Not thread-safe.

    Feed windows in time order with :meth:`push` (or runs of them with :meth:`push_block`);
    each call returns the cells that no later window can cover any more; :meth:`finish` returns
    the rest and resets.
    """

    def __init__(self, layout: FrameLayout, n_labels: int) -> None:
        self.layout = layout
        self.n_labels = n_labels
        r, span = layout.cell_frames, layout.steps * layout.step_frames
        self._capacity = -(-span // r) + 1
        """Most cells one window covers: never more are held."""
        self._rows: list[list[float]] = []
        """Per held cell, from the first: the sum of each label's step scores, then the count of
        windows. Plain floats: a window adds to about 30 cells, and a few NumPy calls on such
        small arrays cost more than the additions (NumPy's per-call cost, paid again with caches
        cooled by the interpreter and the front end between windows); a block of windows
        (:meth:`push_block`) shares those calls and uses NumPy. The sums are the same float64
        sums, in the same order, either way."""
        self._patterns: dict[int, tuple[np.ndarray, list[int]]] = {}
        self._empty = (np.zeros(0, np.int64), np.zeros((0, n_labels), np.float64))
        self._reset()

    def _reset(self) -> None:
        self._base = 0
        """Cell index of the first held cell."""
        self._rows = []

    @property
    def _n(self) -> int:
        """Cells held."""
        return len(self._rows)

    def _first_cell(self, f0: int) -> tuple[int, np.ndarray, list[int]]:
        """(first cell, step of each cell from it, the same as a list) whose centre lies in the
        window starting at frame f0. The steps depend only on where f0 falls within its cell:
        cached."""
        lay = self.layout
        r, span = lay.cell_frames, lay.steps * lay.step_frames
        lo = -(-(2 * f0 - r) // (2 * r))
        phase = 2 * lo * r + r - 2 * f0  # twice the first cell centre's offset from f0, 0 <= phase < 2r
        pattern = self._patterns.get(phase)
        if pattern is None:
            centres = 2 * np.arange(self._capacity) * r + phase
            steps = centres[centres < 2 * span] // (2 * lay.step_frames)
            pattern = self._patterns[phase] = (steps, steps.tolist())
        return lo, pattern[0], pattern[1]

    def _cells(self, f0: int) -> tuple[np.ndarray, np.ndarray]:
        """(cell indices, step of each) whose centre lies in the window starting at frame f0."""
        lo, steps, _ = self._first_cell(f0)
        return lo + np.arange(len(steps)), steps

    def push(self, start_s: float, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """frames: (steps, n_labels) probabilities of the window starting at ``start_s``.
        Returns (cell indices (K,), scores (K, n_labels)) of the cells now final."""
        return self._arrays(*self.push_rows(start_s, frames))

    def push_rows(self, start_s: float, frames: np.ndarray) -> tuple[int, list[list[float]]]:
        """:meth:`push`, the cells now final given as (index of the first, their scores: a list
        per cell of one float per label); they follow each other."""
        lo, _, steps = self._first_cell(self.layout.first_frame(start_s))
        done = self._release(lo) if self._rows else (lo, [])
        rows = self._rows
        if not rows:
            self._base = lo
        # Rows from 0: the window starts at or after the first cell still held (time order).
        held = len(rows)
        window = frames.tolist()
        if self.n_labels == 1:
            for r, step in enumerate(steps):
                if r < held:
                    row = rows[r]
                    row[0] += window[step][0]
                    row[1] += 1.0
                else:
                    rows.append([window[step][0], 1.0])
        else:
            for r, step in enumerate(steps):
                if r < held:
                    row = rows[r]
                    for i, value in enumerate(window[step]):
                        row[i] += value
                    row[-1] += 1.0
                else:
                    rows.append([*window[step], 1.0])
        return done

    def push_block(self, starts, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`push` of a run of windows, in time order: starts (K,) seconds, frames (K, steps,
        n_labels). Returns the cells they make final together: bit for bit what pushing the
        windows one by one returns (concatenated).

        Replay's windows within a segment are one hop apart, a whole number h of cells, and land
        on the grid the same way: window k adds its steps to cells lo + k h + (0..L-1). The
        block is then a dozen NumPy calls instead of K L additions in Python: a zero array of
        layers, the held sums in the first, window k's step scores (and a count of 1) on its
        cells in layer 1 + k, summed over the layers. A sum over the first axis of a C-ordered
        array adds layer after layer, so each cell adds its held sum, then its windows oldest
        first, as :meth:`push_rows` adds them: the same float64 sums (adding a 0.0 changes
        none). Any other run (one window, a jump in time, windows further apart than they are
        long) goes window by window."""
        if len(starts) < 2:
            return self._one_by_one(starts, frames)
        lay = self.layout
        first_frames = [lay.first_frame(start) for start in starts]
        f0 = first_frames[0]
        hop_frames = first_frames[1] - f0
        lo, steps, _ = self._first_cell(f0)
        span, hop = len(steps), hop_frames // lay.cell_frames
        first, rows = (self._base, self._rows) if self._rows else (lo, [])
        if not (
            0 < hop <= span
            and hop_frames % lay.cell_frames == 0
            and first_frames == list(range(f0, f0 + len(starts) * hop_frames, hop_frames))
            and lo <= first + len(rows)
        ):
            return self._one_by_one(starts, frames)
        n, k = self.n_labels, len(starts)
        # Cells made final, from the first held: those before the last window's first.
        final = lo - first + (k - 1) * hop
        # Per layer and cell from the first held: each label's sum of scores, then the count.
        layers = np.zeros((k + 1, final + span, n + 1))
        if rows:
            layers[0, : len(rows)] = rows
        # windows[w, t] is layer 1 + w, cell lo - first + w h + t: window w's t-th cell.
        layer, cell, label = layers.strides
        windows = as_strided(
            layers[1:, lo - first :], shape=(k, span, n + 1), strides=(layer + hop * cell, cell, label)
        )
        windows[:, :, :n] = frames.reshape(k, -1, n)[:, steps]
        windows[:, :, n] = 1.0
        sums = layers.sum(axis=0)
        self._rows = sums[final:].tolist()
        self._base = first + final
        return np.arange(first, first + final), sums[:final, :n] / sums[:final, n:]

    def _one_by_one(self, starts, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`push_block` the plain way: each window pushed in turn."""
        parts = [self.push(start, window) for start, window in zip(starts, frames)]
        if not parts:
            return self._empty
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _release(self, upto: int) -> tuple[int, list[list[float]]]:
        """Cells before ``upto`` leave the accumulators: (first cell, scores). Every held cell
        has a window: the held cells run from the newest window's first cell, and each window
        covers a run of cells from its own first one, never later than the newest's (time
        order)."""
        first, rows = self._base, self._rows
        n = min(max(0, upto - first), len(rows))
        if not n:
            return first, []
        out = rows[:n]
        del rows[:n]
        self._base = upto if not rows else first + n
        if self.n_labels == 1:
            return first, [[row[0] / row[1]] for row in out]
        return first, [[value / row[-1] for value in row[:-1]] for row in out]

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Every remaining cell; the stitcher starts afresh."""
        return self._arrays(*self.finish_rows())

    def finish_rows(self) -> tuple[int, list[list[float]]]:
        """:meth:`finish`, as (index of the first cell, scores), as :meth:`push_rows` gives them."""
        done = self._release(self._base + len(self._rows)) if self._rows else (self._base, [])
        self._reset()
        return done

    def _arrays(self, first: int, scores: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
        if not scores:
            return self._empty
        return np.arange(first, first + len(scores)), np.array(scores, np.float64)


def stitch(
    layout: FrameLayout, starts: np.ndarray, frames: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Batch stitching of windows starting at ``starts`` (K,) with frame scores (K, steps,
    n_labels): (cell indices, scores (cells, n_labels)) of every covered cell, in order."""
    n_labels = frames.shape[2] if frames.ndim == 3 else 1
    frames = frames.reshape(len(frames), layout.steps, n_labels)
    stitcher = FrameStitcher(layout, n_labels)
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    for start, window in zip(np.asarray(starts, np.float64).tolist(), frames):
        cells, steps = stitcher._cells(layout.first_frame(start))
        for cell, step in zip(cells.tolist(), steps.tolist()):
            sums[cell] = sums.get(cell, 0.0) + window[step]
            counts[cell] = counts.get(cell, 0) + 1
    order = sorted(sums)
    if not order:
        return np.zeros(0, np.int64), np.zeros((0, n_labels))
    return np.array(order), np.stack([sums[c] / counts[c] for c in order])
