"""Logging for the daemon: stderr in a journald-friendly format, repeated warnings rate-limited.

Under systemd, stderr goes to the journal, which stamps every line itself and reads a leading
``<N>`` as the syslog priority (``SyslogLevelPrefix=``, on by default), so ``journalctl -p
warning`` works. Elsewhere (a terminal, a test, a pipe) lines carry their own timestamp.
stderr rather than stdout, because ``--events-jsonl -`` owns stdout.

An SD card lives for months; a microphone that is unplugged for a night must not write the same
warning 50 times a second into the journal. :class:`RepeatFilter` lets one record through per
(logger, message template) per interval and reports how many it held back when it lets the
next one through.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TextIO

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}

# sd-daemon(3) priority prefixes: <3> error, <4> warning, <6> info, <7> debug.
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
             logging.DEBUG: 7}


class RepeatFilter(logging.Filter):
    """Passes a WARNING-or-worse record at most once per ``interval_s`` for each
    (logger name, message template); lower levels always pass.

    The template is ``record.msg`` before %-formatting, so "device hw:1 gone" and "device hw:2
    gone" logged as ``log.warning("device %s gone", name)`` count as repeats of one message.
    When a record passes after repeats were held back, its message ends with
    ``(N similar suppressed over S s)``. Thread-safe enough for logging: the handler's lock
    serialises calls to its filters.
    """

    def __init__(self, interval_s: float, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 1000) -> None:
        """``interval_s``: seconds between two records of one template (0 disables the filter).
        ``clock``: monotonic seconds (injectable for tests). ``max_keys``: templates remembered,
        oldest forgotten first (bounds memory if messages are built with f-strings)."""
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock
        self._max_keys = max_keys
        self._last: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.interval_s <= 0 or record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        now = self._clock()
        last = self._last.get(key)
        if last is not None:
            passed_at, suppressed = last
            if now - passed_at < self.interval_s:
                self._last[key] = (passed_at, suppressed + 1)
                return False
            if suppressed:
                # The note is added after %-formatting so a '%' in it cannot break the template.
                record.msg = record.getMessage() + (
                    f" ({suppressed} similar suppressed over {now - passed_at:.0f} s)")
                record.args = None
        self._last[key] = (now, 0)
        self._last.move_to_end(key)
        while len(self._last) > self._max_keys:
            self._last.popitem(last=False)
        return True


class JournalFormatter(logging.Formatter):
    """``<priority>LEVEL logger: message``, without a timestamp (journald adds one)."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        # Every line of a traceback is a journal entry of its own: prefix each one.
        return "\n".join(prefix + line for line in text.splitlines())


def under_journal(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """Whether ``stream`` is connected to journald: ``$JOURNAL_STREAM`` is ``device:inode`` of
    the journal's socket, compared with the stream's (as systemd.exec(5) recommends, so a
    child whose stderr was redirected to a file does not lose its timestamps)."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM")
    if not value:
        return False
    try:
        st = os.fstat(stream.fileno())
        dev, ino = (int(part) for part in value.split(":"))
    except (OSError, ValueError, AttributeError):
        # No real file descriptor (e.g. a captured stream): trust the variable.
        return True
    return (st.st_dev, st.st_ino) == (dev, ino)


class _DaemonHandler(logging.StreamHandler):
    """The handler :func:`setup_logging` installs (its own type, so a second call replaces it)."""

    def close(self) -> None:
        stream = self.stream
        super().close()
        if stream not in (sys.stderr, sys.__stderr__, sys.stdout) and hasattr(stream, "fileno"):
            try:
                if stream.fileno() > 2:
                    stream.close()  # the duplicate of fd 2 made by _own_stderr
            except (OSError, ValueError):
                pass


def _own_stderr() -> TextIO:
    """A stream on a duplicate of file descriptor 2, when sys.stderr is fd 2 (else sys.stderr).

    sounddevice points fd 2 at /dev/null while PortAudio initialises (to hide ALSA's chatter),
    which happens at import and at every microphone reopen: whatever another thread logs to
    fd 2 meanwhile (an MQTT warning, a traceback) would vanish. The duplicate still points at
    the real stderr (the journal), whatever happens to fd 2 afterwards."""
    try:
        if sys.stderr.fileno() != 2:
            return sys.stderr
        return os.fdopen(os.dup(2), "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                         errors="backslashreplace")
    except (AttributeError, OSError, ValueError):  # no real file descriptor (a test capture)
        return sys.stderr


def setup_logging(level: str, warning_interval_s: float, *, stream: TextIO | None = None) -> None:
    """Configure the root logger: one stderr handler (replacing earlier ones set up here),
    ``level`` one of debug/info/warning/error, repeated warnings limited to one per
    ``warning_interval_s`` seconds (0 = no limit). Without ``stream`` the handler writes to
    its own duplicate of stderr (see :func:`_own_stderr`)."""
    stream = _own_stderr() if stream is None else stream
    handler = _DaemonHandler(stream)
    if under_journal(stream):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.addFilter(RepeatFilter(warning_interval_s))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _DaemonHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(LEVELS.get(level.lower(), logging.INFO))
