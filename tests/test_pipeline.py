"""The worker on a real int8 model: chunking, window timing, resampling, clips, gaps, and the
live loop's reopen logic with a fake sounddevice at the seam."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from tinymodel import noise, tone

from device.bundle import load_bundle
from device.config import validate
from device.eventfactory import EventFactory
from device.events import SinkBase
from device.health import Health
from device.pipeline import build_pipeline
from device.resample import Resampler
from device.ringbuffer import RingBuffer
from device.runtime import load_classifier
from device.sequence import Sequence
from device.sinks import SinkQueue
from device.sources import Backoff, Liveness, MicrophoneSource
from device.supervisor import run_live

SR = 16000


class Collect(SinkBase):
    """Sink collecting everything."""

    wants_scores = True

    def __init__(self) -> None:
        self.events, self.scores, self.ends, self.clips = [], [], [], []

    def on_event(self, e):
        self.events.append(e)

    def on_scores(self, s):
        self.scores.append(s)

    def on_source_end(self, source):
        self.ends.append(source)

    def on_clip(self, e, samples, rate):
        self.clips.append((e, samples, rate))

    def close(self):
        pass


@pytest.fixture(scope="module")
def classifier(tone_bundle):
    return load_classifier(load_bundle(tone_bundle))


def make(classifier, **config):
    cfg = validate(config)
    sink = Collect()
    health = Health()
    queue = SinkQueue([sink], maxsize=10_000, block=True, health=health).start()
    pipeline = build_pipeline(
        cfg,
        classifier,
        queue=queue,
        health=health,
        events=EventFactory(device_id="test", sequence=Sequence()),
    )
    return pipeline, queue, sink, health


def tones_signal(seconds: float, tones_at: list[tuple[float, float]], sr: int = SR) -> np.ndarray:
    x = noise(seconds, sr)
    for start, length in tones_at:
        x[int(start * sr) : int(start * sr) + int(length * sr)] += tone(2000, length, sr)
    return x


def replay(
    classifier,
    samples: np.ndarray,
    chunks: list[int] | int,
    *,
    rate: int = SR,
    ring_s: float = 30.0,
    **config,
):
    """Feed samples (at ``rate``) through ring and pipeline in the given chunk sizes."""
    pipeline, queue, sink, health = make(classifier, **config)
    ring = RingBuffer(int(ring_s * rate))
    pipeline.begin_source("test.wav", t0_wall=0.0, t0_mono=0.0)
    pipeline.begin_segment(ring, capture_rate=rate)
    sizes = iter(chunks if isinstance(chunks, list) else [])
    pos = 0
    while pos < len(samples):
        n = next(sizes, None) or (chunks if isinstance(chunks, int) else 1000)
        ring.write(samples[pos : pos + n])
        pipeline.consume()
        pos += n
    pipeline.end_source(pad_short=True)
    queue.close()
    return sink, health


def test_windows_every_hop_with_source_times(classifier):
    sink, health = replay(classifier, noise(10.0, SR), 4000)
    starts = [s.start_s for s in sink.scores]
    # 1 s windows every 0.5 s: [0, 1], [0.5, 1.5], ..., [9, 10].
    assert starts == pytest.approx([k * 0.5 for k in range(19)])
    assert all(s.end_s == pytest.approx(s.start_s + 1.0) for s in sink.scores)
    assert health.windows == 19 and health.audio_s == pytest.approx(10.0)
    assert health.inference.percentile_ms(50) > 0 and 0 < health.realtime_factor < 1


def test_events_are_where_the_tones_are(classifier):
    x = tones_signal(20.0, [(3.0, 2.0), (12.0, 1.5)])
    sink, _ = replay(classifier, x, 1600)
    spans = [(e.start_s, e.end_s) for e in sink.events]
    assert len(spans) == 2
    for (start, end), (t0, length) in zip(spans, [(3.0, 2.0), (12.0, 1.5)]):
        # Windows touching the tone may fire: within one window + hop of it.
        assert t0 - 1.5 <= start <= t0 + 0.5
        assert t0 + length - 0.5 <= end <= t0 + length + 1.5
    assert [e.seq for e in sink.events] == [1, 2]
    assert sink.ends == ["test.wav"]


def test_chunk_size_does_not_change_scores_or_events(classifier):
    x = tones_signal(12.0, [(2.0, 1.0), (6.3, 2.2)])
    reference, _ = replay(classifier, x, 16000)
    for chunks in ([7, 333, 1601, 40000, 1], 799, 160):
        other, _ = replay(classifier, x, chunks)
        assert [(s.start_s, s.scores) for s in other.scores] == [
            (s.start_s, s.scores) for s in reference.scores
        ]
        assert [(e.start_s, e.end_s, e.peak_score) for e in other.events] == [
            (e.start_s, e.end_s, e.peak_score) for e in reference.events
        ]


class CountingClassifier:
    """The real classifier behind the pipeline's seam, counting the frames it is handed to
    quantize (each call's count)."""

    def __init__(self, classifier) -> None:
        self._classifier = classifier
        self.batches: list[int] = []

    def __getattr__(self, name):
        return getattr(self._classifier, name)

    def quantize(self, frames):
        self.batches.append(len(frames))
        return self._classifier.quantize(frames)


def test_per_hop_work_grows_with_the_hop_not_the_window(classifier):
    """Each frame is computed and quantized once, when its chunk completes it."""
    counting = CountingClassifier(classifier)
    x = noise(5.0, SR)
    sink, _ = replay(counting, x, 800)  # 50 ms chunks: 2 or 3 new frames each
    assert max(counting.batches) <= 3
    assert sum(counting.batches) == classifier.bundle.features.n_frames(5 * SR)
    reference, _ = replay(classifier, x, 800)
    assert [(s.start_s, s.scores) for s in sink.scores] == [
        (s.start_s, s.scores) for s in reference.scores
    ]


def test_a_file_shorter_than_a_window_is_one_zero_padded_window(classifier):
    x = tones_signal(0.6, [(0.0, 0.6)])
    sink, _ = replay(classifier, x, 1000)
    assert [(s.start_s, s.end_s) for s in sink.scores] == [(0.0, 1.0)]
    assert sink.scores[0].scores["tone"] > 0.5
    [event] = sink.events
    # The tone bundle records no extent rule: the centre rule, the window's middle hop
    # [0.25, 0.75], which ends where the audio ends.
    assert (event.start_s, event.end_s) == (0.25, 0.6)


def test_capture_at_48k_is_resampled_and_gives_the_same_events(classifier):
    x16 = tones_signal(12.0, [(2.0, 1.5), (7.0, 2.0)])
    x48 = tones_signal(12.0, [(2.0, 1.5), (7.0, 2.0)], sr=48000)
    at16, _ = replay(classifier, x16, 800)
    at48, health = replay(classifier, x48, 2400, rate=48000)
    assert len(at48.events) == len(at16.events) == 2
    for a, b in zip(at48.events, at16.events):
        assert abs(a.start_s - b.start_s) <= 0.5 and abs(a.end_s - b.end_s) <= 0.5
    assert health.audio_s == pytest.approx(12.0, abs=0.05)


def test_event_clips_carry_pre_and_post_roll_from_the_ring(classifier):
    x = tones_signal(16.0, [(5.0, 2.0)])
    sink, _ = replay(
        classifier, x, 800, outputs={"clips": {"enabled": True, "pre_s": 1.0, "post_s": 2.0}}
    )
    [event] = sink.events
    [(clip_event, samples, rate)] = sink.clips
    assert clip_event == event and rate == SR
    expected = round((event.end_s + 2.0) * SR) - round((event.start_s - 1.0) * SR)
    assert len(samples) == expected
    start = round((event.start_s - 1.0) * SR)
    np.testing.assert_array_equal(samples, x[start : start + expected])


def test_a_ring_overrun_restarts_the_segment_and_is_counted(classifier):
    pipeline, queue, sink, health = make(classifier)
    ring = RingBuffer(SR * 2)
    pipeline.begin_source("mic", t0_wall=0.0, t0_mono=0.0)
    pipeline.begin_segment(ring, capture_rate=SR)
    x = noise(8.0, SR)
    ring.write(x[: 2 * SR])
    pipeline.consume()
    for k in range(2, 8):  # the worker stalls for 6 s, the ring holds 2 s
        ring.write(x[k * SR : (k + 1) * SR])
    pipeline.consume()
    pipeline.end_source(pad_short=False)
    queue.close()
    assert health.overrun_samples == 4 * SR
    # The new segment starts at 6.0 s, where the oldest held audio begins.
    assert [s.start_s for s in sink.scores] == [0.0, 0.5, 1.0, 6.0, 6.5, 7.0]


# --- the live loop, with a fake sounddevice -------------------------------------------------


class FakeStream:
    """Calls the callback from a thread with blocks of ``signal`` (looped), like PortAudio."""

    def __init__(self, sd, *, device, samplerate, channels, dtype, blocksize, callback):
        self.sd, self.callback, self.blocksize, self.channels = sd, callback, blocksize, channels
        self.samplerate = samplerate
        self.active = False
        self._stop = threading.Event()

    def start(self):
        self.active = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        status = type("Status", (), {"input_overflow": False})()
        pos = 0
        while not self._stop.is_set():
            mode = self.sd.mode
            if mode == "dead":
                self.active = False
                return
            if mode != "stall":
                block = self.sd.signal(pos, self.blocksize)
                self.callback(
                    np.repeat(block[:, None], self.channels, axis=1), self.blocksize, None, status
                )
                pos += self.blocksize
            time.sleep(self.blocksize / self.samplerate / 4)  # 4x real time

    def abort(self):
        self._stop.set()

    def close(self):
        self._stop.set()
        self.active = False


class FakeSoundDevice:
    """The parts of the sounddevice module that MicrophoneSource uses."""

    def __init__(self):
        self.mode = "ok"  # ok | stall | silent | dead
        self.opens = 0
        self.fail_opens = 0
        self.devices = [
            {"name": "Speaker", "max_input_channels": 0, "default_samplerate": 48000.0},
            {"name": "USB Mic", "max_input_channels": 2, "default_samplerate": 16000.0},
        ]
        self._noise = noise(4.0, SR)

    def signal(self, pos, n):
        if self.mode == "silent":
            return np.zeros(n, np.float32)
        idx = np.arange(pos, pos + n) % len(self._noise)
        return self._noise[idx]

    def query_devices(self, kind=None):
        return self.devices[1] if kind == "input" else self.devices

    def check_input_settings(self, **kwargs):
        pass

    def InputStream(self, **kwargs):
        self.opens += 1
        if self.fail_opens:
            self.fail_opens -= 1
            raise RuntimeError("device busy")
        return FakeStream(self, **kwargs)


class FakeNotifier:
    def __init__(self):
        self.calls = []

    def ready(self, status=None):
        self.calls.append("ready")

    def watchdog(self):
        self.calls.append("watchdog")

    def status(self, text):
        self.calls.append("status")


def live(classifier, sd, script, *, silence_timeout_s=0.0):
    """Run run_live in a thread while ``script(source, health)`` drives the fake;
    returns (health, notifier, sink)."""
    pipeline, queue, sink, health = make(classifier)
    source = MicrophoneSource(
        device="usb", sample_rate=None, model_rate=SR, channels=2, block_s=0.05, ring_s=10.0, sd=sd
    )
    source.open()
    stop = threading.Event()
    notifier = FakeNotifier()
    worker = threading.Thread(
        target=run_live,
        kwargs=dict(
            source=source,
            pipeline=pipeline,
            stop=stop,
            notifier=notifier,
            health=health,
            liveness=Liveness(liveness_timeout_s=0.3, silence_timeout_s=silence_timeout_s),
            backoff=Backoff(0.05, 0.4),
        ),
    )
    worker.start()
    try:
        script(source, health)
    finally:
        stop.set()
        worker.join(10)
        source.close()
        queue.close()
    assert not worker.is_alive()
    return health, notifier, sink


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_live_loop_reports_ready_pings_watchdog_and_ends_the_source(classifier):
    sd = FakeSoundDevice()
    health, notifier, sink = live(
        classifier, sd, lambda source, h: wait_for(lambda: h.windows >= 6)
    )
    assert notifier.calls[0] == "ready" and "watchdog" in notifier.calls
    assert health.reopens == 0 and sink.ends == ["USB Mic"]
    assert health.hop_latency.percentile_ms(99) is not None


def test_a_stalled_stream_is_reopened_and_audio_resumes(classifier):
    sd = FakeSoundDevice()

    def script(source, health):
        wait_for(lambda: health.windows >= 2)
        sd.mode = "stall"
        wait_for(lambda: health.liveness_reopens >= 1)
        sd.mode = "ok"
        windows = health.windows
        wait_for(lambda: health.windows >= windows + 4)

    health, notifier, _ = live(classifier, sd, script)
    assert health.reopens >= 1 and health.liveness_reopens >= 1 and sd.opens >= 2


def test_a_dead_device_is_retried_with_backoff_without_crashing(classifier):
    sd = FakeSoundDevice()

    def script(source, health):
        wait_for(lambda: health.windows >= 2)
        sd.fail_opens = 3  # the next three opens fail
        sd.mode = "dead"  # the stream stops by itself
        wait_for(lambda: health.device_errors >= 1)
        sd.mode = "ok"
        wait_for(lambda: sd.opens >= 5)
        windows = health.windows
        wait_for(lambda: health.windows >= windows + 4)

    health, _, _ = live(classifier, sd, script)
    # One stopped stream plus three failed opens, each counted; then it worked again.
    assert health.device_errors == 4 and health.reopens == 1


def test_digital_silence_is_reopened_when_enabled(classifier):
    sd = FakeSoundDevice()

    def script(source, health):
        wait_for(lambda: health.windows >= 2)
        sd.mode = "silent"
        wait_for(lambda: health.silence_reopens >= 1)

    health, _, _ = live(classifier, sd, script, silence_timeout_s=0.3)
    assert health.silence_reopens >= 1 and health.liveness_reopens == 0


def test_resampled_capture_rate_when_the_device_cannot_do_the_model_rate(classifier):
    sd = FakeSoundDevice()
    sd.devices[1]["default_samplerate"] = 48000.0

    def refuse(*, samplerate, **kwargs):
        if samplerate != 48000:
            raise RuntimeError("Invalid sample rate")

    sd.check_input_settings = refuse
    source = MicrophoneSource(
        device="USB", sample_rate=None, model_rate=SR, channels=1, block_s=0.05, ring_s=10.0, sd=sd
    )
    source.open()
    source.close()
    assert source.capture_rate == 48000 and source.ring.capacity == 480000
    assert Resampler(48000, SR).up == 1


def test_an_event_goes_out_when_it_opens_and_again_when_it_closes(classifier):
    """A sink that wants open events (MQTT) gets each event at onset, then closed with the
    same id and seq; the other sinks (Collect here stands for JSONL) get closed events only."""

    class Opens(Collect):
        wants_open_events = True

    pipeline, queue, closed_only, _ = make(classifier)
    opens = Opens()
    queue.sinks.append(opens)
    ring = RingBuffer(30 * SR)
    pipeline.begin_source("test.wav", t0_wall=0.0, t0_mono=0.0)
    pipeline.begin_segment(ring, capture_rate=SR)
    x = tones_signal(12.0, [(2.0, 1.5), (7.0, 2.5)])
    seen_open_before_close = []
    for pos in range(0, len(x), 1600):
        ring.write(x[pos : pos + 1600])
        pipeline.consume()
        queue.drain()
        states = [e.state for e in opens.events]
        if "open" in states and "closed" not in states:
            seen_open_before_close.append(pos / SR)
    pipeline.end_source(pad_short=True)
    queue.close()
    assert [e.state for e in opens.events] == ["open", "closed", "open", "closed"]
    assert [e.state for e in closed_only.events] == ["closed", "closed"]
    for opened, closed in zip(opens.events[::2], opens.events[1::2]):
        assert (opened.event_id, opened.seq) == (closed.event_id, closed.seq)
        assert opened.start_s == closed.start_s and opened.end_s <= closed.end_s
    assert [e.event_id for e in closed_only.events] == [e.event_id for e in opens.events[1::2]]
    # The first call was announced while it was still sounding (it ends at 3.5 s).
    assert seen_open_before_close and seen_open_before_close[0] < 3.5
