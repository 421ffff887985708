"""Benchmarks: ``python -m bench [--only NAME ...] [--write]`` fills BENCHMARKS.md.

Every module in this folder whose name does not start with ``_`` is a benchmark: it has
``run() -> str`` returning one markdown section that starts with ``## <Title>`` and says how to
reproduce it (:func:`preamble`). ``--write`` puts each section between its markers
``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in BENCHMARKS.md, leaving the others alone.

Standard library only here: ``__main__`` limits BLAS/OpenMP to one thread before anything
imports NumPy, and importing this package must not import NumPy first.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import statistics
import time
from collections.abc import Callable


def command(name: str) -> str:
    """The command that regenerates benchmark ``name``'s section."""
    return f".venv/bin/python -m bench --only {name} --write"


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (platform.processor() where that is missing)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model")):  # x86 / Raspberry Pi
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line: CPU model, cores, OS, Python and NumPy versions."""
    import numpy  # imported here, after __main__ has set the thread limits

    return (
        f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, NumPy {numpy.__version__}"
    )


def preamble(name: str) -> str:
    """The lines under a section's title: command, machine, date and load."""
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    # Other processes sharing the cores (and their caches) inflate CPU times a little: say so.
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"Command: `{command(name)}`  \n"
        f"Machine: {machine()}, one thread (BLAS/OpenMP limited to 1)  \n"
        f"Date: {today}, load average {load:.1f} when it started\n"
    )


def best_cpu_seconds(work: Callable[[], object], *, repeat: int = 3) -> float:
    """Least CPU time (``time.process_time``, seconds) of ``repeat`` runs of ``work()``.

    CPU time, not wall time: it does not count waiting while other processes use the cores,
    and the least of several runs is the one least disturbed by them.
    """
    times = []
    for _ in range(repeat):
        start = time.process_time()
        work()
        times.append(time.process_time() - start)
    return min(times)


def replace_section(text: str, name: str, section: str) -> str:
    """``text`` with benchmark ``name``'s section replaced (or appended when new)."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{section.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    return text.rstrip("\n") + "\n\n" + block + "\n"


def seed_stats(values: list[float | None]) -> str:
    """``mean ± sd`` of a figure over the seeds that have it ("-" when none; one seed says so)."""
    done = [v for v in values if v is not None]
    if len(done) > 1:
        return f"{statistics.mean(done):.3f} ± {statistics.stdev(done):.3f}"
    return f"{done[0]:.3f} (1 seed)" if done else "-"


def seed_delta(values: list[float | None], base: list[float | None]) -> str:
    """The mean over the seeds both have of ``values`` minus ``base``, and the per-seed differences."""
    pairs = [(v, b) for v, b in zip(values, base) if v is not None and b is not None]
    if not pairs:
        return "-"
    each = ", ".join(f"{v - b:+.3f}" for v, b in pairs)
    return f"{statistics.mean(v - b for v, b in pairs):+.3f} ({each})"
