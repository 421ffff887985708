"""From window scores to events: one state object per label, no audio needed to test it.

Each evaluated window (start_s, end_s, score) goes through, in order:

1. smoothing: the mean of the last ``smoothing_windows`` scores;
2. confirmation: an event opens when at least ``confirm_k`` of the last ``confirm_n``
   windows reach the threshold and the current one does too; it starts at the start of the
   first such window in those n;
3. hysteresis: an open event continues while the smoothed score stays at or above
   ``threshold - hysteresis``; it ends at the end of its last window that did;
4. ``max_event_s``: an event that would grow longer is closed and a new one starts with the
   current window;
5. merging: an event that begins at most ``merge_gap_s`` after the previous one ended
   (measured on the window grid: the time covered by windows below the threshold between
   them) is merged into it; 0 turns merging off;
6. refractory time: for ``refractory_s`` after an event's last window, no new event opens.

Times are those of the windows, seconds from the start of the source: a window ending at
sample t covers [t - window_s, t]. The peak is the highest smoothed score in the event.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class DetectorParams:
    """Post-processing settings for one label (detection section of the config)."""

    threshold: float
    """Probability a (smoothed) window score must reach, 0..1."""
    smoothing_windows: int = 1
    confirm_k: int = 1
    confirm_n: int = 1
    hysteresis: float = 0.0
    merge_gap_s: float = 0.0
    refractory_s: float = 0.0
    max_event_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if not 1 <= self.confirm_k <= self.confirm_n:
            raise ValueError(
                f"need 1 <= confirm_k <= confirm_n, got {self.confirm_k} of {self.confirm_n}"
            )
        if self.smoothing_windows < 1:
            raise ValueError(f"smoothing_windows must be >= 1, got {self.smoothing_windows}")


@dataclass(frozen=True)
class Detection:
    """A finished event of one label, before it gets an id (see device.events.Event)."""

    label: str
    start_s: float
    end_s: float
    peak_score: float


@dataclass
class _Open:
    start_s: float
    end_s: float
    """End of the last window at or above the hysteresis level."""
    last_window_start_s: float
    peak_score: float


class LabelDetector:
    """Event state of one label. Not thread-safe: one owner (the worker)."""

    def __init__(self, label: str, params: DetectorParams) -> None:
        self.label = label
        self.params = params
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
        self._hop_s = 0.0
        self._last_start_s: float | None = None

    def update(self, start_s: float, end_s: float, score: float) -> list[Detection]:
        """Feed one window (in time order); returns the events this window finished."""
        p = self.params
        if self._last_start_s is not None and not self._hop_s and start_s > self._last_start_s:
            self._hop_s = start_s - self._last_start_s
        self._last_start_s = start_s
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
            elif end_s - event.start_s > p.max_event_s:
                # Too long: report what we have, carry on with a new event from this window.
                done.append(self._detection(event))
                self._open = _Open(start_s, end_s, start_s, smoothed)
            else:
                event.end_s = end_s
                event.last_window_start_s = start_s
                event.peak_score = max(event.peak_score, smoothed)
        elif above and sum(a for _, a in self._history) >= p.confirm_k:
            first = next(s for s, a in self._history if a)
            pending, self._pending = self._pending, None
            if pending is not None and self._gap_s(pending, first) <= p.merge_gap_s:
                self._open = _Open(
                    pending.start_s, end_s, start_s, max(pending.peak_score, smoothed)
                )
            else:
                if pending is not None:
                    done.append(self._detection(pending))
                self._open = _Open(first, end_s, start_s, smoothed)
        elif self._pending is not None:
            done += self._release_pending(start_s)
        return done

    def finish(self) -> list[Detection]:
        """The source ended: close the open event and release a held one; reset the state."""
        done = []
        if self._pending is not None:
            done.append(self._detection(self._pending))
        if self._open is not None:
            done.append(self._detection(self._open))
        self._reset()
        return done

    def _gap_s(self, before: _Open, next_start_s: float) -> float:
        """Time covered only by windows below the threshold between two events (window grid)."""
        return next_start_s - before.last_window_start_s - self._hop_s

    def _close(self) -> list[Detection]:
        event, self._open = self._open, None
        self._quiet_until_s = event.last_window_start_s + self._hop_s + self.params.refractory_s
        self._history.clear()
        if self.params.merge_gap_s > 0:
            self._pending = event  # (a pending event was absorbed when this one opened)
            return []
        return [self._detection(event)]

    def _release_pending(self, now_start_s: float) -> list[Detection]:
        """Emit the held event once no later event can begin within merge_gap_s of it."""
        candidates = [s for s, a in self._history if a]
        earliest_next = candidates[0] if candidates else now_start_s + self._hop_s
        if self._gap_s(self._pending, earliest_next) > self.params.merge_gap_s:
            event, self._pending = self._pending, None
            return [self._detection(event)]
        return []

    def _detection(self, event: _Open) -> Detection:
        return Detection(self.label, event.start_s, event.end_s, event.peak_score)


class Detector:
    """One :class:`LabelDetector` per label, fed a whole score vector per window."""

    def __init__(self, params: dict[str, DetectorParams]) -> None:
        self.labels = list(params)
        self._by_label = [LabelDetector(label, params[label]) for label in self.labels]

    def update(self, start_s: float, end_s: float, scores) -> list[Detection]:
        """scores: one probability per label, in ``labels`` order."""
        done: list[Detection] = []
        for detector, score in zip(self._by_label, scores):
            done += detector.update(start_s, end_s, float(score))
        return done

    def finish(self) -> list[Detection]:
        done: list[Detection] = []
        for detector in self._by_label:
            done += detector.finish()
        return done


def detector_params(
    *, labels: tuple[str, ...], bundle_thresholds: dict[str, float], detection
) -> dict[str, DetectorParams]:
    """Per-label params: the bundle's calibrated threshold unless ``detection.thresholds``
    overrides it.

    detection: the ``detection`` config section. Raises ValueError naming an override for a
    label the model does not have.
    """
    unknown = sorted(set(detection.thresholds) - set(labels))
    if unknown:
        raise ValueError(
            f"detection.thresholds.{unknown[0]}: not a label of the model "
            f"(labels: {', '.join(labels)})"
        )
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
        )
        for label in labels
    }
