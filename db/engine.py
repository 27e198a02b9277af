"""Engine and sessions: one short session per unit of work; SQLite in WAL mode."""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, create_engine

from db.storefiles import record_opened_files, watch_store_files


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (its query dropped); None for an in-memory store, a `file:` URI or another
    database."""
    path = url.split("?", 1)[0].split("///", 1)[1] if url.startswith("sqlite") and "///" in url else ""
    return Path(path) if path and path != ":memory:" and not path.startswith("file:") else None


def _ensure_sqlite_folder(url: str) -> None:
    """The folder of a SQLite store; a store that does not exist yet is created with PAGE_SIZE pages."""
    path = sqlite_file(url)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size > 0:
        return
    try:
        conn = sqlite3.connect(path)
    except sqlite3.Error:  # e.g. a read-only folder: the engine's own connect says so, as before
        return
    try:  # the page size is fixed by the first write; WAL mode keeps it from then on
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error:
        pass  # likewise left to the engine's own connect
    finally:
        conn.close()


PAGE_SIZE = 8192
"""Page size of a new SQLite store. An image row holds its PNG (~2.5 KB for a 32x32 picture): with
SQLite's default 4 KiB pages each took a page of its own, so a store was ~40% slack and an import
wrote twice the bytes it needed; with 8 KiB pages three rows share one. Measured on 100,000 PNGs:
the insert's CPU 33.5 -> 22.7 us per image, 1,013 -> 527 MB written, the file 433 -> 314 MB.
A store created with another page size keeps it (changing it needs a VACUUM outside WAL mode)."""


def make_engine(url: str) -> Engine:
    """Create an engine; for SQLite: WAL, foreign keys, a busy timeout for concurrent writers."""
    if url.startswith("sqlite"):
        _ensure_sqlite_folder(url)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        if (path := sqlite_file(url)) is not None:
            # before the WAL pragma below: a -wal deleted under this process is rescued first
            watch_store_files(engine, path)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            # The driver's implicit transactions are disabled so that BEGIN IMMEDIATE below
            # takes the write lock up front: concurrent writers queue instead of deadlocking.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            # statement journals in memory: a row written to `review` runs the tally's trigger, and with
            # file-backed temp storage every such statement wrote a journal file (~20 us a row on import)
            cur.execute("PRAGMA temp_store=MEMORY")
            cur.close()
            record_opened_files(engine, dbapi_conn)

        @event.listens_for(engine, "begin")
        def _begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)


def lock_for_claim(stmt, session: Session):
    """Make a claim's SELECT safe against concurrent claimers.

    PostgreSQL (READ COMMITTED): `FOR UPDATE SKIP LOCKED`, so two sessions never pick the same free
    row: the second skips a row the first has locked and takes the next one. SQLite needs nothing:
    its transactions begin with BEGIN IMMEDIATE, so claimers already run one at a time.
    """
    if session.get_bind().dialect.name == "postgresql":
        return stmt.with_for_update(skip_locked=True)
    return stmt


def lock_row(session: Session, model, key):
    """Read one row to change it: `SELECT ... FOR UPDATE` on PostgreSQL (a concurrent writer waits
    for this transaction instead of both acting on the same old version); a plain get on SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        return session.get(model, key, with_for_update=True, populate_existing=True)
    return session.get(model, key)


@contextmanager
def session_scope(engine: Engine | Connection) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error (on a connection: its transaction)."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


BULK_CACHE_KIB = 256 * 1024
"""SQLite page cache of a connection writing a bulk import: a million-row store's content-hash and
source-key indexes take new keys at random places, which SQLite's default 2 MiB cache would re-read."""

BULK_CHECKPOINT_BYTES = 512 * 1024 * 1024
"""WAL bytes after which a bulk import's commit copies the WAL into the database: with SQLite's default
of 1000 pages every batch checkpointed (two fsyncs each), and the index pages a batch touches were copied
again for every batch; 64 MiB measured 11% slower at a million than 256 MiB, 1 GiB no faster than 512."""


BULK_MMAP_BYTES = 1024 * 1024 * 1024
"""The first bytes of the database file a bulk import's connection reads through a memory map. Several
processes write an import's batches in turn, and each finds its page cache stale after another's commit:
read through the map, the pages it needs again cost no system call or copy (a million images: 17,400 →
21,200 a second on two cores, the processes' resident memory 511 MiB)."""


@contextmanager
def bulk_writes(engine: Engine) -> Iterator[Connection]:
    """A connection a bulk import writes through, held for the whole import. On SQLite it gets a large
    page cache, a memory map of the file and a WAL checkpointed less often, all given back to SQLite's
    defaults before the connection returns to the pool (a pooled connection of the app keeps none)."""
    with engine.connect() as conn:
        sqlite = engine.dialect.name == "sqlite"
        if sqlite:
            page = conn.exec_driver_sql("PRAGMA page_size").scalar_one()
            conn.exec_driver_sql(f"PRAGMA cache_size = -{BULK_CACHE_KIB}")
            conn.exec_driver_sql(f"PRAGMA wal_autocheckpoint = {BULK_CHECKPOINT_BYTES // page}")
            conn.exec_driver_sql(f"PRAGMA mmap_size = {BULK_MMAP_BYTES}")
        conn.commit()  # the import's sessions begin (and commit) their own transactions on it
        try:
            yield conn
        finally:
            if conn.in_transaction():
                conn.rollback()
            if sqlite:
                conn.exec_driver_sql("PRAGMA cache_size = -2000")  # SQLite's defaults
                conn.exec_driver_sql("PRAGMA wal_autocheckpoint = 1000")
                conn.exec_driver_sql("PRAGMA mmap_size = 0")
                conn.commit()


def upgrade_to_head(url: str) -> None:
    """Bring the database at `url` to the newest schema with Alembic."""
    from alembic import command

    _ensure_sqlite_folder(url)
    command.upgrade(alembic_config(url), "head")


def alembic_config(url: str):
    from alembic.config import Config

    here = Path(__file__).parent
    cfg = Config()
    cfg.set_main_option("script_location", str(here / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def init_store(url: str) -> Engine:
    """Migrate the database to head and return an engine for it."""
    upgrade_to_head(url)
    return make_engine(url)
