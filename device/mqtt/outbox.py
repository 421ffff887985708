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

When the disk cannot take a write (full, read-only: what a failing SD card does), or cannot
be opened at all, the outbox carries on in memory: the rows it can still read are copied into
an in-memory sqlite database with the same schema, bounds and row ids, and new events go
there. Every ``retry_s`` it tries the disk again; when a write succeeds the memory rows are
written back (ids kept, so the publisher's order holds) and the disk is the outbox again.
Such an episode is reported once to ``storage`` (device.health.Degradations). Events that
were only in memory are lost if the process dies before the broker or the disk takes them.

A file that is not a database (a card pulled mid-write, a zero-length file) is moved aside
with a loud log line, the rows still readable from it are recovered into the new file, and
what could not be recovered is counted as dropped. A file of an older schema is migrated.

Thread-safety: one lock serialises every call; the MQTT sink writes from the sink thread and
reads and deletes from its publisher thread. The file itself (schema, migration, damage) is
device/mqtt/store.py.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from device.mqtt.store import (
    SCHEMA_VERSION,
    describe,
    disk_seq,
    is_storage_error,
    open_db,
    open_disk,
    read_only,
    transaction,
)

__all__ = ["SCHEMA_VERSION", "RETRY_S", "Outbox", "OutboxRow", "is_storage_error"]

log = logging.getLogger("device.mqtt")

RETRY_S = 10.0
"""While the outbox lives in memory, seconds between attempts to write to the disk again."""


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

    def __init__(
        self,
        path: str | Path,
        *,
        max_rows: int,
        max_bytes: int,
        storage=None,
        retry_s: float = RETRY_S,
    ) -> None:
        """``path``: the database file (created with its folder). ``max_rows``: events kept at
        most. ``max_bytes``: topic + payload bytes kept at most (the file itself is somewhat
        larger: sqlite pages and the write-ahead log). ``storage``: where a disk that cannot
        be written is reported (a device.health.Degradations), or None (logged only)."""
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.retry_s = retry_s
        self._storage = storage
        self._lock = threading.Lock()
        self._disk: sqlite3.Connection | None = None
        self._in_memory = False
        self._removed_meanwhile: set[int] = set()  # rows gone from memory, still on disk
        self._seeded = False  # the memory ids continue the disk's (no clash on return)
        self._seq = 0  # the highest row id ever given out (as far as known)
        self._next_try = 0.0
        self.generation = 0
        """Increases when row ids were renumbered (a publisher then forgets what it handed)."""
        self.recovered = 0
        """Rows recovered from a damaged file at start."""
        try:
            self._disk, self.recovered = open_disk(self.path)
            self._db = self._disk
            self._seq = disk_seq(self._disk)
        except (sqlite3.Error, OSError) as exc:
            # Read-only (or full) at start: what the file holds can often still be read.
            view = read_only(self.path)
            try:
                self._db = self._memory(exc, copy_from=view)
            finally:
                if view is not None:
                    view.close()
        self._count()

    # -- opening ------------------------------------------------------------------------------

    def _memory(self, exc: BaseException, *, copy_from: sqlite3.Connection | None):
        """Switch to an in-memory outbox holding what ``copy_from`` still has; report once."""
        mem = open_db(":memory:")
        copied = dropped = 0
        seeded = self._disk is not None
        if copy_from is not None:
            try:
                self._seq = max(self._seq, disk_seq(copy_from))
                seeded = True
                rows = copy_from.execute(
                    "SELECT id, topic, payload, bytes, queued_utc FROM outbox ORDER BY id"
                ).fetchall()
                dropped = copy_from.execute(
                    "SELECT value FROM meta WHERE key = 'dropped'"
                ).fetchone()[0]
                mem.executemany(
                    "INSERT INTO outbox (id, topic, payload, bytes, queued_utc) "
                    "VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                copied = len(rows)
            except sqlite3.Error as read_exc:
                log.warning(
                    "mqtt outbox %s cannot be read either (%s): its events stay on "
                    "disk and are published when it can be read",
                    self.path,
                    read_exc,
                )
        mem.execute("UPDATE meta SET value = ? WHERE key = 'dropped'", (dropped,))
        if self._seq:
            mem.execute(
                "INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)", (self._seq,)
            )
        self._seeded = seeded
        self._in_memory = True
        self._removed_meanwhile = set()
        self._next_try = time.monotonic() + self.retry_s
        fallback = (
            f"events queue in memory ({copied} copied from disk, same bounds; lost if "
            "the process dies before the broker takes them)"
        )
        if self._storage is not None:
            self._storage.failed("outbox", describe(exc), fallback=fallback)
        else:
            log.warning("mqtt outbox %s cannot write (%s); %s", self.path, describe(exc), fallback)
        return mem

    def _count(self) -> None:
        self._rows, self._bytes = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM outbox"
        ).fetchone()

    def _degrade(self, exc: BaseException) -> None:
        """The disk failed a call: continue in memory (call with the lock held)."""
        self._db = self._memory(exc, copy_from=self._disk)
        self._count()

    def _maybe_restore(self) -> None:
        """In memory: every retry_s, try to put the memory rows back on disk (lock held)."""
        if not self._in_memory or time.monotonic() < self._next_try:
            return
        self._next_try = time.monotonic() + self.retry_s
        try:
            disk = self._disk if self._disk is not None else open_disk(self.path)[0]
        except (sqlite3.Error, OSError) as exc:
            log.debug("mqtt outbox %s still unavailable: %s", self.path, exc)
            return
        self._disk = disk
        mem = self._db
        try:
            rows = mem.execute(
                "SELECT id, topic, payload, bytes, queued_utc FROM outbox ORDER BY id"
            ).fetchall()
            mem_dropped = mem.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()[0]
            top = disk_seq(disk)
            renumber = not self._seeded and top > 0
            if renumber:
                # The disk could not be read when memory took over: its ids may clash.
                rows = [(top + i + 1, *row[1:]) for i, row in enumerate(rows)]
            with transaction(disk) as cur:
                cur.executemany(
                    "DELETE FROM outbox WHERE id = ?",
                    [(i,) for i in sorted(self._removed_meanwhile)],
                )
                cur.executemany(
                    "INSERT OR IGNORE INTO outbox (id, topic, payload, bytes, "
                    "queued_utc) VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                if not renumber:
                    # Ids given out in memory are spent: the disk's next id comes after them
                    # (it may be an older copy of the card, which never saw them).
                    cur.execute(
                        "UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'outbox'",
                        (self._seq,),
                    )
                    if cur.rowcount == 0:
                        cur.execute(
                            "INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)",
                            (self._seq,),
                        )
                # A write that surely changes a page: proves the disk takes writes again.
                cur.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('restored', "
                    "COALESCE((SELECT value FROM meta WHERE key = 'restored'), 0) + 1)"
                )
                if self._seeded:
                    cur.execute("UPDATE meta SET value = ? WHERE key = 'dropped'", (mem_dropped,))
                else:
                    cur.execute(
                        "UPDATE meta SET value = value + ? WHERE key = 'dropped'", (mem_dropped,)
                    )
        except (sqlite3.Error, OSError) as exc:
            log.debug("mqtt outbox %s still cannot be written: %s", self.path, exc)
            # Open the file afresh next time: the card may come back as a new mount.
            disk.close()
            self._disk = None
            return
        mem.close()
        self._db = disk
        self._in_memory = False
        self._removed_meanwhile = set()
        self._seq = disk_seq(disk)
        if renumber:
            self.generation += 1
        self._count()
        if self._storage is not None:
            self._storage.ok("outbox")
        log.info("mqtt outbox %s is on disk again (%d events written back)", self.path, len(rows))

    def _call(self, work):
        """Run ``work(db)`` on the active store; a disk failure moves to memory and retries
        there once (lock held)."""
        self._maybe_restore()
        try:
            return work(self._db)
        except (sqlite3.Error, OSError) as exc:
            if self._in_memory or not is_storage_error(exc):
                raise
            self._degrade(exc)
            return work(self._db)

    # -- the queue ----------------------------------------------------------------------------

    def put(self, topic: str, payload: str, *, keep: Collection[int] = ()) -> int:
        """Store one message (committed to disk before this returns, or kept in memory while
        the disk cannot take it). If it does not fit, drop the oldest rows that are not in
        ``keep`` first. Returns how many rows were dropped."""
        size = len(topic.encode()) + len(payload.encode())

        def work(db: sqlite3.Connection) -> int:
            with transaction(db) as cur:
                victims: list[tuple[int, int]] = []
                rows, total = self._rows + 1, self._bytes + size
                if rows > self.max_rows or total > self.max_bytes:
                    oldest_first = cur.execute("SELECT id, bytes FROM outbox ORDER BY id")
                    for row_id, row_bytes in oldest_first.fetchall():
                        if rows <= self.max_rows and total <= self.max_bytes:
                            break
                        if row_id in keep:
                            continue
                        victims.append((row_id, row_bytes))
                        rows, total = rows - 1, total - row_bytes
                    cur.executemany("DELETE FROM outbox WHERE id = ?", [(v[0],) for v in victims])
                    cur.execute(
                        "UPDATE meta SET value = value + ? WHERE key = 'dropped'", (len(victims),)
                    )
                cur.execute(
                    "INSERT INTO outbox (topic, payload, bytes, queued_utc) VALUES (?, ?, ?, ?)",
                    (topic, payload, size, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
                )
                row_id = cur.lastrowid
            self._rows, self._bytes = rows, total
            self._seq = max(self._seq, row_id or 0)
            if self._in_memory:
                self._removed_meanwhile.update(v[0] for v in victims)
            return len(victims)

        with self._lock:
            return self._call(work)

    def peek(self, *, after: int = 0, limit: int = 100) -> list[OutboxRow]:
        """The oldest ``limit`` rows with an id greater than ``after``, in order."""
        with self._lock:
            found = self._call(
                lambda db: db.execute(
                    "SELECT id, topic, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                    (after, limit),
                ).fetchall()
            )
        return [OutboxRow(*row) for row in found]

    def remove(self, row_ids: Collection[int]) -> int:
        """Delete rows the broker has acknowledged, in one transaction (one fsync for a whole
        batch of PUBACKs); returns how many were there (a row dropped meanwhile is not)."""

        def work(db: sqlite3.Connection) -> int:
            with transaction(db) as cur:
                removed = freed = 0
                for row_id in row_ids:
                    # (no DELETE ... RETURNING: Debian bullseye's sqlite 3.34 lacks it)
                    found = cur.execute(
                        "SELECT bytes FROM outbox WHERE id = ?", (row_id,)
                    ).fetchone()
                    if found is not None:
                        cur.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
                        removed, freed = removed + 1, freed + found[0]
            self._rows -= removed
            self._bytes -= freed
            if self._in_memory:
                self._removed_meanwhile.update(row_ids)
            return removed

        with self._lock:
            return self._call(work)

    def retry_disk(self) -> None:
        """Try the disk again now if the outbox is in memory and retry_s has passed."""
        with self._lock:
            self._maybe_restore()

    @property
    def in_memory(self) -> bool:
        """True while the disk cannot be written and events are queued in memory."""
        return self._in_memory

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
            if self._disk is not None and self._disk is not self._db:
                self._disk.close()
