"""Progress of a replay batch: files, hours of audio, speed and the time left.

On a terminal one line is rewritten in place (``\\r``); otherwise (a log file, the journal,
a pipe) an INFO line is logged at most every ``interval_s`` seconds and when the batch ends.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """Call :meth:`update` as audio is analysed and :meth:`file_done` per file; not thread-safe."""

    def __init__(
        self, *, files: int, audio_s: float, interval_s: float, stream=None, live: bool | None = None
    ) -> None:
        self.files, self.total_s = files, audio_s
        self.interval_s = interval_s
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.done_files = 0
        self.done_s = 0.0  # audio of finished files
        self.partial_s = 0.0  # audio of the file(s) under way
        self.started = time.monotonic()
        self._last = -float("inf")

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        audio = self.done_s + self.partial_s
        speed = audio / elapsed
        text = (
            f"{self.done_files}/{self.files} files, {audio / 3600:.2f}/{self.total_s / 3600:.2f} h "
            f"of audio, {speed:.0f}x real time"
        )
        if speed > 0 and self.total_s > audio:
            text += f", about {_duration((self.total_s - audio) / speed)} left"
        return text

    def update(self, partial_s: float) -> None:
        self.partial_s = partial_s
        self._show(final=False)

    def file_done(self, audio_s: float) -> None:
        self.done_files += 1
        self.done_s += audio_s
        self.partial_s = 0.0
        self._show(final=False)

    def finish(self) -> None:
        self._show(final=True)

    def _show(self, *, final: bool) -> None:
        now = time.monotonic()
        if self.live:
            if final or now - self._last >= 0.2:
                self.stream.write("\r\x1b[Kreplay: " + self.line() + ("\n" if final else ""))
                self.stream.flush()
                self._last = now
        elif final or now - self._last >= self.interval_s:
            log.info("progress: %s", self.line())
            self._last = now
