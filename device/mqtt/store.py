"""The outbox's storage: one sqlite3 file (WAL, fsync per commit), its schema and migration,
and what is done with a file that is damaged (moved aside, readable rows recovered).

Plain functions over a ``sqlite3.Connection``; the :class:`device.mqtt.outbox.Outbox` holds
the only connection and its lock, so nothing here is called from two threads at once.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

log = logging.getLogger("device.mqtt")

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

# sqlite result codes that mean "this storage cannot be used now", not "this file is damaged".
_STORAGE_CODES = (
    "SQLITE_FULL",
    "SQLITE_READONLY",
    "SQLITE_CANTOPEN",
    "SQLITE_IOERR",
    "SQLITE_PERM",
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_AUTH",
    "SQLITE_NOLFS",
)


def is_storage_error(exc: BaseException) -> bool:
    """True for a disk that is full, read-only, unreadable or busy (an OSError, or a sqlite
    error with such a code); False for damage (not a database, corrupt) and anything else."""
    if isinstance(exc, OSError):
        return True
    name = (exc.sqlite_errorname or "") if isinstance(exc, sqlite3.Error) else ""
    if name:
        return name.startswith(_STORAGE_CODES)
    text = str(exc).lower()
    return any(
        word in text
        for word in ("full", "readonly", "read-only", "unable to open", "disk i/o", "locked")
    )


class Damaged(Exception):
    """The file is not a usable outbox (not a database, corrupt, a schema from the future)."""


def open_disk(path: Path) -> tuple[sqlite3.Connection, int]:
    """The file as an outbox and how many rows were recovered from a damaged one: created,
    migrated, or (damaged) moved aside and recovered. Raises sqlite3.Error / OSError when
    the storage cannot be used now."""
    path.parent.mkdir(parents=True, exist_ok=True)
    wal_damage = check_wal(path)
    if wal_damage:
        aside = Path(f"{path}.corrupt-{int(time.time())}-wal")
        Path(str(path) + "-wal").rename(aside)
        Path(str(path) + "-shm").unlink(missing_ok=True)
        log.error(
            "mqtt outbox %s: %s; moved aside to %s. Events committed only to it are "
            "lost (how many cannot be known); the rest of the outbox is kept",
            path,
            wal_damage,
            aside,
        )
    try:
        return open_db(path), 0
    except (sqlite3.DatabaseError, Damaged) as exc:
        if isinstance(exc, sqlite3.Error) and is_storage_error(exc):
            raise
        damage = exc
    # A damaged file (a card pulled mid-write, a zero-length file, garbage) must not keep
    # the daemon from starting: keep it aside for inspection, begin a new outbox, and carry
    # over every row that can still be read from the old one.
    aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    rows, dropped = salvage(path)
    try:
        path.rename(aside)
    except OSError as exc:
        log.error(
            "mqtt outbox %s is damaged (%s) and cannot be moved aside (%s)",
            path,
            damage,
            exc.strerror or exc,
        )
        raise  # the caller falls back to memory
    for suffix in ("-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            src.rename(Path(str(aside) + suffix))
    db = open_db(path)
    with transaction(db) as cur:
        cur.executemany(
            "INSERT INTO outbox (id, topic, payload, bytes, queued_utc) VALUES (?, ?, ?, ?, ?)",
            rows,
        )
        cur.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (dropped,))
    log.error(
        "mqtt outbox %s is unreadable (%s): moved aside to %s; %d queued events recovered%s",
        path,
        damage,
        aside,
        len(rows),
        f", {dropped} lost (counted as dropped)" if dropped else " (none known lost)",
    )
    return db, len(rows)


def open_db(path: Path | str) -> sqlite3.Connection:
    """An outbox database opened (created, migrated); ``":memory:"`` for the in-memory
    fallback. Raises Damaged or sqlite3.Error for a file that is not a usable outbox."""
    if (
        str(path) != ":memory:"
        and Path(path).is_file()
        and (Path(path).stat().st_size == 0 and not Path(str(path) + "-wal").exists())
    ):
        # sqlite takes an empty file for a new database; an outbox file is never empty
        # once created (its tables are written at once), so this one lost its content.
        raise Damaged("the file is empty")
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
        migrate(db)
        db.execute("SELECT COUNT(*) FROM outbox").fetchone()
    except BaseException:
        db.close()
        raise
    return db


def disk_seq(db: sqlite3.Connection) -> int:
    """The highest row id the file ever gave out."""
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
    top = db.execute("SELECT COALESCE(MAX(id), 0) FROM outbox").fetchone()[0]
    return max(row[0] if row else 0, top)


class transaction:
    """``with transaction(db) as cur``: BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any error
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


def migrate(db: sqlite3.Connection) -> None:
    """Bring the tables to SCHEMA_VERSION. Raises Damaged for a version this code does not
    know (a newer release's file) and sqlite errors for a file that is not a database."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise Damaged(
            f"schema version {version} is newer than this release knows ({SCHEMA_VERSION})"
        )
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "outbox" in tables:
        columns = {r[1] for r in db.execute("PRAGMA table_info(outbox)")}
        if not {"id", "topic", "payload"} <= columns:
            raise Damaged(f"the outbox table has columns {sorted(columns)}")
        # Older layouts: rows without the byte count or queue time get them filled in.
        if "bytes" not in columns:
            db.execute("ALTER TABLE outbox ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0")
            db.execute(
                "UPDATE outbox SET bytes = length(CAST(topic AS BLOB)) "
                "+ length(CAST(payload AS BLOB))"
            )
            log.info("mqtt outbox: migrated (added the byte count)")
        if "queued_utc" not in columns:
            db.execute("ALTER TABLE outbox ADD COLUMN queued_utc TEXT NOT NULL DEFAULT ''")
            log.info("mqtt outbox: migrated (added the queue time)")
    if "meta" in tables:
        columns = {r[1] for r in db.execute("PRAGMA table_info(meta)")}
        if not {"key", "value"} <= columns:
            raise Damaged(f"the meta table has columns {sorted(columns)}")
    db.executescript(_SCHEMA)
    if version != SCHEMA_VERSION:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def read_only(path: Path) -> sqlite3.Connection | None:
    """The outbox file opened for reading only, or None when it cannot be."""
    if not path.is_file():
        return None
    try:
        # immutable: a WAL database on a read-only file system cannot make its -shm file.
        db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return db
    except sqlite3.Error:
        return None


def salvage(path: Path) -> tuple[list[tuple], int]:
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
                "SELECT id, topic, payload FROM outbox ORDER BY id"
            ):
                if isinstance(topic, str) and isinstance(payload, str):
                    size = len(topic.encode()) + len(payload.encode())
                    rows.append(
                        (
                            row_id,
                            topic,
                            payload,
                            size,
                            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        )
                    )
        except sqlite3.Error:
            pass
    finally:
        db.close()
    return rows, max(0, counted - len(rows))


_WAL_MAGIC = (b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83")


def check_wal(path: Path) -> str | None:
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


def describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)
