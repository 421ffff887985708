"""Who the recorder is and where it keeps state: service.device_id / service.state_dir,
systemd's $STATE_DIRECTORY, and the defaults."""

from __future__ import annotations

import socket
from pathlib import Path

from device.config import validate
from device.paths import device_id, state_dir


def test_device_id_and_state_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = validate({})
    assert device_id(cfg) == socket.gethostname()
    assert state_dir(cfg) == tmp_path / ".local" / "state" / "callwatch"
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/callwatch:/var/lib/other")
    assert state_dir(cfg) == Path("/var/lib/callwatch")
    cfg = validate({"service": {"device_id": "pi-7", "state_dir": str(tmp_path / "s")}})
    assert device_id(cfg) == "pi-7" and state_dir(cfg) == tmp_path / "s"


def test_a_state_dir_in_the_config_expands_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/callwatch")
    cfg = validate({"service": {"state_dir": "~/recorder-state"}})
    assert state_dir(cfg) == tmp_path / "recorder-state"  # the config wins over systemd's
