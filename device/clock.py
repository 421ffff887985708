"""Wall-clock time for events: ISO 8601 UTC stamps, and whether the clock can be trusted.

A Raspberry Pi has no battery-backed real-time clock: until it reaches a time server it boots
with the time it last saved (fake-hwclock) or 1970. Events made before that are stamped with a
wrong ``start_utc``; :func:`clock_synced` lets each event say so (``clock_synced: false``), and
``mono_s`` still orders them.

How synchronisation is read, in order:

1. ``adjtimex(2)`` with ``modes = 0`` (read-only, no privilege needed), through ctypes. The
   kernel clears ``STA_UNSYNC`` and stops returning ``TIME_ERROR`` once an NTP client
   (systemd-timesyncd, chrony, ntpd) disciplines the clock. This is what ``timedatectl``'s
   "System clock synchronized" shows, and it needs neither systemd nor D-Bus.
2. If the call is unavailable (not Linux, no libc, or blocked by a seccomp filter such as
   systemd's ``ProtectClock=yes``, which denies the whole ``@clock`` group with EPERM), the flag
   file ``/run/systemd/timesync/synchronized`` that systemd-timesyncd (>= 239) creates on its
   first synchronisation is used.
3. Otherwise the clock is reported as not synchronised: a false "unsynced" is harmless, a false
   "synced" would hide wrong timestamps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import errno
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TIME_ERROR = 5
"""adjtimex return value: the clock is not synchronised."""
STA_UNSYNC = 0x0040
"""timex.status bit: the clock is not synchronised."""
STA_NANO = 0x2000
"""timex.status bit: the sub-second field of timex.time counts nanoseconds, not microseconds."""
TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")


class _Timex(ctypes.Structure):
    """``struct timex`` (linux/timex.h) up to ``tai``; only ``modes`` and ``status`` are used.

    ``long`` matches the kernel's layout on 64-bit and on legacy 32-bit ``adjtimex``; the
    trailing padding (eleven ints in the kernel) is over-allocated so the kernel never writes
    past the buffer.
    """

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_padding", ctypes.c_int * 32),
    ]


_adjtimex = None
_adjtimex_broken = False


def _load_adjtimex():
    global _adjtimex, _adjtimex_broken
    if _adjtimex is None and not _adjtimex_broken:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            func = libc.adjtimex
            func.argtypes = [ctypes.POINTER(_Timex)]
            func.restype = ctypes.c_int
            _adjtimex = func
        except (OSError, AttributeError) as exc:
            _adjtimex_broken = True
            log.info("adjtimex is not available (%s); using the timesyncd flag file", exc)
    return None if _adjtimex_broken else _adjtimex


@dataclass(frozen=True)
class KernelClock:
    """One read-only ``adjtimex`` reading."""

    state: int
    """Return value: TIME_OK (0) ... TIME_ERROR (5, not synchronised)."""
    status: int
    """``timex.status`` bits (STA_UNSYNC = 0x40, ...)."""
    time_s: float
    """The kernel's wall clock at the reading, seconds since 1970 (UTC)."""

    @property
    def synced(self) -> bool:
        return self.state != TIME_ERROR and not (self.status & STA_UNSYNC)


def read_kernel_clock() -> KernelClock | None:
    """``adjtimex`` with ``modes = 0``; None when it cannot be called (see the module doc)."""
    global _adjtimex_broken
    func = _load_adjtimex()
    if func is None:
        return None
    timex = _Timex()  # modes = 0: read only
    state = func(ctypes.byref(timex))
    if state == -1:
        err = ctypes.get_errno()
        _adjtimex_broken = True
        log.info("adjtimex failed (%s); using the timesyncd flag file",
                 errno.errorcode.get(err, err))
        return None
    # With STA_NANO the "usec" field holds nanoseconds.
    fraction = timex.time_usec / (1e9 if timex.status & STA_NANO else 1e6)
    return KernelClock(state=state, status=timex.status, time_s=timex.time_sec + fraction)


def clock_synced() -> bool:
    """Whether the system clock is synchronised to a time source now (cheap: one syscall)."""
    reading = read_kernel_clock()
    if reading is not None:
        return reading.synced
    return os.path.exists(TIMESYNCD_FLAG)


def utc_iso(epoch_s: float) -> str:
    """``epoch_s`` (seconds since 1970, UTC) as ISO 8601 with milliseconds and ``Z``,
    e.g. ``2026-11-22T23:00:00.500Z``. Milliseconds are truncated, not rounded, so a stamp
    never reads later than the instant it names."""
    millis = int(epoch_s * 1000 // 1)
    stamp = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=millis)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
