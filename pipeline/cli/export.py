"""CLI command `export`: write the approved pairs as a new immutable snapshot.

Run: `python -m pipeline export [--override-balance] [--val-fraction 0.2] [--seed 0]`.
"""
from __future__ import annotations

import json

import typer

from db.engine import init_store
from pipeline.data.export import BalanceError, ExportError, export_snapshot
from pipeline.jobs import JobReporter
from pipeline.services.auth import local_actor
from pipeline.settings import Settings


def export(
    override_balance: bool = typer.Option(
        False, "--override-balance", help="Export even if some class is below the per-class target."
    ),
    val_fraction: float = typer.Option(0.2, help="Share of each class held out for validation."),
    seed: int = typer.Option(0, help="Seed of the stratified train/validation split."),
    include_weak_drafts: bool = typer.Option(
        False, "--include-weak-drafts",
        help="Also add the pending (unreviewed) teacher drafts as a separate, clearly marked `weak` split.",
    ),
    job_id: int | None = typer.Option(None, help="Job row to report progress into (set by the app)."),
) -> None:
    """Export every approved caption as a new snapshot under <data_dir>/exports (recorded as exported by
    the OS user: whoever runs commands against the store acts as its admin)."""
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = init_store(settings.resolved_database_url)
    try:
        with JobReporter(settings, job_id) as job:
            def progress(done: int, total: int, message: str) -> None:
                job.progress(done, total, message, force=True)

            result = export_snapshot(
                settings, engine, override_balance=override_balance, val_fraction=val_fraction,
                seed=seed, exported_by=local_actor().name, include_weak=include_weak_drafts, progress=progress,
            )
            job.result = {
                "snapshot_id": result.snapshot_id, "path": str(result.path),
                "content_hash": result.content_hash, "n_items": result.n_items, "n_weak": result.n_weak,
            }
    except (BalanceError, ExportError) as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    finally:
        engine.dispose()
    typer.echo(json.dumps(job.result))
