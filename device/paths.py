"""Who this recorder is and where it keeps state: device id and state folder.

Contract: pure functions of the config (and ``$STATE_DIRECTORY``, ``$HOME``); thread-safe.
Event numbering, which keeps its counter in the state folder, is device.sequence.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from device.config import Config


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
