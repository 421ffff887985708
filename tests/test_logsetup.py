"""Logging: journald-friendly format on stderr, repeated warnings rate-limited."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.logsetup import RepeatFilter, setup_logging

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} ")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(name: str, level: int, msg: str, *args) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args or None, None)


def test_repeats_of_one_template_pass_once_per_interval() -> None:
    fake = FakeClock()
    limit = RepeatFilter(60.0, clock=fake)
    assert limit.filter(record("device.sources", logging.WARNING, "device %s gone", "hw:1"))
    for i in range(4):
        fake.now += 10
        # Other arguments, same template: a repeat.
        assert not limit.filter(record("device.sources", logging.WARNING, "device %s gone", i))
    fake.now += 25  # 65 s after the first one
    again = record("device.sources", logging.WARNING, "device %s gone", "hw:2")
    assert limit.filter(again)
    assert again.getMessage() == "device hw:2 gone (4 similar suppressed over 65 s)"
    fake.now += 61
    quiet = record("device.sources", logging.WARNING, "device %s gone", "hw:3")
    assert limit.filter(quiet)
    assert quiet.getMessage() == "device hw:3 gone"  # nothing was held back this time


def test_other_templates_loggers_and_levels_are_independent() -> None:
    limit = RepeatFilter(60.0, clock=FakeClock())
    assert limit.filter(record("a", logging.WARNING, "disk full"))
    assert limit.filter(record("b", logging.WARNING, "disk full"))
    assert limit.filter(record("a", logging.WARNING, "broker away"))
    assert not limit.filter(record("a", logging.ERROR, "disk full"))  # same logger + template
    assert limit.filter(record("a", logging.ERROR, "clip failed"))
    assert not limit.filter(record("a", logging.ERROR, "clip failed"))
    for _ in range(3):
        assert limit.filter(record("a", logging.INFO, "event tone"))
        assert limit.filter(record("a", logging.DEBUG, "window"))


def test_interval_zero_lets_everything_through() -> None:
    limit = RepeatFilter(0.0, clock=FakeClock())
    assert all(limit.filter(record("a", logging.WARNING, "x")) for _ in range(5))


def test_memory_is_bounded() -> None:
    limit = RepeatFilter(60.0, clock=FakeClock(), max_keys=10)
    for i in range(100):
        assert limit.filter(record("a", logging.WARNING, f"unique {i}"))
    assert len(limit._last) == 10


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_timestamps_outside_the_journal(root_logger: logging.Logger,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    stream = io.StringIO()
    setup_logging("info", 60.0, stream=stream)
    setup_logging("info", 60.0, stream=stream)  # a second call replaces, never doubles
    log = logging.getLogger("device.test")
    log.debug("not shown at info")
    log.info("model %s loaded", "tone")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert STAMP.match(lines[0])
    assert lines[0].endswith("INFO device.test: model tone loaded")


def journal_run(tmp_path: Path, code: str, *, journal: bool) -> list[str]:
    """Run ``code`` after setup_logging in a child whose stderr is a file; with ``journal``,
    JOURNAL_STREAM names that file, as systemd names the journal's socket."""
    err = tmp_path / "stderr.txt"
    with open(err, "w") as stderr:
        st = os.fstat(stderr.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}" if journal else "1:2"}
        prog = ("import logging; from device.logsetup import setup_logging; "
                "setup_logging('debug', 3600); log = logging.getLogger('device.sources'); " + code)
        subprocess.run([sys.executable, "-c", prog], stderr=stderr, env=env, check=True,
                       timeout=60)
    return err.read_text().splitlines()


def test_journal_format_and_rate_limit_in_a_real_process(tmp_path: Path) -> None:
    lines = journal_run(tmp_path, "[log.warning('no audio from %s', 'hw:1') for _ in range(500)]; "
                        "log.info('reopened'); log.debug('frames 10'); log.error('disk full')",
                        journal=True)
    assert lines == [
        "<4>WARNING device.sources: no audio from hw:1",
        "<6>INFO device.sources: reopened",
        "<7>DEBUG device.sources: frames 10",
        "<3>ERROR device.sources: disk full",
    ]


def test_journal_stream_of_another_file_keeps_timestamps(tmp_path: Path) -> None:
    # stderr redirected away from the journal: JOURNAL_STREAM no longer describes it.
    lines = journal_run(tmp_path, "log.warning('x')", journal=False)
    assert len(lines) == 1 and STAMP.match(lines[0])
    assert lines[0].endswith("WARNING device.sources: x")


def test_traceback_lines_each_carry_the_priority(tmp_path: Path) -> None:
    code = "\ntry:\n  1/0\nexcept ZeroDivisionError:\n  log.exception('boom')"
    lines = journal_run(tmp_path, code, journal=True)
    assert lines[0] == "<3>ERROR device.sources: boom"
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines)


def test_warnings_survive_portaudio_pointing_fd_2_at_dev_null(tmp_path: Path) -> None:
    """sounddevice sends fd 2 to /dev/null while PortAudio initialises (at import and at
    every microphone reopen); a warning logged meanwhile (by the MQTT thread, say) must still
    reach the journal."""
    code = (
        "import os\n"
        "saved = os.dup(2); devnull = os.open(os.devnull, os.O_WRONLY); os.dup2(devnull, 2)\n"
        "log.warning('mqtt: connection refused')\n"
        "os.dup2(saved, 2)\n"
        "log.warning('after')"
    )
    lines = journal_run(tmp_path, code, journal=True)
    assert lines == ["<4>WARNING device.sources: mqtt: connection refused",
                     "<4>WARNING device.sources: after"]
