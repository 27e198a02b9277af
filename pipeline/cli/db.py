"""CLI commands for the store's database: `python -m pipeline db copy --to URL`.

Registered in pipeline/cli/__init__.py as the `db` group.
"""
from __future__ import annotations

from pathlib import Path

import typer
from sqlalchemy.engine import make_url

from db.copy import NotEmptyError, copy_store
from pipeline.settings import Settings

db_app = typer.Typer(help="The store's database: copy it to another server.", no_args_is_help=True)


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
