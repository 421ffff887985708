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

SCHEMA_VERSION = 1
"""``PRAGMA user_version`` of an outbox this code writes (0: before versioning, same tables)."""

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

RETRY_S = 10.0
"""While the outbox lives in memory, seconds between attempts to write to the disk again."""

# sqlite result codes that mean "this storage cannot be used now", not "this file is damaged".
_STORAGE_CODES = ("SQLITE_FULL", "SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_IOERR",
                  "SQLITE_PERM", "SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_AUTH", "SQLITE_NOLFS")


def is_storage_error(exc: BaseException) -> bool:
    """True for a disk that is full, read-only, unreadable or busy (an OSError, or a sqlite
    error with such a code); False for damage (not a database, corrupt) and anything else."""
    if isinstance(exc, OSError):
        return True
    name = getattr(exc, "sqlite_errorname", None) or ""
    if name:
        return name.startswith(_STORAGE_CODES)
    text = str(exc).lower()
    return any(word in text for word in ("full", "readonly", "read-only", "unable to open",
                                         "disk i/o", "locked"))


class _Damaged(Exception):
    """The file is not a usable outbox (not a database, corrupt, a schema from the future)."""


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

    def __init__(self, path: str | Path, *, max_rows: int, max_bytes: int, storage=None,
                 retry_s: float = RETRY_S) -> None:
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
        self._seeded = False       # the memory ids continue the disk's (no clash on return)
        self._seq = 0              # the highest row id ever given out (as far as known)
        self._next_try = 0.0
        self.generation = 0
        """Increases when row ids were renumbered (a publisher then forgets what it handed)."""
        self.recovered = 0
        """Rows recovered from a damaged file at start."""
        try:
            self._disk = self._open_disk()
            self._db = self._disk
            self._seq = self._disk_seq(self._disk)
        except (sqlite3.Error, OSError) as exc:
            # Read-only (or full) at start: what the file holds can often still be read.
            view = _read_only(self.path)
            try:
                self._db = self._memory(exc, copy_from=view)
            finally:
                if view is not None:
                    view.close()
        self._count()

    # -- opening ------------------------------------------------------------------------------

    def _open_disk(self) -> sqlite3.Connection:
        """The file as an outbox: created, migrated, or (damaged) moved aside and recovered.
        Raises sqlite3.Error / OSError when the storage cannot be used now."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        wal_damage = _check_wal(self.path)
        if wal_damage:
            aside = Path(f"{self.path}.corrupt-{int(time.time())}-wal")
            Path(str(self.path) + "-wal").rename(aside)
            Path(str(self.path) + "-shm").unlink(missing_ok=True)
            log.error("mqtt outbox %s: %s; moved aside to %s. Events committed only to it are "
                      "lost (how many cannot be known); the rest of the outbox is kept",
                      self.path, wal_damage, aside)
        try:
            return self._open(self.path)
        except (sqlite3.DatabaseError, _Damaged) as exc:
            if isinstance(exc, sqlite3.Error) and is_storage_error(exc):
                raise
            damage = exc
        # A damaged file (a card pulled mid-write, a zero-length file, garbage) must not keep
        # the daemon from starting: keep it aside for inspection, begin a new outbox, and carry
        # over every row that can still be read from the old one.
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        rows, dropped = _salvage(self.path)
        try:
            self.path.rename(aside)
        except OSError as exc:
            log.error("mqtt outbox %s is damaged (%s) and cannot be moved aside (%s)",
                      self.path, damage, exc.strerror or exc)
            raise  # the caller falls back to memory
        for suffix in ("-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                src.rename(Path(str(aside) + suffix))
        db = self._open(self.path)
        with _transaction(db) as cur:
            cur.executemany(
                "INSERT INTO outbox (id, topic, payload, bytes, queued_utc) VALUES (?, ?, ?, ?, ?)",
                rows)
            cur.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (dropped,))
        self.recovered = len(rows)
        log.error("mqtt outbox %s is unreadable (%s): moved aside to %s; %d queued events "
                  "recovered%s", self.path, damage, aside, len(rows),
                  f", {dropped} lost (counted as dropped)" if dropped else
                  " (none known lost)")
        return db

    @staticmethod
    def _open(path: Path | str) -> sqlite3.Connection:
        if str(path) != ":memory:" and Path(path).is_file() and (
                Path(path).stat().st_size == 0 and not Path(str(path) + "-wal").exists()):
            # sqlite takes an empty file for a new database; an outbox file is never empty
            # once created (its tables are written at once), so this one lost its content.
            raise _Damaged("the file is empty")
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            if str(path) != ":memory:":
                # Exclusive: the write-ahead log then keeps its index in heap memory instead of
                # a memory-mapped -shm file, which on a full ext4 card kills the process with
                # SIGBUS. (One process owns the outbox anyway.)
                db.execute("PRAGMA locking_mode=EXCLUSIVE")
                db.execute("PRAGMA journal_mode=WAL")
                # FULL: each commit is fsynced to the WAL, so a power cut cannot take an event
                # the daemon already counted as stored.
                db.execute("PRAGMA synchronous=FULL")
            _migrate(db)
            db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    @staticmethod
    def _disk_seq(db: sqlite3.Connection) -> int:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        top = db.execute("SELECT COALESCE(MAX(id), 0) FROM outbox").fetchone()[0]
        return max(row[0] if row else 0, top)

    def _memory(self, exc: BaseException, *, copy_from: sqlite3.Connection | None):
        """Switch to an in-memory outbox holding what ``copy_from`` still has; report once."""
        mem = self._open(":memory:")
        copied = dropped = 0
        seeded = self._disk is not None
        if copy_from is not None:
            try:
                self._seq = max(self._seq, self._disk_seq(copy_from))
                seeded = True
                rows = copy_from.execute(
                    "SELECT id, topic, payload, bytes, queued_utc FROM outbox ORDER BY id"
                ).fetchall()
                dropped = copy_from.execute(
                    "SELECT value FROM meta WHERE key = 'dropped'").fetchone()[0]
                mem.executemany("INSERT INTO outbox (id, topic, payload, bytes, queued_utc) "
                                "VALUES (?, ?, ?, ?, ?)", rows)
                copied = len(rows)
            except sqlite3.Error as read_exc:
                log.warning("mqtt outbox %s cannot be read either (%s): its events stay on "
                            "disk and are published when it can be read", self.path, read_exc)
        mem.execute("UPDATE meta SET value = ? WHERE key = 'dropped'", (dropped,))
        if self._seq:
            mem.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)",
                        (self._seq,))
        self._seeded = seeded
        self._in_memory = True
        self._removed_meanwhile = set()
        self._next_try = time.monotonic() + self.retry_s
        fallback = (f"events queue in memory ({copied} copied from disk, same bounds; lost if "
                    "the process dies before the broker takes them)")
        if self._storage is not None:
            self._storage.failed("outbox", _describe(exc), fallback=fallback)
        else:
            log.warning("mqtt outbox %s cannot write (%s); %s", self.path, _describe(exc),
                        fallback)
        return mem

    def _count(self) -> None:
        self._rows, self._bytes = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM outbox").fetchone()

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
            disk = self._disk if self._disk is not None else self._open_disk()
        except (sqlite3.Error, OSError) as exc:
            log.debug("mqtt outbox %s still unavailable: %s", self.path, exc)
            return
        self._disk = disk
        mem = self._db
        try:
            rows = mem.execute("SELECT id, topic, payload, bytes, queued_utc FROM outbox "
                               "ORDER BY id").fetchall()
            mem_dropped = mem.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()[0]
            disk_seq = self._disk_seq(disk)
            renumber = not self._seeded and disk_seq > 0
            if renumber:
                # The disk could not be read when memory took over: its ids may clash.
                rows = [(disk_seq + i + 1, *row[1:]) for i, row in enumerate(rows)]
            with _transaction(disk) as cur:
                cur.executemany("DELETE FROM outbox WHERE id = ?",
                                [(i,) for i in sorted(self._removed_meanwhile)])
                cur.executemany("INSERT OR IGNORE INTO outbox (id, topic, payload, bytes, "
                                "queued_utc) VALUES (?, ?, ?, ?, ?)", rows)
                if not renumber:
                    # Ids given out in memory are spent: the disk's next id comes after them
                    # (it may be an older copy of the card, which never saw them).
                    cur.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = "
                                "'outbox'", (self._seq,))
                    if cur.rowcount == 0:
                        cur.execute("INSERT INTO sqlite_sequence (name, seq) VALUES "
                                    "('outbox', ?)", (self._seq,))
                # A write that surely changes a page: proves the disk takes writes again.
                cur.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('restored', "
                            "COALESCE((SELECT value FROM meta WHERE key = 'restored'), 0) + 1)")
                if self._seeded:
                    cur.execute("UPDATE meta SET value = ? WHERE key = 'dropped'", (mem_dropped,))
                else:
                    cur.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'",
                                (mem_dropped,))
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
        self._seq = self._disk_seq(disk)
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
            with _transaction(db) as cur:
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
                    cur.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'",
                                (len(victims),))
                cur.execute(
                    "INSERT INTO outbox (topic, payload, bytes, queued_utc) VALUES (?, ?, ?, ?)",
                    (topic, payload, size, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
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
            found = self._call(lambda db: db.execute(
                "SELECT id, topic, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (after, limit)).fetchall())
        return [OutboxRow(*row) for row in found]

    def remove(self, row_ids: Collection[int]) -> int:
        """Delete rows the broker has acknowledged, in one transaction (one fsync for a whole
        batch of PUBACKs); returns how many were there (a row dropped meanwhile is not)."""

        def work(db: sqlite3.Connection) -> int:
            with _transaction(db) as cur:
                removed = freed = 0
                for row_id in row_ids:
                    # (no DELETE ... RETURNING: Debian bullseye's sqlite 3.34 lacks it)
                    found = cur.execute("SELECT bytes FROM outbox WHERE id = ?",
                                        (row_id,)).fetchone()
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


class _transaction:
    """``with _transaction(db) as cur``: BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any error
    (a rollback that fails too, as after SQLITE_FULL, leaves the first error standing)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._cur = db.cursor()

    def __enter__(self) -> sqlite3.Cursor:
        self._cur.execute("BEGIN IMMEDIATE")
        return self._cur

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None:
            try:
                self._cur.execute("COMMIT")
                return
            except BaseException:
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        try:
            self._cur.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def _migrate(db: sqlite3.Connection) -> None:
    """Bring the tables to SCHEMA_VERSION. Raises _Damaged for a version this code does not
    know (a newer release's file) and sqlite errors for a file that is not a database."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise _Damaged(f"schema version {version} is newer than this release knows "
                       f"({SCHEMA_VERSION})")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "outbox" in tables:
        columns = {r[1] for r in db.execute("PRAGMA table_info(outbox)")}
        if not {"id", "topic", "payload"} <= columns:
            raise _Damaged(f"the outbox table has columns {sorted(columns)}")
        # Older layouts: rows without the byte count or queue time get them filled in.
        if "bytes" not in columns:
            db.execute("ALTER TABLE outbox ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0")
            db.execute("UPDATE outbox SET bytes = length(CAST(topic AS BLOB)) "
                       "+ length(CAST(payload AS BLOB))")
            log.info("mqtt outbox: migrated (added the byte count)")
        if "queued_utc" not in columns:
            db.execute("ALTER TABLE outbox ADD COLUMN queued_utc TEXT NOT NULL DEFAULT ''")
            log.info("mqtt outbox: migrated (added the queue time)")
    if "meta" in tables:
        columns = {r[1] for r in db.execute("PRAGMA table_info(meta)")}
        if not {"key", "value"} <= columns:
            raise _Damaged(f"the meta table has columns {sorted(columns)}")
    db.executescript(_SCHEMA)
    if version != SCHEMA_VERSION:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _read_only(path: Path) -> sqlite3.Connection | None:
    """The outbox file opened for reading only, or None when it cannot be."""
    if not path.is_file():
        return None
    try:
        # immutable: a WAL database on a read-only file system cannot make its -shm file.
        db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True,
                             check_same_thread=False)
        db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return db
    except sqlite3.Error:
        return None


def _salvage(path: Path) -> tuple[list[tuple], int]:
    """Rows still readable from a damaged outbox file, and how many are known lost (rows the
    file's header still counts but that could not be read; 0 when not even that is known)."""
    rows: list[tuple] = []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return rows, 0
    counted = 0
    try:
        try:
            counted = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        except sqlite3.Error:
            pass
        try:
            for row_id, topic, payload in db.execute(
                    "SELECT id, topic, payload FROM outbox ORDER BY id"):
                if isinstance(topic, str) and isinstance(payload, str):
                    size = len(topic.encode()) + len(payload.encode())
                    rows.append((row_id, topic, payload, size,
                                 time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
        except sqlite3.Error:
            pass
    finally:
        db.close()
    return rows, max(0, counted - len(rows))


_WAL_MAGIC = (b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83")


def _check_wal(path: Path) -> str | None:
    """Why the write-ahead log beside ``path`` is damaged, or None. sqlite silently ignores a
    log whose header is garbage, and with it every event committed only to it."""
    wal = Path(str(path) + "-wal")
    try:
        with open(wal, "rb") as f:
            head = f.read(32)
    except FileNotFoundError:
        return None
    if not head:
        return None
    if len(head) < 32 or head[:4] not in _WAL_MAGIC:
        return "its write-ahead log (-wal) is not a sqlite log"
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)
