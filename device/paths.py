"""Who this recorder is and where it keeps state: device id, state folder, event numbering."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

log = logging.getLogger(__name__)

SEQ_FILE = "seq"
"""In the state folder: the last event sequence number given out."""


def device_id(cfg) -> str:
    """service.device_id, else the host name."""
    return cfg.service.device_id or socket.gethostname()


def state_dir(cfg) -> Path:
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
    """

    def __init__(self, folder: Path | None = None) -> None:
        self._path = Path(folder) / SEQ_FILE if folder is not None else None
        self._last = 0
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._last = int(self._path.read_text().strip() or 0)
            except FileNotFoundError:
                pass
            except ValueError:
                # A damaged file must not stop detection; event_id still tells events apart.
                log.warning("%s is damaged; event numbering starts again at 1", self._path)

    @property
    def last(self) -> int:
        return self._last

    def next(self) -> int:
        self._last += 1
        if self._path is not None:
            tmp = self._path.with_suffix(".tmp")
            tmp.write_text(f"{self._last}\n")
            tmp.replace(self._path)
        return self._last
