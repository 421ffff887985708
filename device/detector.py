"""From window scores to events: one state object per label, no audio needed to test it.

This module is the one rule that turns window scores into events: the device runs it, and
training's event metrics, threshold calibration, ``train.recalibrate`` and the benches run it
too (:func:`detect`), with the detection settings the bundle ships.

Each evaluated window (start_s, end_s, score) goes through, in order:

1. smoothing: the mean of the last ``smoothing_windows`` scores;
2. confirmation: an event opens when at least ``confirm_k`` of the last ``confirm_n``
   windows reach the threshold and the current one does too; its run of windows starts at the
   first such window in those n. The opening is reported at once (``closed=False``);
3. hysteresis: an open event continues while the smoothed score stays at or above
   ``threshold - hysteresis``; its run ends with its last window that did;
4. ``max_event_s``: an event whose extent would grow longer is closed at its current end and
   a new event starts there (the pieces tile the time, they never overlap);
5. merging: an event that begins at most ``merge_gap_s`` after the previous one ended
   (measured on the window grid: the time covered by windows below the threshold between
   them) is merged into it; 0 turns merging off;
6. refractory time: for ``refractory_s`` after an event's last window, no new event opens.

The extent (where the call is, not which windows saw it): a run of windows whose first starts
at f and whose last starts at l, each ``window_s`` long, covers [f, l + window_s]; a call
inside it makes the model fire once enough of the call is in the window, so the event is that
span trimmed: [f + start_trim_s, l + window_s - end_trim_s]. The trims come from the bundle
(calibrated on annotated validation recordings, or the centre rule, (window_s - hop_s) / 2
each side: each window stands for the hop at its centre). An extent shorter than one hop
(a short run with large trims) is one hop centred on the trimmed span's middle.

Times are seconds from the start of the source: a window ending at sample t covers
[t - window_s, t]. The peak is the highest smoothed score in the event.

Frame rule (a bundle whose model has a frame output and whose extent rule is "frames"): the
windows' frame scores are stitched into one track of short cells (:mod:`device.frames`) and
each cell goes through the same steps above as a "window" one cell long, with the settings
counted in windows turned into cells spanning the same time (:func:`device.frames.at_frame_rate`)
and no trims: an event is the span of its cells. A cell is final once no later window covers
it, so an event opens up to a window's length after the audio that shows it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np

from device.config.fields import check_settings, default_of
from device.config.sections_device import DetectionSection
from device.frames import FrameLayout, FrameStitcher, at_frame_rate


@dataclass(frozen=True)
class DetectorParams:
    """Post-processing settings for one label: the ``detection`` section's settings (their
    defaults and bounds are that section's, :class:`device.config.DetectionSection`), one
    threshold, and the extent trims from the bundle."""

    threshold: float
    """Probability a (smoothed) window score must reach, 0..1."""
    smoothing_windows: int = default_of(DetectionSection, "smoothing_windows")
    confirm_k: int = default_of(DetectionSection, "confirm_k")
    confirm_n: int = default_of(DetectionSection, "confirm_n")
    hysteresis: float = default_of(DetectionSection, "hysteresis")
    merge_gap_s: float = default_of(DetectionSection, "merge_gap_s")
    refractory_s: float = default_of(DetectionSection, "refractory_s")
    max_event_s: float = default_of(DetectionSection, "max_event_s")
    start_trim_s: float = 0.0
    """Seconds from the start of the run's first window to the event start (0: the window's start)."""
    end_trim_s: float = 0.0
    """Seconds from the event end to the end of the run's last window (0: the window's end)."""

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        problems = check_settings(DetectionSection, {
            f.name: getattr(self, f.name) for f in fields(self) if f.name in _DETECTION_SETTINGS})
        if problems:
            raise ValueError("; ".join(problems))
        if self.confirm_k > self.confirm_n:
            raise ValueError(
                f"need 1 <= confirm_k <= confirm_n, got {self.confirm_k} of {self.confirm_n}"
            )
        if self.start_trim_s < 0 or self.end_trim_s < 0:
            raise ValueError(f"trims must be >= 0, got {self.start_trim_s}, {self.end_trim_s}")


_DETECTION_SETTINGS = ("smoothing_windows", "confirm_k", "confirm_n", "hysteresis", "merge_gap_s",
                       "refractory_s", "max_event_s")


@dataclass(frozen=True)
class Detection:
    """An event of one label, before it gets an id (see device.events.Event)."""

    label: str
    start_s: float
    end_s: float
    peak_score: float
    closed: bool = True
    """True: the event is finished and this is its final extent and peak. False: it has just
    opened (confirmed); its end and peak are so far, and it will be reported again, closed."""
    number: int = 0
    """Running number of the event in its label's detector: its opening and closing share it."""


@dataclass
class _Open:
    start_s: float
    """Event start (the first window's start plus the start trim, or a previous piece's end)."""
    last_window_start_s: float
    """Start of the last window at or above the hysteresis level."""
    peak_score: float
    number: int


class LabelDetector:
    """Event state of one label. Not thread-safe: one owner (the worker).

    hop_s: seconds between window starts, when known in advance (the first windows of a source
    cannot tell it); otherwise taken from the first two windows.
    """

    def __init__(self, label: str, params: DetectorParams, *, hop_s: float = 0.0) -> None:
        self.label = label
        self.params = params
        self._given_hop_s = hop_s
        self._numbers = 0
        self._reset()

    def _reset(self) -> None:
        self._scores: deque[float] = deque(maxlen=self.params.smoothing_windows)
        self._score_sum = 0.0
        self._history: deque[tuple[float, bool]] = deque(maxlen=self.params.confirm_n)
        """(window start_s, at or above threshold) of the last confirm_n windows."""
        self._open: _Open | None = None
        self._pending: _Open | None = None
        """A closed event held back while the next one might still merge into it."""
        self._quiet_until_s = float("-inf")
        """Windows starting before this cannot open an event (refractory time)."""
        self._hop_s = self._given_hop_s
        self._window_s = 0.0
        self._last_start_s: float | None = None

    def update(self, start_s: float, end_s: float, score: float) -> list[Detection]:
        """Feed one window (in time order); returns the events it opened (``closed=False``)
        and those it finished, in that time order."""
        p = self.params
        if self._last_start_s is not None and not self._hop_s and start_s > self._last_start_s:
            self._hop_s = start_s - self._last_start_s
        self._last_start_s = start_s
        self._window_s = end_s - start_s
        if len(self._scores) == self._scores.maxlen:
            self._score_sum -= self._scores[0]
        self._scores.append(score)
        self._score_sum += score
        smoothed = self._score_sum / len(self._scores)
        above = smoothed >= p.threshold and start_s >= self._quiet_until_s
        self._history.append((start_s, above))

        done: list[Detection] = []
        event = self._open
        if event is not None:
            if smoothed < p.threshold - p.hysteresis:
                done += self._close()
            elif self._end_after(start_s) - event.start_s > p.max_event_s + 1e-9:
                # Too long: close it where it ends now; a new event carries on from there.
                end = self._end_after(event.last_window_start_s)
                done.append(self._detection(event, closed=True))
                self._open = self._new(end, start_s, smoothed)
                done.append(self._detection(self._open, closed=False))
            else:
                event.last_window_start_s = start_s
                event.peak_score = max(event.peak_score, smoothed)
        elif above and sum(a for _, a in self._history) >= p.confirm_k:
            first = next(s for s, a in self._history if a)
            pending, self._pending = self._pending, None
            if pending is not None and self._gap_s(pending, first) <= p.merge_gap_s:
                # Merged: the same event goes on (its opening was reported already).
                pending.last_window_start_s = start_s
                pending.peak_score = max(pending.peak_score, smoothed)
                self._open = pending
            else:
                if pending is not None:
                    done.append(self._detection(pending, closed=True))
                self._open = self._new(first + p.start_trim_s, start_s, smoothed)
                done.append(self._detection(self._open, closed=False))
        elif self._pending is not None:
            done += self._release_pending(start_s)
        return done

    @property
    def quiet(self) -> bool:
        """No event open or held back, scores not smoothed and the hop known: a window below
        the threshold changes nothing but the record of recent windows (:meth:`absorb_below`)."""
        return (self._open is None and self._pending is None and self._hop_s > 0
                and self.params.smoothing_windows == 1)

    def absorb_below(self, starts: list[float], end_s: float, last_score: float) -> None:
        """Windows (in time order) none of whose scores reaches the threshold, fed while
        :attr:`quiet`: the state :meth:`update` of each would leave, at the cost of one.

        starts: the starts of the last ``confirm_n`` of them (or all, if fewer), seconds;
        end_s: the last one's end; last_score: the last one's score. Unsmoothed, the running
        sum :meth:`update` keeps is exactly the last score, so nothing differs by a bit."""
        self._last_start_s = starts[-1]
        self._window_s = end_s - starts[-1]
        self._scores.append(last_score)
        self._score_sum = last_score
        self._history.extend([(start, False) for start in starts[-self.params.confirm_n :]])

    def finish(self) -> list[Detection]:
        """The source (or a segment of it) ended: close the open event and release a held one;
        reset the state."""
        done = []
        if self._pending is not None:
            done.append(self._detection(self._pending, closed=True))
        if self._open is not None:
            done.append(self._detection(self._open, closed=True))
        self._reset()
        return done

    def _new(self, start_s: float, window_start_s: float, peak: float) -> _Open:
        self._numbers += 1
        return _Open(start_s, window_start_s, peak, self._numbers)

    def _end_after(self, window_start_s: float) -> float:
        """Event end when this is the run's last window."""
        return window_start_s + self._window_s - self.params.end_trim_s

    def _gap_s(self, before: _Open, next_start_s: float) -> float:
        """Time covered only by windows below the threshold between two events (window grid)."""
        return next_start_s - before.last_window_start_s - self._hop_s

    def _close(self) -> list[Detection]:
        event, self._open = self._open, None
        assert event is not None  # called with an open event
        self._quiet_until_s = event.last_window_start_s + self._hop_s + self.params.refractory_s
        self._history.clear()
        if self.params.merge_gap_s > 0:
            self._pending = event  # (a pending event was absorbed when this one opened)
            return []
        return [self._detection(event, closed=True)]

    def _release_pending(self, now_start_s: float) -> list[Detection]:
        """Emit the held event once no later event can begin within merge_gap_s of it."""
        candidates = [s for s, a in self._history if a]
        earliest_next = candidates[0] if candidates else now_start_s + self._hop_s
        event = self._pending
        assert event is not None  # called with a held event
        if self._gap_s(event, earliest_next) > self.params.merge_gap_s:
            self._pending = None
            return [self._detection(event, closed=True)]
        return []

    def _detection(self, event: _Open, *, closed: bool) -> Detection:
        start, end = event.start_s, self._end_after(event.last_window_start_s)
        if end - start < self._hop_s - 1e-9:  # a short run trimmed past itself: one hop at its middle
            middle = (start + end) / 2
            start, end = middle - self._hop_s / 2, middle + self._hop_s / 2
        return Detection(self.label, start, end, event.peak_score, closed, event.number)


class EventRule(Protocol):
    """What the worker (device.pipeline) hands each window to, in time order. Not thread-safe.

    The device's is :class:`Detector`; ``train.recalibrate`` puts a recorder in its place to
    keep the windows exactly as the detector would see them. A class that derives from this
    one inherits :meth:`update_block` as :meth:`update` of each window."""

    def update(self, start_s: float, end_s: float, scores, frames: np.ndarray | None = None) -> list[Detection]:
        """One window: start and end in seconds from the source's start, (n_labels,)
        probabilities, and (steps, n_labels) frame probabilities or None. Returns events."""
        ...

    def update_block(self, starts, ends, scores, frames: np.ndarray | None = None) -> list[Detection]:
        """Windows that follow each other, in time order, handed over at once (replay's block
        of audio): :meth:`update` of each in turn. starts, ends: (K,) seconds; scores: K rows
        of n_labels probabilities; frames (K, steps, n_labels) or None."""
        done: list[Detection] = []
        for k, (start_s, end_s) in enumerate(zip(starts, ends)):
            done += self.update(start_s, end_s, scores[k], None if frames is None else frames[k])
        return done

    def finish(self) -> list[Detection]:
        """The audio is interrupted (end of segment or source): the remaining events."""
        ...


class Detector(EventRule):
    """One :class:`LabelDetector` per label, fed a whole score vector per window.

    frames: the layout of the model's frame output when events come from it (the frame rule;
    ``params`` are then the window-rate settings, converted here); None: from window scores.
    """

    def __init__(self, params: dict[str, DetectorParams], *, hop_s: float = 0.0,
                 frames: FrameLayout | None = None) -> None:
        self.labels = list(params)
        self.frames = frames
        self._stitcher = FrameStitcher(frames, len(self.labels)) if frames is not None else None
        if frames is not None:
            params = {label: at_frame_rate(p, hop_s=hop_s, cell_s=frames.cell_s) for label, p in params.items()}
            hop_s = frames.cell_s
        self._by_label = [LabelDetector(label, params[label], hop_s=hop_s) for label in self.labels]
        self._threshold_list = [params[label].threshold for label in self.labels]
        self._thresholds = np.array(self._threshold_list, np.float64)
        self._history = max(params[label].confirm_n for label in self.labels)
        """Most recent cells a label's confirmation looks back on."""

    def update(self, start_s: float, end_s: float, scores, frames: np.ndarray | None = None) -> list[Detection]:
        """scores: one probability per label, in ``labels`` order; frames: (steps, n_labels)
        frame probabilities of the same window (needed by the frame rule, ignored otherwise)."""
        done: list[Detection] = []
        if self._stitcher is not None:
            if frames is None:
                raise ValueError("the frame rule needs the window's frame scores")
            return self._feed(*self._stitcher.push_rows(start_s, frames))
        for detector, score in zip(self._by_label, scores):
            done += detector.update(start_s, end_s, float(score))
        return done

    def update_block(self, starts, ends, scores, frames: np.ndarray | None = None) -> list[Detection]:
        """:meth:`update` of each window in turn, the same events in the same order, returned
        together. The frame rule stitches the block in NumPy (:meth:`FrameStitcher.push_block`)
        and finds its cells at a threshold in one comparison (:meth:`update_cells`): replay
        hands over a decoded block's windows (10 s: 20 at a 0.5 s hop), and window by window
        that work, in Python, cost the frame rule 0.4 CPU-s per audio hour more than the window
        rule."""
        if self._stitcher is None:
            return EventRule.update_block(self, starts, ends, scores)
        if frames is None:
            raise ValueError("the frame rule needs the windows' frame scores")
        return self.update_cells(*self._stitcher.push_block(starts, frames))

    def update_cells(self, cells: np.ndarray, scores: np.ndarray) -> list[Detection]:
        """Feed stitched cells (indices from time 0, in order; scores (K, n_labels)) to the
        labels: what :meth:`update` does with the cells the stitcher releases. Feeding a
        recording's cells, stitched once by a :class:`device.frames.FrameStitcher` (its windows
        pushed in order, then finished), then :meth:`finish`, gives the events that feeding its
        windows gives (``train.recalibrate`` tries many thresholds on one stitching).

        Most cells are background: while every label is quiet (no event open or held), a run of
        cells none of which reaches a threshold is absorbed in one step per label
        (:meth:`LabelDetector.absorb_below`); the other cells go through every label in turn,
        as each cell always did. The events, their order and the state are the same."""
        loud = np.flatnonzero(~(scores < self._thresholds).all(axis=1))
        return self._cells(cells.tolist(), scores.tolist(), loud.tolist())

    def _feed(self, first: int, scores: list[list[float]]) -> list[Detection]:
        """Cells that follow each other from index ``first`` (as the stitcher releases them)."""
        if not scores:
            return []
        thresholds = self._threshold_list
        if len(thresholds) == 1:
            one = thresholds[0]
            loud = [i for i, row in enumerate(scores) if not row[0] < one]
        else:
            loud = [i for i, row in enumerate(scores) if not all(v < t for v, t in zip(row, thresholds))]
        return self._cells(range(first, first + len(scores)), scores, loud)

    def _cells(self, cell_list: Sequence[int], rows: list[list[float]], loud: list[int]) -> list[Detection]:
        """rows: each cell's scores, in label order; loud: the indices, ascending, of the cells
        not below every label's threshold (the others can be absorbed)."""
        done: list[Detection] = []
        n = len(cell_list)
        cell_s = self.frames.cell_s if self.frames is not None else 0.0
        labels = self._by_label
        loud.append(n)  # past the last cell: the quiet run ends there at the latest
        next_loud = 0
        i = 0
        while i < n:
            if all(d.quiet for d in labels):
                while loud[next_loud] < i:
                    next_loud += 1
                j = loud[next_loud]
                if j > i:  # cells i..j-1: below every threshold
                    tail = cell_list[max(i, j - self._history) : j]
                    starts = [c * cell_s for c in tail]
                    end_s = (tail[-1] + 1) * cell_s
                    for detector, score in zip(labels, rows[j - 1]):
                        detector.absorb_below(starts, end_s, score)
                    i = j
                    continue
            cell = cell_list[i]
            for detector, score in zip(labels, rows[i]):
                done += detector.update(cell * cell_s, (cell + 1) * cell_s, score)
            i += 1
        return done

    def finish(self) -> list[Detection]:
        done: list[Detection] = []
        if self._stitcher is not None:
            done += self._feed(*self._stitcher.finish_rows())
        for detector in self._by_label:
            done += detector.finish()
        return done


def detect_frames(starts, frames, params: DetectorParams, *, layout: FrameLayout, hop_s: float,
                  label: str = "") -> list[Detection]:
    """:func:`detect` for the frame rule: the finished events of one label along one recording.

    starts: (K,) window starts, seconds; frames: (K, steps) frame probabilities of the label.
    ``params`` are window-rate settings, as for the device's :class:`Detector`.
    """
    detector = Detector({label: params}, hop_s=hop_s, frames=layout)
    frames = np.asarray(frames, np.float64).reshape(len(frames), layout.steps, 1)
    out: list[Detection] = []
    previous = None
    for start, window in zip(np.asarray(starts, np.float64).tolist(), frames):
        if previous is not None and start - previous > 1.5 * hop_s:
            out += [d for d in detector.finish() if d.closed]
        previous = start
        out += [d for d in detector.update(start, start + 0.0, (), window) if d.closed]
    return out + [d for d in detector.finish() if d.closed]


def detect(starts, scores, params: DetectorParams, *, window_s: float, hop_s: float,
           label: str = "") -> list[Detection]:
    """The finished events of one label along one recording, as the device makes them.

    starts: (K,) window starts, seconds, increasing; scores: (K,) probabilities. Windows more
    than one hop apart (by half a hop) are separated by a gap: the detector is finished there,
    as the device finishes it when its audio is interrupted.
    """
    detector = LabelDetector(label, params, hop_s=hop_s)
    out: list[Detection] = []
    previous = None
    for start, score in zip(np.asarray(starts, np.float64).tolist(), np.asarray(scores, np.float64).tolist()):
        if previous is not None and start - previous > 1.5 * hop_s:
            out += detector.finish()
        previous = start
        out += [d for d in detector.update(start, start + window_s, score) if d.closed]
    return out + detector.finish()


def detector_params(
    *, labels: tuple[str, ...], bundle_thresholds: dict[str, float], detection,
    trims: dict[str, tuple[float, float]] | None = None,
) -> dict[str, DetectorParams]:
    """Per-label params: the bundle's calibrated threshold unless ``detection.thresholds``
    overrides it, and the bundle's extent trims (``Bundle.extent_trims``; none: the windows' span).

    detection: the ``detection`` config section. Raises ValueError naming an override for a
    label the model does not have.
    """
    unknown = sorted(set(detection.thresholds) - set(labels))
    if unknown:
        raise ValueError(
            f"detection.thresholds.{unknown[0]}: not a label of the model "
            f"(labels: {', '.join(labels)})"
        )
    trims = trims or {}
    return {
        label: DetectorParams(
            threshold=float(detection.thresholds.get(label, bundle_thresholds[label])),
            smoothing_windows=detection.smoothing_windows,
            confirm_k=detection.confirm_k,
            confirm_n=detection.confirm_n,
            hysteresis=detection.hysteresis,
            merge_gap_s=detection.merge_gap_s,
            refractory_s=detection.refractory_s,
            max_event_s=detection.max_event_s,
            start_trim_s=trims.get(label, (0.0, 0.0))[0],
            end_trim_s=trims.get(label, (0.0, 0.0))[1],
        )
        for label in labels
    }
