"""Stage: event numbering. The ``seq`` of every event: 1, 2, 3, ... per device.

Contract: :meth:`Sequence.next` returns the next integer, and (with a state folder) has written
it to ``<state_dir>/seq`` atomically before it returns, so a number never goes out twice from
one folder while storage works. Not thread-safe: one owner, the worker thread.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from device.fileio import write_atomic

if TYPE_CHECKING:
    from device.health import Degradations

log = logging.getLogger(__name__)

SEQ_FILE = "seq"
"""In the state folder: the last event sequence number given out."""


class Sequence:
    """Event sequence numbers: 1, 2, 3, ... per device, continued across restarts when a
    state folder is given (the last number is written to ``<state_dir>/seq`` atomically,
    before the event it numbers leaves the process). Not thread-safe: one owner (the worker).

    Numbering never stops for storage: when the folder cannot be written (full, read-only) or
    read, numbers go on in memory, the degradation is reported to ``storage`` (a
    :class:`device.health.Degradations`), and every later number tries the file again. After a
    restart during such an episode numbers may repeat; ``event_id`` still tells events apart.
    """

    def __init__(self, folder: Path | None = None, *, storage: Degradations | None = None) -> None:
        self._path = Path(folder) / SEQ_FILE if folder is not None else None
        self._storage = storage
        self._last = 0
        if self._path is not None:
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                self._last = int(self._path.read_text().strip() or 0)
            except FileNotFoundError:
                pass
            except ValueError:
                # A damaged file must not stop detection; event_id still tells events apart.
                log.warning("%s is damaged; event numbering starts again at 1", self._path)
            except OSError as exc:
                log.warning(
                    "%s cannot be read (%s); event numbering starts again at 1",
                    self._path,
                    exc.strerror or exc,
                )

    @property
    def last(self) -> int:
        """The last number given out (0 before the first)."""
        return self._last

    def next(self) -> int:
        """The next number, written to the state folder first when there is one."""
        self._last += 1
        if self._path is not None:
            try:
                write_atomic(self._path, f"{self._last}\n")
            except OSError as exc:
                if self._storage is not None:
                    self._storage.failed("sequence", exc, fallback="event numbers count in memory")
                else:
                    log.warning("%s cannot be written (%s)", self._path, exc.strerror or exc)
            else:
                if self._storage is not None:
                    self._storage.ok("sequence")
        return self._last
