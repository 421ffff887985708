"""Stage: the live supervisor. The main-thread loop of the daemon around one :class:`Pipeline`.

Contract: :func:`run_live` runs on the main thread until ``stop`` is set; it feeds the pipeline
from the microphone's ring buffer (the audio callback thread only writes into it), reopens the
microphone when audio stops, and speaks to systemd (READY=1, WATCHDOG=1, STATUS=). All times
are time.monotonic() seconds unless named otherwise.
"""

from __future__ import annotations

import logging
import threading
import time

from device.health import Health
from device.notify import Notifier
from device.pipeline import Pipeline
from device.sources import Backoff, Liveness, MicrophoneSource, SourceError

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 10.0
"""Seconds between systemd STATUS= updates."""
HEALTH_LOG_INTERVAL_S = 600.0
"""Seconds between health lines in the log."""


def run_live(
    *,
    source: MicrophoneSource,
    pipeline: Pipeline,
    liveness: Liveness,
    backoff: Backoff,
    stop: threading.Event,
    notifier: Notifier,
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
        ring = source.ring
        assert ring is not None  # open: run_live's precondition, and _reopen's when it succeeds
        if ring.wait(0.1, until=pipeline.next_window_index() if ready else None):
            if not ready:
                # Time 0 of the session is its first sample, which may arrive a while after
                # the stream opened: date it from the newest block's arrival.
                t0_mono = source.last_block_mono - ring.written / source.capture_rate
                pipeline.begin_source(
                    source.name, t0_wall=time.time() - (time.monotonic() - t0_mono), t0_mono=t0_mono
                )
                pipeline.begin_segment(ring, capture_rate=source.capture_rate)
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
    source: MicrophoneSource,
    pipeline: Pipeline,
    backoff: Backoff,
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
        assert source.ring is not None  # open() succeeded
        pipeline.begin_segment(source.ring, capture_rate=source.capture_rate)
        return True
    return False
