"""What the CLI says when a command fails for a reason the user can fix: one line naming the setting
or path and what to do, exit code 2 (never a traceback). Anything else still raises as it did.
"""
from __future__ import annotations

import errno
import sys

import click
import typer
from typer.core import TyperGroup

from db.config import ENV_PREFIX

SETTINGS_CLASSES = {"Settings", "StoreSettings"}
EXIT_REFUSED = 2


def _settings_error(exc) -> str | None:
    if getattr(exc, "title", None) not in SETTINGS_CLASSES:
        return None
    parts = []
    for err in exc.errors():
        name = ENV_PREFIX + "_".join(str(x) for x in err.get("loc", ())).upper()
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"setting {name}={err.get('input')!r} is invalid: {msg}; fix or unset {name} "
                     "(environment or .env)")
    return "; ".join(parts)


def _write_error(exc: BaseException) -> str | None:
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        where = exc.filename or "the data folder"
        return (f"cannot write {where} ({exc.strerror}): make it writable, or set {ENV_PREFIX}DATA_DIR "
                "to a folder you can write")
    text = str(getattr(exc, "orig", "") or "")
    if type(exc).__name__ == "OperationalError" and ("readonly database" in text
                                                      or "unable to open database file" in text):
        return (f"cannot write the store {_store_url()} ({text}): make the data folder and its studio.db "
                f"writable, or set {ENV_PREFIX}DATA_DIR (or {ENV_PREFIX}DATABASE_URL) to a place you can write")
    return None


def _store_url() -> str:
    """The store's URL (password masked) as the settings give it; they were valid a moment ago."""
    from pipeline.settings import Settings

    try:
        return Settings().display_database_url
    except ValueError:
        return "(see CAPSTUDIO_DATABASE_URL)"


def explain(exc: BaseException) -> str | None:
    """One line for a failure the user can fix, or None (then the exception is a bug: raise it)."""
    known = []  # the modules are not imported here: one whose module never loaded cannot have been raised
    if (snapshot := sys.modules.get("pipeline.data.snapshot")) is not None:  # (and torch takes ~1.5 s)
        known += [snapshot.SnapshotIntegrityError, snapshot.SnapshotMissingError]
    if (checkpoint := sys.modules.get("pipeline.student.checkpoint")) is not None:
        known.append(checkpoint.UnsafeCheckpointError)
    if isinstance(exc, tuple(known)):
        return str(exc)
    if type(exc).__name__ == "ValidationError":
        return _settings_error(exc)
    return _write_error(exc)


class FriendlyGroup(TyperGroup):
    """The root command group: turns the failures `explain` knows into one line and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            line = explain(exc)
            if line is None:
                raise
            typer.echo(f"error: {line}", err=True)
            raise typer.Exit(EXIT_REFUSED) from None
