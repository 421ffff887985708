"""Keep native libraries' log lines off the console, keep everything else.

TensorFlow's C++ core logs through absl straight to file descriptor 2, whatever Python's
logging says: start-up lines ("WARNING: All log messages before absl::InitializeLog() ...",
"I0000 ... oneDNN custom operations are on", "This TensorFlow binary is optimized ..."), and
during training and conversion pages of "E0000 ... NodeDef mentions attribute ..." that read
like failures but are not. Which of them appear depends on the CPU and on the build, so a tool
that wants "one line on stderr" for a user's mistake cannot rely on ``TF_CPP_MIN_LOG_LEVEL``
alone.

:func:`filtered_stderr` points fd 2 at a pipe for the duration of a ``with`` block; a thread
copies every line to the real stderr except lines in the glog/absl format (``[IWE]MMDD hh:mm:ss``
…) and the few known continuation lines. Fatal lines (``F…``) always pass. Python's own output
to ``sys.stderr`` (our warnings, tracebacks, argparse errors) passes unchanged, in order.

Used by ``python -m train`` and ``python -m convert`` (the only tools that import TensorFlow);
the device never does.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator

NATIVE_LOG_LINE = re.compile(
    rb"^(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\]"  # absl / glog: I0000 00:00:17.1  42 x.cc:12]
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions: .* rebuild TensorFlow"
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] \S+:\d+\])"  # TensorFlow's older C++ format
)
"""A line of native log output to drop (bytes, matched at the line start)."""


def is_native_log_line(line: bytes) -> bool:
    """True for a native library's informational, warning or error log line (never fatal)."""
    return NATIVE_LOG_LINE.match(line) is not None


def _pump(read_fd: int, write_fd: int) -> None:
    """Copy lines from read_fd to write_fd, dropping native log lines, until end of file."""
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        pending = b""
        while True:
            chunk = pipe.read(65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if not is_native_log_line(line))
            if kept:
                os.write(write_fd, kept)
        if pending and not is_native_log_line(pending):
            os.write(write_fd, pending)


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Filter native log lines out of fd 2 inside the block (see the module docstring).

    Not re-entrant; meant for a command line's ``main``. When fd 2 cannot be redirected (no
    such descriptor), the block runs unfiltered.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    pump = threading.Thread(target=_pump, args=(read_fd, saved), name="stderr-filter", daemon=True)
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the pump reads to its end
        # A child process still holding the pipe would keep it open: do not wait on it forever.
        pump.join(timeout=5.0)
        if not pump.is_alive():
            os.close(saved)
