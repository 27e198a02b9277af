"""Start-up checks of the studio: is the store intact (and if not, what to do), were its files
deleted under the running studio (db/storefiles.py), and snapshot folders an interrupted export left
unregistered (registered or moved aside, see data/reconcile.py)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine

from db.health import check_store, last_good_backup, sqlite_path
from db.storefiles import StoreFilesChange, guard_store_files
from pipeline.data.reconcile import reconcile_snapshots
from pipeline.settings import Settings


@dataclass(frozen=True)
class StoreDamage:
    """A damaged store as the app's damage page shows it."""

    problem: str  # what SQLite (or the server) said
    store: str  # the store's file or URL (password masked)
    backup: Path | None  # the newest backup that passes the check
    steps: list[str]  # what to do, in order
    headline: str = "The studio's database failed its integrity check"


@dataclass(frozen=True)
class StoreFilesNotice:
    """The store's files changed under the running studio: what happened and what was done."""

    message: str  # one sentence for a warning
    damage: StoreDamage | None = None  # set when the database file itself is gone: stop and restore


def store_damage(settings: Settings) -> StoreDamage | None:
    """None when the store passes its integrity check; else what is wrong and how to recover."""
    health = check_store(settings.resolved_database_url)
    if health.ok:
        return None
    path = sqlite_path(settings.resolved_database_url)
    store = str(path) if path else settings.display_database_url
    backup = last_good_backup(settings.backups_dir)
    if path is None:
        steps = ["Check that the database server is running and CAPSTUDIO_DATABASE_URL is right.",
                 "Restart the studio."]
    else:
        restore = (f"Restore the last good backup: cp {backup} {path}" if backup else
                   f"No good backup was found under {settings.backups_dir}: salvage what SQLite can read "
                   f"with: sqlite3 {path} \".recover\" | sqlite3 recovered.db, and move recovered.db into place.")
        steps = ["Stop the studio and every running job (nothing is written while this page shows).",
                 f"Keep the damaged file for later: mv {path} {path}.damaged (and its -wal/-shm files).",
                 restore,
                 "Check it: python -m pipeline db check, then restart the studio.",
                 "From then on take backups with: python -m pipeline db backup"]
    return StoreDamage(problem=health.problem or "", store=store, backup=backup, steps=steps)


def store_files_notice(settings: Settings, engine: Engine) -> StoreFilesNotice | None:
    """Cheap, for every script run: was the store's -wal (rescued: its transactions are checkpointed
    into the database) or database file (a rescue copy is taken; the damage page) deleted or replaced?"""
    found = guard_store_files(engine)
    if found is None:
        return None
    if found.change == StoreFilesChange.wal_rescued:
        return StoreFilesNotice(found.message + " Nothing was lost; no action is needed.")
    path = sqlite_path(settings.resolved_database_url)
    if found.rescue is None:
        steps = ["Keep the studio running: it is the only one still holding the data.",
                 "Reload this page to try the rescue copy again."]
    else:
        steps = ["Stop the studio and every running job now: what they write goes to a file nobody will see.",
                 f"If a file is at {path} now, keep it aside: mv {path} {path}.replaced",
                 f"Put the rescued copy in place: cp {found.rescue} {path}",
                 "Check it: python -m pipeline db check, then restart the studio.",
                 "From then on take backups with: python -m pipeline db backup"]
    damage = StoreDamage(problem=found.message, store=str(path), backup=found.rescue, steps=steps,
                         headline="The studio's database file was deleted or replaced while the studio ran")
    return StoreFilesNotice(found.message, damage)


def startup_notes(settings: Settings, engine: Engine) -> list[str]:
    """Reconcile the exports folder with the store; one sentence per folder acted on."""
    return [r.message for r in reconcile_snapshots(settings.exports_dir, engine)]
