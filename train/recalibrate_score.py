"""Scoring a site's background for ``python -m train.recalibrate``, exactly as the device does.

Each file goes through the device's own worker (:class:`device.pipeline.Pipeline`: file
source, resampler, streaming log-mel, the int8 model in LiteRT, a window every hop) with a
:class:`WindowRecorder` where the detector sits, so the recorded windows are the very ones the
device's detector receives in ``python -m device --replay``: same starts, same scores, same
frame scores, same segments. Alarms are then counted by the device's detector
(:class:`device.detector.Detector`) over those windows, at any threshold, without scoring
the audio again: from the window scores (window rule) or from the frame track stitched by the
device's :class:`device.frames.FrameStitcher` once per segment (frames rule).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from device.detector import Detection, Detector, DetectorParams, EventRule, detect
from device.eventfactory import EventFactory
from device.frames import FrameLayout, FrameStitcher
from device.health import Health
from device.pipeline import Pipeline
from device.replay import REPLAY_BLOCK_S
from device.ringbuffer import RingBuffer
from device.runtime import Classifier
from device.sequence import Sequence
from device.sinks import SinkQueue
from device.sources import FileSource


@dataclass(frozen=True)
class Segment:
    """The windows of one stretch of continuous audio (a file, or part of one after a gap)."""

    source: str
    """The file, as given."""
    starts: np.ndarray
    """(K,) window starts, seconds from the start of the file."""
    ends: np.ndarray
    """(K,) window ends, seconds."""
    scores: np.ndarray
    """(K, n_labels) window probabilities."""
    frames: np.ndarray | None
    """(K, steps, n_labels) frame probabilities, or None for a model without a frame output."""


class WindowRecorder(EventRule):
    """Stands where the device's detector sits in the worker (a :class:`device.detector.EventRule`)
    and keeps each window it would receive; makes no events. Not thread-safe."""

    def __init__(self) -> None:
        self.segments: list[Segment] = []
        self.source = ""
        self._rows: list[tuple[float, float, np.ndarray, np.ndarray | None]] = []

    def update(
        self, start_s: float, end_s: float, scores, frames: np.ndarray | None = None
    ) -> list[Detection]:
        self._rows.append(
            (
                start_s,
                end_s,
                np.array(scores, np.float64),
                None if frames is None else np.array(frames, np.float64),
            )
        )
        return []

    def finish(self) -> list[Detection]:
        if self._rows:
            starts, ends, scores, frames = zip(*self._rows)
            self.segments.append(
                Segment(
                    self.source,
                    np.array(starts),
                    np.array(ends),
                    np.stack(scores),
                    None if frames[0] is None else np.stack(frames),
                )
            )
            self._rows = []
        return []


def score_files(
    classifier: Classifier, files: list[Path], *, hop_s: float, log: Callable[[str], object] = print
) -> list[Segment]:
    """The windows of every file, every ``hop_s``, as ``python -m device --replay`` scores them
    (a file shorter than one window: one zero-padded window). Raises device.audio.AudioError
    (one line naming the file) for a file that cannot be read."""
    recorder = WindowRecorder()
    health = Health()
    queue = SinkQueue([], maxsize=100, block=True, health=health).start()
    rate = classifier.bundle.features.sample_rate
    try:
        pipeline = Pipeline(
            classifier=classifier,
            detector=recorder,
            hop_s=hop_s,
            queue=queue,
            events=EventFactory(device_id="recalibrate", sequence=Sequence(), replay=True),
            health=health,
        )
        for path in files:
            recorder.source = str(path)
            before = len(recorder.segments)
            ring = RingBuffer(int(3 * REPLAY_BLOCK_S * rate))
            pipeline.begin_source(str(path), t0_wall=None, t0_mono=0.0)
            pipeline.begin_segment(ring, capture_rate=rate)
            for block in FileSource(path, sample_rate=rate, block_s=REPLAY_BLOCK_S).blocks():
                ring.write(block)
                pipeline.consume()
            pipeline.end_source(pad_short=True)
            log(f"scored {path} ({sum(len(s.starts) for s in recorder.segments[before:])} windows)")
    finally:
        queue.close()
    return recorder.segments


def covered_hours(segments: list[Segment]) -> float:
    """Hours of audio the windows cover, overlaps counted once."""
    seconds = 0.0
    for s in segments:
        if len(s.starts):
            seconds += float(np.sum(np.minimum(np.diff(s.starts), s.ends[:-1] - s.starts[:-1])))
            seconds += float(s.ends[-1] - s.starts[-1])
    return seconds / 3600


class AlarmCounter:
    """Alarms (finished events of the device's detector) of one label over recorded segments,
    at any threshold; the other settings are ``params`` (window-rate, as the device's
    :class:`~device.detector.Detector` takes them)."""

    def __init__(
        self,
        segments: list[Segment],
        index: int,
        label: str,
        params: DetectorParams,
        *,
        window_s: float,
        hop_s: float,
        layout: FrameLayout | None,
    ) -> None:
        self.label, self.params, self.window_s, self.hop_s, self.layout = (
            label,
            params,
            window_s,
            hop_s,
            layout,
        )
        self._index = index
        self._segments = segments
        self._tracks: list[tuple[np.ndarray, np.ndarray]] = []
        if layout is not None:  # stitched once: the device's stitcher, window after window
            for s in segments:
                if s.frames is None:
                    raise ValueError(
                        f"{s.source}: no frame scores to stitch (the model has no frame output)"
                    )
                stitcher = FrameStitcher(layout, s.frames.shape[2])
                parts = [stitcher.push(start, f) for start, f in zip(s.starts.tolist(), s.frames)]
                parts.append(stitcher.finish())
                cells = np.concatenate([p[0] for p in parts])
                self._tracks.append(
                    (cells, np.concatenate([p[1] for p in parts])[:, index : index + 1])
                )

    def scores(self) -> np.ndarray:
        """The values the threshold is compared with: the window scores, or the stitched cells'."""
        if self.layout is not None:
            return (
                np.concatenate([t[1][:, 0] for t in self._tracks]) if self._tracks else np.zeros(0)
            )
        return (
            np.concatenate([s.scores[:, self._index] for s in self._segments])
            if self._segments
            else np.zeros(0)
        )

    def alarms(self, threshold: float) -> int:
        """Finished events at ``threshold`` over every segment (the detector finished at each
        segment's end, as the device finishes it)."""
        params = replace(self.params, threshold=threshold)
        if self.layout is None:
            return sum(
                len(
                    detect(
                        s.starts,
                        s.scores[:, self._index],
                        params,
                        window_s=self.window_s,
                        hop_s=self.hop_s,
                        label=self.label,
                    )
                )
                for s in self._segments
            )
        count = 0
        for cells, scores in self._tracks:
            detector = Detector({self.label: params}, hop_s=self.hop_s, frames=self.layout)
            count += sum(d.closed for d in detector.update_cells(cells, scores) + detector.finish())
        return count
