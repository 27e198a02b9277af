"""Is the store intact? SQLite's own integrity check (`PRAGMA quick_check`) and online backups
(`sqlite3.Connection.backup`), so a damaged file is reported instead of half-working, and a good
copy can be taken while the studio runs. A server database (PostgreSQL) is checked with one query.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

MAX_PROBLEMS = 10  # integrity-check lines to report


@dataclass(frozen=True)
class StoreHealth:
    """The outcome of a check: `problem` is None when the store is intact."""

    url: str
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL (None for other databases and in-memory SQLite)."""
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[-1]
    return Path(path) if path and path != ":memory:" else None


def _quick_check(path: Path) -> str | None:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            rows = [r[0] for r in conn.execute(f"PRAGMA quick_check({MAX_PROBLEMS})").fetchall()]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
        return f"SQLite cannot read {path}: {exc}"
    if rows == ["ok"]:
        return None
    return f"SQLite's integrity check failed on {path}:\n" + "\n".join(rows)


def check_store(url: str) -> StoreHealth:
    """Run SQLite's integrity check on the store at `url` (PostgreSQL: a `SELECT 1`).

    A SQLite file that does not exist yet is fine: the studio creates it.
    """
    path = sqlite_path(url)
    if path is not None:
        return StoreHealth(url, _quick_check(path) if path.is_file() else None)
    if url.startswith("sqlite"):
        return StoreHealth(url)
    engine = create_engine(url, pool_pre_ping=True)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return StoreHealth(url, f"the database server does not answer: {exc.__class__.__name__}: {exc}")
    finally:
        engine.dispose()
    return StoreHealth(url)


class BackupError(RuntimeError):
    """A backup was refused or failed; the message says why."""


def backup_store(url: str, to: Path) -> Path:
    """Copy the SQLite store at `url` into the file `to` with SQLite's online backup API (safe while
    the studio writes), then check the copy; refuses a damaged source and an existing target."""
    path = sqlite_path(url)
    if path is None:
        raise BackupError("db backup copies a SQLite store; for PostgreSQL use pg_dump (or db copy).")
    if not path.is_file():
        raise BackupError(f"There is no store at {path}.")
    if problem := _quick_check(path):
        raise BackupError(f"Not backing up a damaged store. {problem}")
    to = Path(to)
    if to.exists():
        raise BackupError(f"{to} already exists: give a new file name.")
    to.parent.mkdir(parents=True, exist_ok=True)
    src, dst = sqlite3.connect(str(path), timeout=30), sqlite3.connect(str(to))
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    if problem := _quick_check(to):
        to.unlink(missing_ok=True)
        raise BackupError(f"The backup failed its own check: {problem}")
    return to


def default_backup_path(backups_dir: Path) -> Path:
    return Path(backups_dir) / f"studio-{datetime.now(UTC):%Y%m%d-%H%M%S}.db"


def last_good_backup(backups_dir: Path) -> Path | None:
    """The newest `*.db` under `backups_dir` that passes the integrity check."""
    folder = Path(backups_dir)
    if not folder.is_dir():
        return None
    for f in sorted(folder.glob("*.db"), key=lambda p: p.stat().st_mtime, reverse=True):
        if _quick_check(f) is None:
            return f
    return None
