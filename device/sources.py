"""Stage: sources. The microphone (sounddevice) for live use, audio files for replay.

Contract: mono float32 samples (full scale 1.0) into a :class:`device.ringbuffer.RingBuffer`
at the capture rate in Hz (the microphone's; a file's are resampled to the model's). The
microphone's callback runs on PortAudio's thread; everything else on the worker thread.

The microphone's callback does nothing but downmix, copy into the ring buffer and count
overflows (python-sounddevice's rec_unlimited pattern); all work happens in the worker. The
microphone is found by name (a case-insensitive substring, so it is found again after it was
unplugged and came back with another index) or by index. When it cannot capture at the
model's rate, it captures at its own default rate and the worker resamples.

A file source yields mono blocks at the model's rate, on a simulated clock (as fast as the
worker goes) or paced to real time (``--realtime``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from device.audio import stream_audio
from device.resample import downmix_weights
from device.ringbuffer import RingBuffer

log = logging.getLogger(__name__)


class SourceError(Exception):
    """A microphone that cannot be opened; str() is one line (with the devices that exist)."""


def _sounddevice():
    try:
        import sounddevice
    except OSError as exc:  # the PortAudio library itself is missing
        raise SourceError(f"audio input unavailable: {exc} (install libportaudio2)") from None
    return sounddevice


def input_devices(sd=None) -> list[dict]:
    """Input-capable devices: dicts with index, name, max_input_channels, default_samplerate."""
    sd = sd or _sounddevice()
    devices = []
    for index, info in enumerate(sd.query_devices()):
        if info["max_input_channels"] > 0:
            devices.append(
                {
                    "index": index,
                    "name": info["name"],
                    "max_input_channels": int(info["max_input_channels"]),
                    "default_samplerate": float(info["default_samplerate"]),
                }
            )
    return devices


def list_input_devices(sd=None) -> str:
    """The input devices, one per line, as ``python -m device --list-devices`` prints them."""
    try:
        devices = input_devices(sd)
    except SourceError as exc:
        return str(exc)
    if not devices:
        return "no audio input devices found"
    lines = ["index  channels  rate      name"]
    for d in devices:
        lines.append(
            f"{d['index']:>5}  {d['max_input_channels']:>8}  "
            f"{d['default_samplerate']:>7.0f}   {d['name']}"
        )
    return "\n".join(lines)


def find_input_device(spec: str | int | None, sd=None) -> dict:
    """The input device named by ``spec`` (index, or case-insensitive name substring; None =
    the system default). Raises :class:`SourceError` listing the devices there are."""
    sd = sd or _sounddevice()
    devices = input_devices(sd)
    names = "; ".join(f"{d['index']}: {d['name']}" for d in devices) or "none"
    if spec is None:
        try:
            default = sd.query_devices(kind="input")
        except Exception:  # PortAudio raises its own error type when there is no default
            raise SourceError(f"no default audio input device (input devices: {names})") from None
        for d in devices:
            if d["name"] == default["name"]:
                return d
        raise SourceError(f"no default audio input device (input devices: {names})")
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        for d in devices:
            if d["index"] == int(spec):
                return d
        raise SourceError(
            f"audio.device: no input device with index {spec} (input devices: {names})"
        )
    exact = [d for d in devices if d["name"].lower() == spec.lower()]
    matches = exact or [d for d in devices if spec.lower() in d["name"].lower()]
    if not matches:
        raise SourceError(
            f"audio.device: no input device named like {spec!r} (input devices: {names})"
        )
    return matches[0]


class MicrophoneSource:
    """A sounddevice input stream writing into a :class:`RingBuffer` (mono, capture rate).

    ``sd`` is the sounddevice module (a fake in unit tests). Counters are read by the worker.
    """

    def __init__(
        self,
        *,
        device: str | int | None,
        sample_rate: int | None,
        model_rate: int,
        channels: int,
        block_s: float,
        ring_s: float,
        sd=None,
    ) -> None:
        self._spec = device
        self._requested_rate = sample_rate
        self._model_rate = model_rate
        self._channels = channels
        self._block_s = block_s
        self._ring_s = ring_s
        self._sd = sd
        self._downmix = downmix_weights(channels)
        self._stream = None
        self._opened_before = False
        self.ring: RingBuffer | None = None
        self.name = str(device) if device is not None else "default"
        self.capture_rate = sample_rate or model_rate
        self.overflows = 0
        """Blocks PortAudio flagged with input overflow (audio lost before the callback)."""
        self.last_block_mono = 0.0
        """time.monotonic() when the newest block arrived."""

    def open(self, *, start_s: float = 0.0) -> None:
        """Find the device (again), open and start the stream. ``start_s``: seconds since the
        session began (after a reopen), where the ring's sample index continues."""
        sd = self._sd = self._sd or _sounddevice()
        if self._opened_before and hasattr(sd, "_terminate"):
            # PortAudio lists devices once, when it initialises: start it afresh so that a
            # microphone plugged back in (often under another index) is found again.
            try:
                sd._terminate()
                sd._initialize()
            except Exception as exc:
                raise SourceError(f"cannot restart PortAudio: {exc}") from None
        device = find_input_device(self._spec, sd)
        if device["max_input_channels"] < self._channels:
            raise SourceError(
                f"audio.channels: {device['name']} has {device['max_input_channels']} "
                f"input channel(s), {self._channels} requested"
            )
        rate = self._pick_rate(sd, device)
        if self.ring is None or rate != self.capture_rate:
            self.ring = RingBuffer(int(self._ring_s * rate))
        self.capture_rate = rate
        self.ring.reset(round(start_s * rate))
        self.name = device["name"]
        try:
            stream = sd.InputStream(
                device=device["index"],
                samplerate=rate,
                channels=self._channels,
                dtype="float32",
                blocksize=max(1, int(self._block_s * rate)),
                callback=self._callback,
            )
            stream.start()
        except Exception as exc:  # sounddevice.PortAudioError, or a fake's error
            raise SourceError(
                f"cannot open {device['name']}: {' '.join(str(exc).split())}"
            ) from None
        self._stream = stream
        self._opened_before = True
        self.last_block_mono = time.monotonic()
        log.info("capturing from %s at %d Hz, %d channel(s)", self.name, rate, self._channels)

    def _pick_rate(self, sd, device: dict) -> int:
        wanted = self._requested_rate or self._model_rate
        try:
            sd.check_input_settings(
                device=device["index"], samplerate=wanted, channels=self._channels, dtype="float32"
            )
            return int(wanted)
        except Exception as exc:
            if self._requested_rate:
                raise SourceError(
                    f"audio.sample_rate: {device['name']} cannot capture at {wanted} Hz "
                    f"({' '.join(str(exc).split())})"
                ) from None
        rate = int(device["default_samplerate"])
        log.info(
            "%s cannot capture at %d Hz: capturing at %d Hz and resampling",
            device["name"],
            wanted,
            rate,
        )
        return rate

    def _callback(self, indata: np.ndarray, frames: int, time_info, status) -> None:
        # Audio thread: copy and count, nothing else.
        if status.input_overflow:
            self.overflows += 1
        ring = self.ring
        if ring is None:  # cannot happen: open() sets the ring before it starts a stream
            return
        ring.write(indata[:, 0] if indata.shape[1] == 1 else indata @ self._downmix)
        self.last_block_mono = time.monotonic()

    @property
    def running(self) -> bool:
        """False once the stream stopped by itself (device error, unplugged)."""
        return self._stream is not None and bool(self._stream.active)

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return
        try:
            stream.abort()
            stream.close()
        except Exception as exc:  # a device that vanished may fail to close; it is gone anyway
            log.debug("closing %s: %s", self.name, exc)


STARTUP_GRACE_S = 5.0
"""Seconds a freshly opened stream may take to deliver its first block before it counts as dead."""


class Liveness:
    """Decides when a microphone needs reopening: no audio, digital silence, a stopped stream.

    ``silence_timeout_s`` 0 disables the silence rule. Digital silence is a run of samples that
    are all exactly equal (zeros, or a stuck DC value): a real microphone always has noise.
    """

    def __init__(self, *, liveness_timeout_s: float, silence_timeout_s: float) -> None:
        self.liveness_timeout_s = liveness_timeout_s
        self.silence_timeout_s = silence_timeout_s
        self.reset(time.monotonic())

    def reset(self, now: float) -> None:
        self._reset_at = now
        self._last_varying = now
        self._last_value: float | None = None

    def saw(self, samples: np.ndarray, now: float) -> None:
        """The worker read these samples at ``now`` (for the silence rule)."""
        if not len(samples):
            return
        first = float(samples[0])
        if (
            self._last_value is not None and first != self._last_value
        ) or samples.min() != samples.max():
            self._last_varying = now
        self._last_value = float(samples[-1])

    def problem(self, now: float, *, running: bool, last_audio: float) -> str | None:
        """'stopped', 'no audio' or 'silence' when the stream should be reopened, else None.

        last_audio: time.monotonic() of the newest block from the callback.
        """
        if not running:
            return "stopped"
        timeout = self.liveness_timeout_s
        if last_audio < self._reset_at:
            # No block yet since the (re)open: PulseAudio and USB devices can take a second or
            # two to deliver the first one; a short liveness timeout would reopen forever.
            timeout = max(timeout, STARTUP_GRACE_S)
        if now - max(last_audio, self._reset_at) > timeout:
            return "no audio"
        if self.silence_timeout_s and now - self._last_varying > self.silence_timeout_s:
            return "silence"
        return None


class Backoff:
    """Waits between reopen attempts: ``first``, doubling up to ``longest``; :meth:`reset` after
    the device worked for a while, so a device that fails right after every reopen is not
    hammered (no crash loop)."""

    def __init__(self, first: float, longest: float) -> None:
        self.first, self.longest = first, longest
        self._next = first

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self.longest, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self.first


class FileSource:
    """Mono float32 blocks of an audio file at ``sample_rate``; real-time paced when asked."""

    def __init__(
        self, path: str | Path, *, sample_rate: int, block_s: float, realtime: bool = False
    ) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self._rate = sample_rate
        self._block_s = block_s
        self._realtime = realtime

    def blocks(self) -> Iterator[np.ndarray]:
        """Raises device.audio.AudioError (one line naming the file) when it cannot be read."""
        start = time.monotonic()
        sent = 0
        for block in stream_audio(self.path, self._rate, block_s=self._block_s):
            if self._realtime:
                # Hand a block over when its last sample would have been recorded.
                delay = start + (sent + len(block)) / self._rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            sent += len(block)
            yield block
