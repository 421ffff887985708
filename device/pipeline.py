"""Stage: the worker. Ring buffer -> resampler -> streaming log-mel -> model window every
hop -> detector -> events -> sink queue.

Contract: a :class:`Pipeline` reads mono float32 capture-rate samples from a
:class:`device.ringbuffer.RingBuffer`, and puts :class:`device.events.Event` (opening and
closing), :class:`device.events.WindowScores` and clips on the sink queue; times are seconds
from the start of the source. Not thread-safe: the worker thread owns it (the live supervisor,
device.supervisor, or the replay loop, device.replay).

One :class:`Pipeline` owns the front end, the window of frames, the classifier and the
detector; the same object serves the live microphone and replay (one file after another), so
live and replay give the same events for the same audio.

Per hop the work is proportional to the hop: the front end computes only the frames a chunk
completes, each frame is quantized once when it arrives and stored twice in a (2W, n_mels)
buffer, so the latest W frames are always one contiguous slice handed to the interpreter. The
windows a chunk completes go to the detector together: one for the live worker (it wakes when a
window is complete), a block's worth in replay, whose frame rule then stitches them in NumPy
(``EventRule.update_block``); the events are the same either way.

Time: a source's audio is split into segments (a new one after a gap: ring overrun, microphone
reopened). Window k of a segment starting at time s0 covers [s0 + k hop_s, s0 + k hop_s + window_s]
(a window ending at sample t covers [t - window_s, t]); all times are seconds from the start of
the source.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from device.detector import Detection, Detector, EventRule
from device.eventfactory import EventFactory
from device.events import Event, WindowScores
from device.features import StreamingLogMel
from device.health import Health
from device.resample import Resampler
from device.ringbuffer import RingBuffer
from device.runtime import Classifier
from device.sinks import SinkQueue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipSettings:
    """Audio saved around each event (outputs.clips)."""

    pre_s: float
    post_s: float


class _Scored(NamedTuple):
    """One window the model has scored, on its way to the detector (a tuple: one is made per
    window, a frozen dataclass costs several times more to make)."""

    last_frame: int
    """Segment index of its last spectrogram frame."""
    start_s: float
    end_s: float
    scores: np.ndarray
    """(n_labels,) probabilities."""
    frames: np.ndarray | None
    """(steps, n_labels) frame probabilities, or None (a model without a frame output)."""


class Pipeline:
    """Window scoring and detection over one source at a time. Not thread-safe: the worker
    owns it."""

    def __init__(
        self,
        *,
        classifier: Classifier,
        detector: EventRule,
        hop_s: float,
        queue: SinkQueue,
        events: EventFactory,
        health: Health,
        clips: ClipSettings | None = None,
    ) -> None:
        bundle = classifier.bundle
        self.classifier = classifier
        self.detector = detector
        self.queue = queue
        self.events = events
        self.health = health
        self.clips = clips
        self.params = bundle.features
        self.labels = list(bundle.labels)
        self.window_s = bundle.window_s
        self.window_frames = bundle.window_frames
        self.hop_frames = max(1, round(hop_s * self.params.frame_rate))
        self.hop_s = self.hop_frames / self.params.frame_rate
        """The hop actually used: a whole number of spectrogram frames."""
        self._window_samples = (self.window_frames - 1) * self.params.hop_length + self.params.n_fft
        self._frames = np.zeros(
            (2 * self.window_frames, self.params.n_mels), classifier.input_dtype
        )
        self.source = ""
        self._t0_wall: float | None = 0.0
        self._t0_mono = 0.0
        self._site: str | None = None
        self._time_source: str | None = "clock"
        self._source_windows = 0
        self._clips_pending: list[tuple[Event, int, int]] = []
        self._opened: dict[tuple[str, int], Event] = {}
        """Events sent as open, by (label, detector's event number), until they close."""
        self.ring: RingBuffer | None = None
        self.capture_rate = self.params.sample_rate
        self._arrival: tuple[float, int] | None = None

    # --- sources and segments -------------------------------------------------------------

    def begin_source(
        self,
        name: str,
        *,
        t0_wall: float | None,
        t0_mono: float,
        site: str | None = None,
        time_source: str | None = "clock",
    ) -> None:
        """A new source (a file, or the microphone session) whose time 0 is at these clocks
        (t0_wall None: unknown); ``site`` and ``time_source`` go into its events."""
        self.source = name
        self.health.source = name
        self._t0_wall, self._t0_mono = t0_wall, t0_mono
        self._site, self._time_source = site, time_source
        self._source_windows = 0

    def begin_segment(self, ring: RingBuffer, *, capture_rate: int) -> None:
        """Continuous audio starts at ``ring.read_position`` (capture-rate samples since time 0)."""
        self.ring = ring
        self.capture_rate = capture_rate
        self._reset_segment(ring.read_position)

    def _reset_segment(self, start_index: int) -> None:
        self._expected = start_index
        self._segment_start_s = start_index / self.capture_rate
        self._resampler = Resampler(self.capture_rate, self.params.sample_rate)
        self._frontend = StreamingLogMel(self.params)
        self._segment_samples = 0  # at the model's rate
        self._next_window_end = self.window_frames - 1  # segment frame index
        self.audio_end_s = self._segment_start_s

    def end_segment(self) -> None:
        """The audio is interrupted: close open events, save pending clips."""
        for detection in self.detector.finish():
            self._emit(detection)
        self._serve_clips(final=True)

    def end_source(self, *, pad_short: bool) -> None:
        """The source ended. ``pad_short``: a source shorter than one window is scored as one
        zero-padded window (replay)."""
        if pad_short and self._source_windows == 0 and self._segment_samples > 0:
            self._feed(
                np.zeros(self._window_samples - self._segment_samples, np.float32), real=False
            )
        self.end_segment()
        self.queue.put_source_end(self.source)

    def next_window_index(self) -> int:
        """Capture-rate sample index (since time 0) at which the next window's audio is
        complete: the live worker sleeps until then, so it computes a hop's frames in one go
        (a front-end call per 50 ms block costs several times more) without adding latency."""
        p = self.params
        model_samples = self._next_window_end * p.hop_length + p.n_fft - self._segment_samples
        return self._expected + max(1, -(-model_samples * self.capture_rate // p.sample_rate))

    # --- the per-block work ---------------------------------------------------------------

    def consume(self, *, arrival_mono: float | None = None) -> np.ndarray:
        """Process everything unread in the ring; returns those samples (capture rate).

        arrival_mono: time.monotonic() at which the newest sample in the ring arrived (live),
        for the hop latency; None in replay.
        """
        t0 = time.perf_counter()
        ring = self.ring
        assert ring is not None, "begin_segment() first"
        start, samples = ring.read()
        if start != self._expected:  # the producer overwrote audio we had not read
            self.health.overrun_samples += start - self._expected
            log.warning(
                "worker fell behind: %.2f s of audio lost",
                (start - self._expected) / self.capture_rate,
            )
            self.end_segment()
            self._reset_segment(start)
        self._expected = start + len(samples)
        self._arrival = (arrival_mono, ring.written) if arrival_mono is not None else None
        self._feed(self._resampler.process(samples), real=True)
        if self._clips_pending:
            self._serve_clips(final=False)
        self.health.busy_s += time.perf_counter() - t0
        return samples

    def _feed(self, samples: np.ndarray, *, real: bool) -> None:
        """samples: mono float32 at the model's rate, continuing the segment."""
        if not len(samples):
            return
        rate = self.params.sample_rate
        self._segment_samples += len(samples)
        if real:
            self.health.audio_s += len(samples) / rate
            self.audio_end_s = self._segment_start_s + self._segment_samples / rate
        frames = self._frontend.push(samples)
        if not len(frames):
            return
        quantized = self.classifier.quantize(frames)
        first = self._frontend.frames_emitted - len(frames)  # segment index of frames[0]
        done = 0
        windows: list[_Scored] = []
        while self._next_window_end < first + len(frames):
            upto = self._next_window_end - first + 1
            self._store(quantized[done:upto], first + done)
            done = upto
            windows.append(self._score(self._next_window_end))
            self._next_window_end += self.hop_frames
        self._store(quantized[done:], first + done)
        if windows:
            self._detect(windows)

    def _store(self, frames: np.ndarray, first: int) -> None:
        """Frame i goes to rows i % W and i % W + W."""
        w = self.window_frames
        if len(frames) > w:
            first += len(frames) - w
            frames = frames[-w:]
        if not len(frames):
            return
        # At most two contiguous runs of rows (the second after wrapping around).
        row = first % w
        head = min(len(frames), w - row)
        self._frames[row : row + head] = frames[:head]
        self._frames[row + w : row + w + head] = frames[:head]
        if head < len(frames):
            rest = len(frames) - head
            self._frames[:rest] = frames[head:]
            self._frames[w : w + rest] = frames[head:]

    def _score(self, last_frame: int) -> _Scored:
        """Run the model on the window whose last frame is ``last_frame`` (segment index) and
        queue its scores."""
        w = self.window_frames
        offset = (last_frame + 1) % w
        scores, seconds = self.classifier.timed_predict(self._frames[offset : offset + w])
        health = self.health
        health.inference.add(seconds)
        health.windows += 1
        self._source_windows += 1
        first_frame = last_frame - w + 1
        start_s = (
            self._segment_start_s + first_frame * self.params.hop_length / self.params.sample_rate
        )
        end_s = start_s + self.window_s
        if self.queue.wants_scores:
            self.queue.put_scores(
                WindowScores(
                    self.source,
                    round(start_s, 3),
                    round(end_s, 3),
                    {label: float(s) for label, s in zip(self.labels, scores)},
                )
            )
        return _Scored(last_frame, start_s, end_s, scores, self.classifier.last_frames)

    def _detect(self, windows: list[_Scored]) -> None:
        """The detector's events of windows just scored, in time order. One window (the live
        worker wakes once a window is complete) goes alone; several (replay's block of audio)
        go together (``update_block``: the frame rule stitches them in NumPy); the events are
        the same."""
        if len(windows) == 1:
            w = windows[0]
            detections = self.detector.update(w.start_s, w.end_s, w.scores, w.frames)
        else:
            detections = self.detector.update_block(
                [w.start_s for w in windows],
                [w.end_s for w in windows],
                [w.scores for w in windows],
                None if windows[0].frames is None else np.array([w.frames for w in windows]),
            )
        for detection in detections:
            self._emit(detection)
        if self._arrival is not None:
            arrival_mono, written = self._arrival
            newest_s = written / self.capture_rate
            p = self.params
            for w in windows:
                # When the window's last sample arrived, from the newest sample's arrival time.
                last_sample_s = (
                    self._segment_start_s + (w.last_frame * p.hop_length + p.n_fft) / p.sample_rate
                )
                arrived = arrival_mono - max(0.0, newest_s - last_sample_s)
                self.health.hop_latency.add(max(0.0, time.monotonic() - arrived))

    def _emit(self, detection: Detection) -> None:
        """Send an opening event at once; a closing one with the id and seq of its opening."""
        if detection.end_s > self.audio_end_s:  # the zero-padded window of a short file
            detection = replace(detection, end_s=max(detection.start_s, self.audio_end_s))
        key = (detection.label, detection.number)
        opened = self._opened.pop(key, None) if detection.closed else None
        event = self.events.make(
            detection,
            source=self.source,
            t0_wall=self._t0_wall,
            t0_mono=self._t0_mono,
            site=self._site,
            time_source=self._time_source,
            opened=opened,
        )
        if not detection.closed:
            self._opened[key] = event
            self.queue.put_event(event)
            return
        self.health.events += 1
        self.queue.put_event(event)
        if self.clips is not None:
            rate = self.capture_rate
            start = max(0, round((event.start_s - self.clips.pre_s) * rate))
            self._clips_pending.append(
                (event, start, round((event.end_s + self.clips.post_s) * rate))
            )

    def _serve_clips(self, *, final: bool) -> None:
        """Hand finished clips (post-roll recorded, or the audio ended) to the sinks."""
        ring = self.ring
        assert ring is not None, "begin_segment() first"
        waiting = []
        for event, start, stop in self._clips_pending:
            if final or ring.written >= stop:
                _, samples = ring.get(start, stop)
                if len(samples):
                    self.queue.put_clip(event, samples, self.capture_rate)
            else:
                waiting.append((event, start, stop))
        self._clips_pending = waiting


def build_pipeline(
    cfg, classifier: Classifier, *, queue: SinkQueue, health: Health, events: EventFactory
) -> Pipeline:
    """A pipeline with the config's detection and clip settings.

    Raises ValueError (one line naming the key) for a threshold override of an unknown label.
    """
    from device.bundle import event_settings
    from device.detector import detector_params

    bundle = classifier.bundle
    frame_rate = bundle.features.frame_rate
    hop_s = max(1, round(cfg.detection.hop_s * frame_rate)) / frame_rate  # as Pipeline rounds it
    params = detector_params(
        labels=bundle.labels,
        bundle_thresholds=bundle.event_thresholds(),
        detection=cfg.detection,
        trims=bundle.extent_trims(hop_s),
    )
    calibrated = bundle.events.get("detection")
    if calibrated and calibrated != event_settings(cfg.detection):
        differ = [k for k, v in event_settings(cfg.detection).items() if calibrated.get(k) != v]
        log.warning(
            "detection settings differ from those the model's thresholds were calibrated with "
            "(%s); events will not match the bundle's figures",
            ", ".join(f"{k}: {calibrated.get(k)} in model.json" for k in differ),
        )
    clips = cfg.outputs.clips
    return Pipeline(
        classifier=classifier,
        detector=Detector(params, hop_s=hop_s, frames=bundle.frame_layout(hop_s)),
        hop_s=cfg.detection.hop_s,
        queue=queue,
        events=events,
        health=health,
        clips=ClipSettings(clips.pre_s, clips.post_s) if clips.enabled else None,
    )
