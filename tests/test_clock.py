"""Event time: ISO 8601 UTC stamps and the NTP-synchronised flag."""

from __future__ import annotations

import ctypes
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import device.clock as clock
from device.clock import clock_synced, read_kernel_clock, utc_iso


@pytest.mark.parametrize(
    ("epoch_s", "text"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1763852400.5, "2025-11-22T23:00:00.500Z"),
        (1763852400.9999, "2025-11-22T23:00:00.999Z"),  # truncated, never a later instant
        (951782400.0, "2000-02-29T00:00:00.000Z"),
        (-0.5, "1969-12-31T23:59:59.500Z"),
    ],
)
def test_utc_iso_golden(epoch_s: float, text: str) -> None:
    assert utc_iso(epoch_s) == text


def test_utc_iso_round_trips_within_a_millisecond() -> None:
    rng = np.random.default_rng(7)
    for epoch_s in rng.uniform(0, 4e9, 500):
        text = utc_iso(float(epoch_s))
        assert text.endswith("Z") and len(text) == 24
        back = dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        assert 0 <= epoch_s - back < 0.001 + 1e-6


@pytest.fixture
def fresh_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget the cached libc function and any earlier failure."""
    monkeypatch.setattr(clock, "_adjtimex", None)
    monkeypatch.setattr(clock, "_adjtimex_broken", False)


@pytest.mark.skipif(sys.platform != "linux", reason="adjtimex is Linux")
def test_kernel_reading_matches_the_wall_clock(fresh_clock: None) -> None:
    # If the struct layout were wrong, the time field (after status) would be garbage.
    before = time.time()
    reading = read_kernel_clock()
    after = time.time()
    assert reading is not None
    assert before - 0.01 <= reading.time_s <= after + 0.01
    assert reading.synced == (reading.state != clock.TIME_ERROR
                              and not reading.status & clock.STA_UNSYNC)
    assert clock_synced() is reading.synced


def test_seccomp_denial_falls_back_to_the_timesyncd_flag(
        fresh_clock: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = []

    def denied(_timex) -> int:  # what ProtectClock=yes does: EPERM
        calls.append(1)
        ctypes.set_errno(1)
        return -1

    monkeypatch.setattr(clock, "_adjtimex", denied)
    flag = tmp_path / "synchronized"
    monkeypatch.setattr(clock, "TIMESYNCD_FLAG", flag)
    assert read_kernel_clock() is None
    assert clock_synced() is False
    flag.touch()
    assert clock_synced() is True
    # The denial is remembered: no syscall per event once it is known to fail.
    assert len(calls) == 1


def test_status_bits_decide(fresh_clock: None, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(state: int, status: int):
        def call(timex_ref) -> int:
            timex_ref._obj.status = status
            return state
        return call

    for state, status, synced in [(0, 0, True), (0, clock.STA_UNSYNC, False),
                                  (clock.TIME_ERROR, 0, False), (1, 0x2000, True)]:
        monkeypatch.setattr(clock, "_adjtimex", fake(state, status))
        assert clock_synced() is synced, (state, status)
