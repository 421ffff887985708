"""Who this recorder is and where it keeps state: device id, state folder, event numbering."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from device.config import Config

log = logging.getLogger(__name__)

SEQ_FILE = "seq"
"""In the state folder: the last event sequence number given out."""


def device_id(cfg: Config) -> str:
    """service.device_id, else the host name."""
    return cfg.service.device_id or socket.gethostname()


def state_dir(cfg: Config) -> Path:
    """service.state_dir, else systemd's $STATE_DIRECTORY (its first entry), else
    ~/.local/state/callwatch."""
    if cfg.service.state_dir:
        return Path(cfg.service.state_dir).expanduser()
    env = os.environ.get("STATE_DIRECTORY")
    if env:
        return Path(env.split(":")[0])
    return Path.home() / ".local" / "state" / "callwatch"


class Sequence:
    """Event sequence numbers: 1, 2, 3, ... per device, continued across restarts when a
    state folder is given (the last number is written to ``<state_dir>/seq`` atomically,
    before the event it numbers leaves the process). Not thread-safe: one owner (the worker).

    Numbering never stops for storage: when the folder cannot be written (full, read-only) or
    read, numbers go on in memory, the degradation is reported to ``storage`` (a
    :class:`device.health.Degradations`), and every later number tries the file again. After a
    restart during such an episode numbers may repeat; ``event_id`` still tells events apart.
    """

    def __init__(self, folder: Path | None = None, *, storage=None) -> None:
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
                log.warning("%s cannot be read (%s); event numbering starts again at 1",
                            self._path, exc.strerror or exc)

    @property
    def last(self) -> int:
        return self._last

    def next(self) -> int:
        self._last += 1
        if self._path is not None:
            tmp = self._path.with_suffix(".tmp")
            try:
                tmp.write_text(f"{self._last}\n")
                tmp.replace(self._path)
            except OSError as exc:
                try:
                    tmp.unlink(missing_ok=True)
                except OSError:
                    pass
                if self._storage is not None:
                    self._storage.failed("sequence", exc, fallback="event numbers count in memory")
                else:
                    log.warning("%s cannot be written (%s)", self._path, exc.strerror or exc)
            else:
                if self._storage is not None:
                    self._storage.ok("sequence")
        return self._last
