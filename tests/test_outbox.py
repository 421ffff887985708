"""The durable outbox: what goes in survives a reopen and a SIGKILL, in order, within bounds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from device.mqtt.outbox import Outbox

REPO = Path(__file__).resolve().parents[1]


def fill(outbox: Outbox, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        outbox.put("callwatch/dev1/events", f'{{"seq": {i}}}')


def seqs(outbox: Outbox) -> list[int]:
    return [int(row.payload.split(": ")[1].rstrip("}")) for row in outbox.peek(limit=10**6)]


def test_rows_survive_reopen_in_order(tmp_path):
    path = tmp_path / "state" / "outbox.sqlite"
    outbox = Outbox(path, max_rows=1000, max_bytes=10**6)
    fill(outbox, 20)
    rows = outbox.peek(limit=5)
    assert outbox.remove([rows[0].id, rows[3].id]) == 2
    outbox.close()

    again = Outbox(path, max_rows=1000, max_bytes=10**6)
    assert again.depth == 18
    assert seqs(again) == [1, 2, *range(4, 20)]
    assert [r.topic for r in again.peek(limit=2)] == ["callwatch/dev1/events"] * 2
    assert again.size_bytes == sum(len(r.topic) + len(r.payload) for r in again.peek(limit=100))
    # peek(after=) continues where the last handed row ended
    first = again.peek(limit=3)
    assert seqs_of(again.peek(after=first[-1].id, limit=2)) == [5, 6]
    assert again.remove([first[0].id]) == 1 and again.remove([first[0].id]) == 0


def seqs_of(rows) -> list[int]:
    return [int(row.payload.split(": ")[1].rstrip("}")) for row in rows]


def test_row_ids_are_never_reused(tmp_path):
    """Emptying the table must not restart the ids, or a publisher's 'handed up to' mark
    would skip the next events."""
    outbox = Outbox(tmp_path / "o.sqlite", max_rows=100, max_bytes=10**6)
    fill(outbox, 3)
    last = outbox.peek(limit=10)[-1].id
    for row in outbox.peek(limit=10):
        outbox.remove([row.id])
    outbox.close()
    outbox = Outbox(tmp_path / "o.sqlite", max_rows=100, max_bytes=10**6)
    fill(outbox, 1)
    assert outbox.peek(limit=1)[0].id > last


def test_bounded_by_rows_drops_oldest_and_counts_persistently(tmp_path):
    path = tmp_path / "o.sqlite"
    outbox = Outbox(path, max_rows=10, max_bytes=10**6)
    dropped = [outbox.put("t", f'{{"seq": {i}}}') for i in range(25)]
    assert sum(dropped) == 15 and max(dropped) == 1
    assert outbox.depth == 10 and seqs(outbox) == list(range(15, 25))
    assert outbox.dropped == 15
    outbox.close()
    assert Outbox(path, max_rows=10, max_bytes=10**6).dropped == 15


def test_bounded_by_bytes(tmp_path):
    row_bytes = len("callwatch/dev1/events") + len('{"seq": 10}')
    outbox = Outbox(tmp_path / "o.sqlite", max_rows=10**6, max_bytes=5 * row_bytes)
    fill(outbox, 10, start=10)  # every row has the same size
    assert outbox.depth == 5 and seqs(outbox) == list(range(15, 20))
    assert outbox.size_bytes <= outbox.max_bytes and outbox.dropped == 5


def test_rows_in_flight_are_not_dropped(tmp_path):
    """Rows already handed to the connection may still arrive: drop the next oldest instead."""
    outbox = Outbox(tmp_path / "o.sqlite", max_rows=4, max_bytes=10**6)
    fill(outbox, 4)
    keep = {row.id for row in outbox.peek(limit=2)}
    assert outbox.put("t", '{"seq": 4}', keep=keep) == 1
    assert seqs(outbox) == [0, 1, 3, 4]


def test_corrupt_file_is_moved_aside(tmp_path, caplog):
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    outbox = Outbox(path, max_rows=10, max_bytes=10**6)
    fill(outbox, 2)
    assert outbox.depth == 2
    assert len(list(tmp_path.glob("outbox.sqlite.corrupt-*"))) == 1
    assert "unreadable" in caplog.text


def test_committed_rows_survive_sigkill(tmp_path):
    """put() returns only once the row is on disk: a SIGKILL right after loses nothing."""
    path = tmp_path / "outbox.sqlite"
    script = textwrap.dedent(f"""
        import sys, time
        from device.mqtt.outbox import Outbox
        outbox = Outbox({str(path)!r}, max_rows=1000, max_bytes=10**6)
        for i in range(50):
            outbox.put("t", '{{"seq": %d}}' % i)
        print("stored", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout.readline().strip() == "stored"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    outbox = Outbox(path, max_rows=1000, max_bytes=10**6)
    assert seqs(outbox) == list(range(50))
