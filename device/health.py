"""Health counters of the running pipeline: for the MQTT state topic, the log and systemd STATUS=.

The worker increments plain integer attributes and records timings; other threads (the MQTT
sink, the status line) only read them through :meth:`Health.snapshot`. Integer updates are
atomic under the GIL, and the timing rings are copied before percentiles are taken, so no
lock is needed on the audio path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")


class Degradations:
    """What storage the recorder is doing without right now, and how often it had to.

    A part that cannot write (the state folder full or read-only: SD cards remount read-only
    when they fail) calls :meth:`failed` and carries on in a lesser way (sequence numbers in
    memory, the outbox in memory, no clips); it calls :meth:`ok` once a write succeeds again.
    Each change is logged once (a warning when a part degrades, info when it recovers), not per
    event. Thread-safe: the worker, the sink thread and the MQTT publisher all report here.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[str, str] = {}
        self.count = 0
        """Degradations entered since start (each part counts once per episode)."""

    def failed(self, part: str, error: BaseException | str, *, fallback: str) -> None:
        """``part`` (e.g. "outbox") could not write because of ``error``; ``fallback`` says
        what happens instead, for the one log line."""
        reason = _reason(error)
        with self._lock:
            if part in self._active:
                return
            self._active[part] = reason
            self.count += 1
        # The part is in the template: the log's repeat filter keys on it, and one part's
        # warning must not hide another's.
        log.warning(f"storage: {part} cannot write (%s); %s until it can", reason, fallback)

    def ok(self, part: str) -> None:
        """``part`` wrote successfully (cheap when it was not degraded)."""
        if part not in self._active:
            return
        with self._lock:
            reason = self._active.pop(part, None)
        if reason is not None:
            log.info("storage: %s writes again (was: %s)", part, reason)

    def active(self) -> dict[str, str]:
        """Degraded parts and why, e.g. ``{"outbox": "No space left on device"}``."""
        with self._lock:
            return dict(self._active)


def _reason(error: BaseException | str) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


class Timings:
    """The last ``size`` durations (seconds) in a preallocated ring, for percentiles."""

    def __init__(self, size: int = 2048) -> None:
        self._values = np.zeros(size, np.float64)
        self._count = 0

    def add(self, seconds: float) -> None:
        self._values[self._count % len(self._values)] = seconds
        self._count += 1

    def percentile_ms(self, q: float) -> float | None:
        """The q-th percentile in milliseconds, or None before the first value."""
        n = min(self._count, len(self._values))
        if n == 0:
            return None
        return round(float(np.percentile(self._values[:n].copy(), q)) * 1000.0, 3)


def cpu_temperature_c() -> float | None:
    """SoC temperature in degrees Celsius where the kernel exposes it (Raspberry Pi), else None."""
    try:
        return round(int(THERMAL_ZONE.read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        return None


class Health:
    """Counters of one daemon or replay run. Written by the worker, read by anyone."""

    def __init__(self) -> None:
        self.started_mono = time.monotonic()
        self.source = ""
        """Microphone name or the file being replayed."""
        self.audio_s = 0.0
        """Seconds of audio processed (at the model's rate)."""
        self.busy_s = 0.0
        """Worker seconds spent on features, inference and detection."""
        self.windows = 0
        """Windows the model evaluated."""
        self.events = 0
        self.overflows = 0
        """Audio driver input overflows (PortAudio dropped samples before the callback)."""
        self.overrun_samples = 0
        """Samples lost because the worker fell more than the ring buffer behind."""
        self.reopens = 0
        """Microphone streams reopened (any reason)."""
        self.liveness_reopens = 0
        """... because no audio arrived for audio.liveness_timeout_s."""
        self.silence_reopens = 0
        """... because the audio was digital silence or stuck for audio.silence_timeout_s."""
        self.device_errors = 0
        """Stream errors at run time and failed open attempts."""
        self.dropped_events = 0
        """Events the sink queue had no room for (logged; should stay 0)."""
        self.dropped_scores = 0
        """Window scores not written because the sink queue was busy with events."""
        self.inference = Timings()
        self.hop_latency = Timings()
        """From the arrival of a window's last audio block to its scores being queued."""
        self.storage = Degradations()
        """Storage this run is doing without (full or read-only state folder)."""
        self._gauges: dict[str, Callable[[], object]] = {}
        self._checks: dict[str, Callable[[], str | None]] = {}

    def add_check(self, name: str, stalled: Callable[[], str | None]) -> None:
        """A part whose progress the watchdog depends on: ``stalled()`` returns why it makes
        none (one line), or None while it is fine (e.g. the MQTT publisher)."""
        self._checks[name] = stalled

    def stalls(self) -> list[str]:
        """Why each registered part is stalled (empty while all make progress)."""
        found = []
        for name, stalled in self._checks.items():
            try:
                reason = stalled()
            except Exception as exc:  # noqa: BLE001 - a broken check is itself a stall
                reason = f"{name}: check failed ({exc})"
            if reason:
                found.append(reason)
        return found

    def add_gauge(self, name: str, read: Callable[[], object]) -> None:
        """Include ``name: read()`` in every snapshot (e.g. the sink queue depth)."""
        self._gauges[name] = read

    @property
    def realtime_factor(self) -> float | None:
        """Processing time per second of audio (0.01 = 1 % of real time; above 1 falls behind)."""
        return round(self.busy_s / self.audio_s, 5) if self.audio_s else None

    def snapshot(self) -> dict:
        """Everything, as a JSON-ready dict (the MQTT state topic adds its own keys)."""
        state = {
            "uptime_s": round(time.monotonic() - self.started_mono, 1),
            "source": self.source,
            "audio_s": round(self.audio_s, 1),
            "windows": self.windows,
            "events": self.events,
            "overflows": self.overflows,
            "overrun_samples": self.overrun_samples,
            "reopens": self.reopens,
            "liveness_reopens": self.liveness_reopens,
            "silence_reopens": self.silence_reopens,
            "device_errors": self.device_errors,
            "dropped_events": self.dropped_events,
            "dropped_scores": self.dropped_scores,
            "inference_ms_p50": self.inference.percentile_ms(50),
            "inference_ms_p99": self.inference.percentile_ms(99),
            "hop_latency_ms_p50": self.hop_latency.percentile_ms(50),
            "hop_latency_ms_p99": self.hop_latency.percentile_ms(99),
            "realtime_factor": self.realtime_factor,
            "cpu_temp_c": cpu_temperature_c(),
            "degraded": self.storage.active(),
            "degradations": self.storage.count,
            "stalled": self.stalls(),
        }
        for name, read in self._gauges.items():
            state[name] = read()
        return state

    def status_line(self) -> str:
        """One short line for systemd's STATUS= and the periodic log line."""
        s = self.snapshot()
        rtf = s["realtime_factor"]
        return (
            f"{s['windows']} windows, {s['events']} events, "
            f"inference p50 {s['inference_ms_p50'] or 0:.2f} ms, "
            f"rtf {rtf if rtf is not None else 0:.4f}, overflows {s['overflows']}, "
            f"reopens {s['reopens']}, queue {s.get('queue_depth', 0)}"
            + (f", degraded: {', '.join(sorted(s['degraded']))}" if s["degraded"] else "")
        )
