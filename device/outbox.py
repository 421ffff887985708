"""The durable outbox: events waiting for the broker's PUBACK, on disk (sqlite3, WAL).

Every event is written here, and committed with an fsync, before anything tries to publish
it; it leaves when the broker has acknowledged it. What is left when the broker is away, or
when the daemon is killed, is published again in order (row ids only grow: AUTOINCREMENT)
after the next connect or start.

The outbox is bounded by rows and by payload bytes. When a new event does not fit, the oldest
events are dropped to make room (the newest detections are the ones a field team acts on);
how many were ever dropped is counted in the same transaction, so the count survives
restarts. Rows the connection is already carrying can be protected from being dropped
(``keep``), so the count never claims an event was dropped that may still arrive.

Thread-safety: one lock serialises every call; the MQTT sink writes from the sink thread and
reads and deletes from its publisher thread.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    queued_utc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('dropped', 0);
"""


@dataclass(frozen=True)
class OutboxRow:
    """One queued message."""

    id: int
    """Row id: increases with every put, never reused; the publishing order."""
    topic: str
    payload: str
    """The event JSON, exactly as it will be published."""


class Outbox:
    """A bounded, durable FIFO of (topic, payload) messages in one sqlite3 file."""

    def __init__(self, path: str | Path, *, max_rows: int, max_bytes: int) -> None:
        """``path``: the database file (created with its folder). ``max_rows``: events kept at
        most. ``max_bytes``: topic + payload bytes kept at most (the file itself is somewhat
        larger: sqlite pages and the write-ahead log)."""
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            # A corrupt file (a card pulled mid-write) must not keep the daemon from starting:
            # keep it aside for inspection and begin a new outbox.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error("outbox %s is unreadable (%s); moved aside to %s, starting empty",
                      self.path, exc, aside)
            self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            self._db = self._open()
        self._rows, self._bytes = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM outbox").fetchone()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: each commit is fsynced to the WAL, so a power cut cannot take an event
            # the daemon already counted as stored.
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def put(self, topic: str, payload: str, *, keep: Collection[int] = ()) -> int:
        """Store one message durably (committed before this returns). If it does not fit, drop
        the oldest rows that are not in ``keep`` first. Returns how many rows were dropped.
        Raises ``sqlite3.Error`` when the disk cannot take it (full, read-only)."""
        size = len(topic.encode()) + len(payload.encode())
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                victims: list[tuple[int, int]] = []
                rows, total = self._rows + 1, self._bytes + size
                if rows > self.max_rows or total > self.max_bytes:
                    oldest_first = cur.execute("SELECT id, bytes FROM outbox ORDER BY id")
                    for row_id, row_bytes in oldest_first:
                        if rows <= self.max_rows and total <= self.max_bytes:
                            break
                        if row_id in keep:
                            continue
                        victims.append((row_id, row_bytes))
                        rows, total = rows - 1, total - row_bytes
                    cur.executemany("DELETE FROM outbox WHERE id = ?", [(v[0],) for v in victims])
                    cur.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'",
                                (len(victims),))
                cur.execute(
                    "INSERT INTO outbox (topic, payload, bytes, queued_utc) VALUES (?, ?, ?, ?)",
                    (topic, payload, size, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            self._rows, self._bytes = rows, total
            return len(victims)

    def peek(self, *, after: int = 0, limit: int = 100) -> list[OutboxRow]:
        """The oldest ``limit`` rows with an id greater than ``after``, in order."""
        with self._lock:
            found = self._db.execute(
                "SELECT id, topic, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (after, limit)).fetchall()
        return [OutboxRow(*row) for row in found]

    def remove(self, row_ids: Collection[int]) -> int:
        """Delete rows the broker has acknowledged, in one transaction (one fsync for a whole
        batch of PUBACKs); returns how many were there (a row dropped meanwhile is not)."""
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                removed = freed = 0
                for row_id in row_ids:
                    # (no DELETE ... RETURNING: Debian bullseye's sqlite 3.34 lacks it)
                    found = cur.execute("SELECT bytes FROM outbox WHERE id = ?",
                                        (row_id,)).fetchone()
                    if found is not None:
                        cur.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
                        removed, freed = removed + 1, freed + found[0]
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            self._rows -= removed
            self._bytes -= freed
            return removed

    @property
    def depth(self) -> int:
        """Messages waiting."""
        return self._rows

    @property
    def size_bytes(self) -> int:
        """Topic + payload bytes waiting."""
        return self._bytes

    @property
    def dropped(self) -> int:
        """Messages ever dropped to respect the bounds (persisted across restarts)."""
        with self._lock:
            return self._db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
