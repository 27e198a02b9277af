"""CLI command `python -m pipeline stats`: the reviewer statistics of the Stats page, as JSON.
Registered in pipeline/cli/__init__.py."""
from __future__ import annotations

import json

import typer

from db.engine import session_scope
from pipeline.cli.store import open_store
from pipeline.reviewer_stats import reviewer_stats
from pipeline.settings import Settings


def stats(
    per_day: bool = typer.Option(True, help="Include the per reviewer and day rows."),
) -> None:
    """Print per reviewer (and per day) decisions, pace, shares, edit size and agreement as JSON."""
    settings = Settings()
    engine = open_store(settings)
    try:
        with session_scope(engine) as s:
            out = reviewer_stats(s).as_dict()
    finally:
        engine.dispose()
    if not per_day:
        out.pop("per_day")
    typer.echo(json.dumps(out, indent=2, ensure_ascii=False))
