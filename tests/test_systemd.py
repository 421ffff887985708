"""systemd/callwatch.service: verified clean, hardened (exposure <= 2.5), and consistent with
what the daemon expects (notify, credential name, config path)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from device.config import DEFAULT_CONFIG_PATHS, SCHEMA

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "callwatch.service"
EXEC_START = "/opt/callwatch/venv/bin/python -m device --config /etc/callwatch/config.yaml"
MAX_EXPOSURE = 2.5

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is absent (Debian package 'systemd', in scripts/setup's debs)",
)


def directives(text: str) -> dict[str, list[str]]:
    """Key -> every value assigned in the unit (systemd allows repeats)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def runnable_copy(folder: Path) -> Path:
    """The unit with its interpreter swapped for one that exists here (verify checks that
    ExecStart is executable; /opt/callwatch/venv is made by install.sh on the device)."""
    text = UNIT.read_text()
    assert f"ExecStart={EXEC_START}\n" in text
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / "callwatch.service"
    copy.write_text(text.replace("/opt/callwatch/venv/bin/python", sys.executable))
    return copy


def test_the_unit_matches_what_the_daemon_expects() -> None:
    unit = directives(UNIT.read_text())
    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]
    assert float(unit["WatchdogSec"][0]) > 0
    assert unit["Restart"] == ["on-failure"]
    assert "StartLimitIntervalSec" in unit and "StartLimitBurst" in unit
    # Not root, with a state directory for the outbox and clips (service.state_dir = null).
    assert unit["DynamicUser"] == ["yes"] and unit["StateDirectory"] == ["callwatch"]
    assert SCHEMA["service"]["state_dir"].default is None
    # The credential is the one the MQTT client reads by default.
    name = SCHEMA["mqtt"]["password_credential"].default
    assert unit["LoadCredential"] == [f"{name}:/etc/callwatch/{name}"]
    assert Path("/etc/callwatch/config.yaml") in DEFAULT_CONFIG_PATHS
    assert unit["SupplementaryGroups"] == ["audio"]
    assert unit["DevicePolicy"] == ["closed"] and unit["DeviceAllow"] == ["char-alsa rw"]
    # device/clock.py reads the NTP state with adjtimex(2): ProtectClock=yes would deny it.
    assert "ProtectClock" not in unit
    assert any("adjtimex" in value.split() for value in unit["SystemCallFilter"])
    environment = " ".join(unit["Environment"])
    assert "OPENBLAS_NUM_THREADS=1" in environment and "OMP_NUM_THREADS=1" in environment


def verify(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", *args], capture_output=True, text=True,
                          timeout=120, env=env)


@needs_analyze
def test_systemd_analyze_verify_is_silent(tmp_path: Path) -> None:
    result = verify(str(runnable_copy(tmp_path)))
    # Any output on stderr is a warning systemd would log at every boot.
    assert result.stderr == "" and result.returncode == 0, result.stderr


@needs_analyze
def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    # The check above can fail: a misspelt key is reported on stderr.
    unit = runnable_copy(tmp_path)
    unit.write_text(unit.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    assert "NoNewPrivilege" in verify(str(unit)).stderr


def exposure(*args: str, env: dict | None = None) -> float:
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", *args],
                            capture_output=True, text=True, timeout=120, env=env)
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


@needs_analyze
def test_security_exposure_is_low(tmp_path: Path) -> None:
    level = exposure(str(runnable_copy(tmp_path)))
    assert level <= MAX_EXPOSURE
    # The reference point: the same service with no hardening at all scores badly.
    bare = tmp_path / "bare" / "callwatch.service"
    bare.parent.mkdir()
    bare.write_text(f"[Service]\nType=notify\nExecStart={sys.executable} -m device\n")
    assert exposure(str(bare)) > 9
