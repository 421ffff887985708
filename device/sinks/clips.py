"""Event clips: a 16-bit WAV of each event's audio, within a disk budget.

A :class:`device.events.Sink` fed by the sink thread (device/sinks/queue.py) only.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import soundfile
from numpy.typing import NDArray

from device.events import Event, SinkBase
from device.names import safe_name as _safe_name

log = logging.getLogger("device.sinks")


class ClipSink(SinkBase):
    """Writes a 16-bit WAV per event and keeps the clip folder within its budget.

    Budget: clips older than ``max_age_days`` are deleted, then the oldest ones until the
    folder holds at most ``max_mb``. Below ``min_free_mb`` of free disk no clip is written
    (counted in ``skipped``); events still flow to the other sinks.
    """

    storage_part = "clips"

    def __init__(
        self, folder: str | Path, *, max_mb: float, max_age_days: float, min_free_mb: float
    ) -> None:
        self.folder = Path(folder)
        self._max_bytes = max_mb * 2**20
        self._max_age_s = max_age_days * 86400.0
        self._min_free_bytes = min_free_mb * 2**20
        self.written = 0
        self.skipped = 0
        self.deleted = 0
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.enforce_budget()
        except OSError as exc:  # read-only at start: clips wait, detection does not
            log.warning(
                "clip folder %s cannot be prepared now (%s); trying again at each clip",
                self.folder,
                exc.strerror or exc,
            )

    def on_clip(self, event: Event, samples: NDArray[np.float32], sample_rate: int) -> None:
        """Raises OSError when the clip cannot be written (free disk below
        service.min_free_mb, full, read-only): counted in ``skipped``."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(self.folder).free
            if free < self._min_free_bytes:
                raise OSError(errno.ENOSPC, "free disk below service.min_free_mb")
            # A replayed recording of unknown time has no start_utc: named by its id only.
            stamp = re.sub(r"[-:]", "", event.start_utc or "time-unknown").replace(".", "_")
            name = f"{stamp}_{_safe_name(event.label)}_{event.event_id[:8]}.wav"
            tmp = self.folder / (name + ".part")
            try:
                soundfile.write(
                    tmp, np.clip(samples, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV"
                )
                tmp.replace(self.folder / name)
            except (OSError, RuntimeError) as exc:  # soundfile raises LibsndfileError
                try:
                    tmp.unlink(missing_ok=True)
                except OSError:
                    pass
                if isinstance(exc, OSError):
                    raise
                raise OSError(errno.EIO, f"cannot write {tmp.name}: {exc}") from None
        except OSError:
            self.skipped += 1
            raise
        self.written += 1
        self.enforce_budget()

    def enforce_budget(self, *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        clips = []
        # A clip cut short (a kill or power cut while writing) is never finished: remove it.
        for part in self.folder.glob("*.wav.part"):
            try:
                part.unlink()
                self.deleted += 1
            except FileNotFoundError:
                pass
        for path in self.folder.glob("*.wav"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            clips.append((st.st_mtime, st.st_size, path))
        clips.sort()
        total = sum(size for _, size, _ in clips)
        for mtime, size, path in clips:
            if now - mtime <= self._max_age_s and total <= self._max_bytes:
                break
            try:
                os.unlink(path)
                self.deleted += 1
            except FileNotFoundError:
                pass
            total -= size
