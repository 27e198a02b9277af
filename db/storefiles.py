"""A SQLite store's files deleted or replaced under a running process (issue 12, item 9).

In WAL mode committed transactions live in `<db>-wal` until a checkpoint copies them into the
database file. Deleting that file while the studio runs goes unnoticed by SQLite: this process keeps
reading and writing the unlinked file through its open handles, a new process starts an empty WAL,
and at the next crash every transaction still in the old WAL is gone. So each connection records
which files it opened (device, inode), and `guard_store_files` (run on every connect and checkout,
and by the app on every script run) compares them with what the paths hold now:

- the `-wal` file was deleted or replaced: `PRAGMA wal_checkpoint(TRUNCATE)` through a connection
  that still holds the old WAL copies the committed transactions into the database file; the pool's
  connections are then retired so the next one creates a fresh WAL;
- the database file itself was deleted or replaced: SQLite's online backup through a connection
  that still holds it copies it into a rescue file; nothing else is safe to do, so the caller stops.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import InvalidatePoolError

log = logging.getLogger(__name__)

FileId = tuple[int, int] | None  # (st_dev, st_ino) of a path, None when it does not exist


class StoreFilesChange(StrEnum):
    """What happened to the store's files under the running process."""

    wal_rescued = "wal_rescued"  # -wal deleted or replaced; its transactions checkpointed into the db
    db_gone = "db_gone"  # the database file itself deleted or replaced; a rescue copy was taken


@dataclass(frozen=True)
class StoreFilesEvent:
    """One change found by the guard, with what was done about it."""

    change: StoreFilesChange
    message: str  # one sentence for the user and the log
    rescue: Path | None = None  # db_gone: the copy taken through the open connection


@dataclass
class _Conn:
    dbapi: sqlite3.Connection
    db: FileId
    wal: FileId
    in_use: bool = False


@dataclass
class _Watch:
    path: Path
    rescue_dir: Path
    conns: dict[int, _Conn] = field(default_factory=dict)
    rescued_wals: set[FileId] = field(default_factory=set)
    gone: StoreFilesEvent | None = None  # sticky: the database file cannot come back by itself
    pending: list[StoreFilesEvent] = field(default_factory=list)  # found in pool events, not yet told
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def wal_path(self) -> Path:
        return self.path.with_name(self.path.name + "-wal")


_WATCHES: weakref.WeakKeyDictionary[Engine, _Watch] = weakref.WeakKeyDictionary()


def file_id(path: Path) -> FileId:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def watch_store_files(engine: Engine, path: Path, *, rescue_dir: Path | None = None) -> None:
    """Record the files each new connection of `engine` opens; check them on connect and checkout.

    Call it before the engine's own `connect` listener (which switches to WAL), so a stale WAL is
    rescued before a new connection reads the database through an empty new one."""
    path = Path(path).resolve()
    watch = _Watch(path=path, rescue_dir=Path(rescue_dir) if rescue_dir else path.parent / "backups")
    _WATCHES[engine] = watch

    @event.listens_for(engine, "connect")
    def _before_first_read(_dbapi, _record):
        _check(engine, watch)

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi, _record, _proxy):
        _check(engine, watch)
        with watch.lock:
            conn = watch.conns.get(id(dbapi))
            if conn is not None and conn.wal != file_id(watch.wal_path) and watch.gone is None:
                # this connection still holds the old WAL: retire every connection of the pool
                raise InvalidatePoolError("the store's -wal file was replaced")
            if conn is not None:
                conn.in_use = True

    @event.listens_for(engine, "checkin")
    def _on_checkin(dbapi, _record):
        with watch.lock:
            if dbapi is not None and (conn := watch.conns.get(id(dbapi))):
                conn.in_use = False

    @event.listens_for(engine, "close")
    def _on_close(dbapi, _record):
        with watch.lock:
            watch.conns.pop(id(dbapi), None)

    @event.listens_for(engine, "close_detached")
    def _on_close_detached(dbapi):
        with watch.lock:
            watch.conns.pop(id(dbapi), None)


def record_opened_files(engine: Engine, dbapi: sqlite3.Connection) -> None:
    """After the connection switched to WAL: make it open the -wal file, then remember both files.

    `PRAGMA journal_mode=WAL` on a database still in rollback mode (a new store's first connection)
    only marks the database file; SQLite opens, or creates, the -wal at the connection's next read.
    Recorded before that read, the connection would seem to hold no -wal, and the file its own first
    read creates would look like a replaced log: a false alarm. One read first, so the record names
    the file the connection holds from now until it closes (while it is open no other connection,
    in any process, deletes that file: only the last one to close does)."""
    if (watch := _WATCHES.get(engine)) is not None:
        dbapi.execute("PRAGMA schema_version").fetchone()  # a read: the connection opens the -wal
        with watch.lock:
            watch.conns[id(dbapi)] = _Conn(dbapi, file_id(watch.path), file_id(watch.wal_path))


def guard_store_files(engine: Engine, *, retire: bool = True) -> StoreFilesEvent | None:
    """Check the store's files against what this process opened; rescue and say what was done.

    Returns the change found now (or earlier in a connect/checkout of this engine and not yet told),
    None when all is well. A deleted database file is reported on every call. With `retire`, the
    pool is disposed after a WAL rescue, so every connection reopens the files at their paths."""
    watch = _WATCHES.get(engine)
    if watch is None:
        return None
    found = _check(engine, watch)
    with watch.lock:
        told = watch.pending.pop(0) if watch.pending else None
        watch.pending.clear()
    found = watch.gone or found or told
    if retire and found is not None and found.change == StoreFilesChange.wal_rescued:
        engine.dispose()
    return found


def _check(engine: Engine, watch: _Watch) -> StoreFilesEvent | None:
    with watch.lock:
        if watch.gone is not None:
            return watch.gone
        db_now, wal_now = file_id(watch.path), file_id(watch.wal_path)
        for key in [k for k, c in watch.conns.items() if not _is_open(c.dbapi)]:
            del watch.conns[key]  # closed without a pool event (a failed connect listener): holds nothing
        live = sorted(watch.conns.values(), key=lambda c: c.in_use)  # idle connections first
        if held := [c for c in live if c.db != db_now]:
            gone = _rescue_db(watch, held[0], replaced=db_now is not None)
            log.error(gone.message)
            if gone.rescue is not None:  # else the next check tries again
                watch.gone = gone
            return gone
        stale = [c for c in live if c.wal != wal_now and c.wal not in watch.rescued_wals]
        if not stale:
            return None
        found = _checkpoint(watch, stale[0], replaced=wal_now is not None)
        watch.rescued_wals.update(c.wal for c in stale)
        watch.pending.append(found)
        log.warning(found.message)
        return found


def _is_open(dbapi: sqlite3.Connection) -> bool:
    try:
        dbapi.total_changes  # noqa: B018  (raises on a closed connection)
    except sqlite3.ProgrammingError:
        return False
    return True


def _checkpoint(watch: _Watch, conn: _Conn, *, replaced: bool) -> StoreFilesEvent:
    what = "replaced" if replaced else "deleted"
    try:
        busy, _, _ = conn.dbapi.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        done = "" if busy == 0 else " (partly: another connection was reading; it is retried)"
    except sqlite3.Error as exc:
        done = f" — but the checkpoint failed ({exc}); take a backup now: python -m pipeline db backup"
    return StoreFilesEvent(
        StoreFilesChange.wal_rescued,
        f"The store's write-ahead log {watch.wal_path} was {what} while the studio ran. The decisions it "
        f"still held were written into {watch.path}{done}, and the studio reopened the store with a new log.")


def _rescue_db(watch: _Watch, conn: _Conn, *, replaced: bool) -> StoreFilesEvent:
    what = "replaced by another file" if replaced else "deleted"
    watch.rescue_dir.mkdir(parents=True, exist_ok=True)
    rescue = watch.rescue_dir / f"rescued-{datetime.now(UTC):%Y%m%d-%H%M%S-%f}.db"
    try:
        dst = sqlite3.connect(str(rescue))
        try:
            conn.dbapi.backup(dst)
        finally:
            dst.close()
    except sqlite3.Error as exc:
        rescue.unlink(missing_ok=True)
        return StoreFilesEvent(
            StoreFilesChange.db_gone,
            f"The database file {watch.path} was {what} while the studio ran, and copying what the studio "
            f"still had open failed ({exc}). Do not stop the studio: it still holds the data; reload to try again.")
    return StoreFilesEvent(
        StoreFilesChange.db_gone,
        f"The database file {watch.path} was {what} while the studio ran. Everything the studio still had "
        f"open was copied to {rescue}.", rescue=rescue)
