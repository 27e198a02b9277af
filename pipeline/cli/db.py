"""CLI commands for the store's database: `python -m pipeline db copy --to URL`, `db check` (SQLite's
integrity check; exit 1 when damaged) and `db backup [--to FILE]` (SQLite's online backup API).

Registered in pipeline/cli/__init__.py as the `db` group.
"""
from __future__ import annotations

from pathlib import Path

import typer
from sqlalchemy.engine import make_url

from db.copy import NotEmptyError, copy_store
from db.health import BackupError, backup_store, default_backup_path
from pipeline.settings import Settings

db_app = typer.Typer(help="The store's database: check it, back it up, copy it to another server.",
                     no_args_is_help=True)


@db_app.command("check")
def check() -> None:
    """Run SQLite's integrity check on the store (PostgreSQL: connect and query); exit 1 when it is damaged."""
    from pipeline.services.health import store_damage

    settings = Settings()
    damage = store_damage(settings)
    if damage is None:
        typer.echo(f"ok: {settings.display_database_url} passed the integrity check")
        return
    typer.echo(f"The store is damaged: {damage.problem}", err=True)
    typer.echo("What to do:", err=True)
    for n, step in enumerate(damage.steps, start=1):
        typer.echo(f"  {n}. {step}", err=True)
    raise typer.Exit(1)


@db_app.command("backup")
def backup(
    to: Path | None = typer.Option(None, "--to", help="File to write; default: "
                                   "<data_dir>/backups/studio-<UTC time>.db"),
) -> None:
    """Back up the SQLite store with SQLite's online backup API (safe while the studio runs); the copy
    is checked. The damage page offers the newest good file under <data_dir>/backups."""
    settings = Settings()
    target = to or default_backup_path(settings.backups_dir)
    try:
        written = backup_store(settings.resolved_database_url, target)
    except BackupError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from err
    typer.echo(f"backed up {settings.display_database_url} to {written} ({written.stat().st_size} bytes, checked)")


@db_app.command("copy")
def copy(
    to: str = typer.Option(..., "--to", help="SQLAlchemy URL of an EMPTY database, e.g. "
                           "postgresql+psycopg://user:password@host:5432/capstudio"),
    source: str | None = typer.Option(None, "--from", help="URL of the store to copy; default: the configured "
                                      "store (CAPSTUDIO_DATABASE_URL, else <data_dir>/studio.db)."),
) -> None:
    """Copy every table of the store (images, drafts, reviews, events, jobs, snapshots, students, ...)
    into an empty database, checking each table's row count. Then point the studio at it with
    CAPSTUDIO_DATABASE_URL."""
    settings = Settings()
    src = source or settings.resolved_database_url
    if src.startswith("sqlite") and not Path(src.split("///", 1)[-1]).is_file():
        typer.echo(f"No store at {src}.", err=True)
        raise typer.Exit(2)
    if src == to:
        typer.echo("--to is the store itself; give another database.", err=True)
        raise typer.Exit(2)
    try:
        counts = copy_store(src, to)
    except NotEmptyError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from err
    width = max(len(c.table) for c in counts)
    for c in counts:
        typer.echo(f"{c.table:<{width}}  {c.source:>8} rows in the source  {c.copied:>8} copied  ok")
    safe = make_url(to).render_as_string(hide_password=True)
    typer.echo(f"copied {sum(c.copied for c in counts)} rows in {len(counts)} tables to {safe}")
