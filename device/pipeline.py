"""The worker: ring buffer -> streaming log-mel -> model window every hop -> detector -> sink queue.

One :class:`Pipeline` owns the front end, the window of frames, the classifier and the
detector; the same object serves the live microphone (:func:`run_live`) and replay (one file
after another), so live and replay give the same events for the same audio.

Per hop the work is proportional to the hop: the front end computes only the frames a chunk
completes, each frame is quantized once when it arrives and stored twice in a (2W, n_mels)
buffer, so the latest W frames are always one contiguous slice handed to the interpreter.

Time: a source's audio is split into segments (a new one after a gap: ring overrun, microphone
reopened). Window k of a segment starting at time s0 covers [s0 + k hop_s, s0 + k hop_s + window_s]
(a window ending at sample t covers [t - window_s, t]); all times are seconds from the start of
the source.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, replace

import numpy as np

from device.audio import Resampler
from device.clock import clock_synced, utc_iso
from device.detector import Detection, Detector
from device.events import CLOSED, OPEN, Event, WindowScores
from device.features import StreamingLogMel
from device.health import Health
from device.paths import Sequence
from device.ringbuffer import RingBuffer
from device.runtime import Classifier
from device.sinks import SinkQueue
from device.sources import SourceError

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 10.0
"""Seconds between systemd STATUS= updates."""
HEALTH_LOG_INTERVAL_S = 600.0
"""Seconds between health lines in the log."""


class EventFactory:
    """Turns detections into :class:`Event` messages: id, sequence number, device, clocks.

    ``replay``: events of replayed files: marked ``replay``, their ids derived from the source,
    label, start and ``id_salt`` (the model), so analysing a file again gives the same ids
    (a resumed batch equals an uninterrupted one; a subscriber drops re-sent events)."""

    def __init__(
        self, *, device_id: str, sequence: Sequence, replay: bool = False, id_salt: str = ""
    ) -> None:
        self.device_id = device_id
        self.sequence = sequence
        self.replay = replay
        self.id_salt = id_salt

    def make(
        self,
        detection: Detection,
        *,
        source: str,
        t0_wall: float | None,
        t0_mono: float,
        site: str | None = None,
        time_source: str | None = "clock",
        opened: Event | None = None,
    ) -> Event:
        """t0_wall / t0_mono: wall-clock and monotonic time of the source's time 0 (t0_wall
        None: unknown, the event's start_utc is None). opened: the event this detection closes,
        as sent when it opened (the closing one keeps its id and seq)."""
        start_s = round(detection.start_s, 3)
        if opened is not None:
            event_id = opened.event_id
        elif self.replay:
            key = f"{self.id_salt}\0{self.device_id}\0{source}\0{detection.label}\0{start_s:.3f}"
            event_id = uuid.uuid5(uuid.NAMESPACE_URL, key).hex
        else:
            event_id = uuid.uuid4().hex
        return Event(
            event_id=event_id,
            seq=opened.seq if opened is not None else self.sequence.next(),
            device_id=self.device_id,
            label=detection.label,
            start_s=start_s,
            end_s=round(detection.end_s, 3),
            peak_score=round(float(detection.peak_score), 4),
            source=source,
            start_utc=None if t0_wall is None else utc_iso(t0_wall + detection.start_s),
            clock_synced=t0_wall is not None if self.replay else clock_synced(),
            mono_s=round(t0_mono + detection.start_s, 3),
            site=site,
            time_source=time_source if t0_wall is not None else None,
            replay=self.replay,
            state=CLOSED if detection.closed else OPEN,
        )


@dataclass(frozen=True)
class ClipSettings:
    """Audio saved around each event (outputs.clips)."""

    pre_s: float
    post_s: float


class Pipeline:
    """Window scoring and detection over one source at a time. Not thread-safe: the worker
    owns it."""

    def __init__(
        self,
        *,
        classifier: Classifier,
        detector: Detector,
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
        self._t0_wall = self._t0_mono = 0.0
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
        while self._next_window_end < first + len(frames):
            upto = self._next_window_end - first + 1
            self._store(quantized[done:upto], first + done)
            done = upto
            self._evaluate(self._next_window_end)
            self._next_window_end += self.hop_frames
        self._store(quantized[done:], first + done)

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

    def _evaluate(self, last_frame: int) -> None:
        """Run the model on the window whose last frame is ``last_frame`` (segment index)."""
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
        for detection in self.detector.update(start_s, end_s, scores, self.classifier.last_frames):
            self._emit(detection)
        if self._arrival is not None:
            arrival_mono, written = self._arrival
            # When the window's last sample arrived, from the newest sample's arrival time.
            last_sample_s = (
                self._segment_start_s
                + (last_frame * self.params.hop_length + self.params.n_fft)
                / self.params.sample_rate
            )
            newest_s = written / self.capture_rate
            arrived = arrival_mono - max(0.0, newest_s - last_sample_s)
            health.hop_latency.add(max(0.0, time.monotonic() - arrived))

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
        waiting = []
        for event, start, stop in self._clips_pending:
            if final or self.ring.written >= stop:
                _, samples = self.ring.get(start, stop)
                if len(samples):
                    self.queue.put_clip(event, samples, self.capture_rate)
            else:
                waiting.append((event, start, stop))
        self._clips_pending = waiting


def run_live(
    *,
    source,
    pipeline: Pipeline,
    liveness,
    backoff,
    stop: threading.Event,
    notifier,
    health: Health,
) -> None:
    """The live worker loop (main thread) until ``stop`` is set; ``source`` is already open.

    Reopens the microphone (with backoff, found again by name) when the stream stops, no audio
    arrives for audio.liveness_timeout_s, or the audio is digital silence for
    audio.silence_timeout_s. Sends systemd READY=1 once audio flows, WATCHDOG=1 only while
    both audio and inferences advance and no part registered with ``health.add_check`` (the
    MQTT publisher) says it is stalled, STATUS= every few seconds.
    """
    t0_mono = time.monotonic()
    liveness.reset(t0_mono)
    ready = False
    healthy_since = t0_mono
    last_status = last_log = t0_mono
    pinged = (health.audio_s, health.windows)
    while not stop.is_set():
        if source.ring.wait(0.1, until=pipeline.next_window_index() if ready else None):
            if not ready:
                # Time 0 of the session is its first sample, which may arrive a while after
                # the stream opened: date it from the newest block's arrival.
                t0_mono = source.last_block_mono - source.ring.written / source.capture_rate
                pipeline.begin_source(
                    source.name, t0_wall=time.time() - (time.monotonic() - t0_mono), t0_mono=t0_mono
                )
                pipeline.begin_segment(source.ring, capture_rate=source.capture_rate)
            samples = pipeline.consume(arrival_mono=source.last_block_mono)
            liveness.saw(samples, time.monotonic())
            if not ready:
                ready = True
                notifier.ready(status=f"listening on {source.name}")
                log.info(
                    "listening on %s (hop %.2f s, window %.2f s)",
                    source.name,
                    pipeline.hop_s,
                    pipeline.window_s,
                )
        now = time.monotonic()
        health.overflows = source.overflows
        problem = liveness.problem(now, running=source.running, last_audio=source.last_block_mono)
        if problem is not None:
            if not _reopen(
                problem,
                source=source,
                pipeline=pipeline,
                backoff=backoff,
                stop=stop,
                health=health,
                t0_mono=t0_mono,
            ):
                break
            liveness.reset(time.monotonic())
            healthy_since = time.monotonic()
            continue
        if now - healthy_since > backoff.longest:
            backoff.reset()
        progress = (health.audio_s, health.windows)
        if progress[0] > pinged[0] and progress[1] > pinged[1]:
            stalls = health.stalls()
            if stalls:
                # systemd restarts a daemon whose watchdog starves; say why first.
                log.error("watchdog not fed: %s", "; ".join(stalls))
            else:
                notifier.watchdog()
            pinged = progress
        if now - last_status >= STATUS_INTERVAL_S:
            notifier.status(health.status_line())
            last_status = now
        if now - last_log >= HEALTH_LOG_INTERVAL_S:
            log.info("health: %s", health.status_line())
            last_log = now
    if ready:
        pipeline.end_source(pad_short=False)


def _reopen(
    problem: str,
    *,
    source,
    pipeline: Pipeline,
    backoff,
    stop: threading.Event,
    health: Health,
    t0_mono: float,
) -> bool:
    """Close and reopen the microphone until it works or ``stop`` is set; False when stopped."""
    health.reopens += 1
    if problem == "no audio":
        health.liveness_reopens += 1
    elif problem == "silence":
        health.silence_reopens += 1
    else:
        health.device_errors += 1
    log.warning("microphone %s: %s; reopening it", source.name, problem)
    pipeline.end_segment()
    source.close()
    while not stop.is_set():
        if stop.wait(backoff.next_delay()):
            return False
        try:
            source.open(start_s=time.monotonic() - t0_mono)
        except SourceError as exc:
            health.device_errors += 1
            log.warning("microphone reopen failed: %s", exc)
            continue
        pipeline.begin_segment(source.ring, capture_rate=source.capture_rate)
        return True
    return False


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
