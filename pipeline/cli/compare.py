"""CLI command `compare`: caption a snapshot split with a student and score it.

Run: `python -m pipeline compare --student data/students/<name> --snapshot <snapshot id or folder>`.
"""
from __future__ import annotations

import json
from pathlib import Path

import typer

from db.engine import init_store
from pipeline.cli.snapshots import registered_hash
from pipeline.generation import GenerationConfig
from pipeline.jobs import JobReporter
from pipeline.settings import Settings


def compare(
    student: Path = typer.Option(..., help="Trained student folder."),
    snapshot: str = typer.Option(..., help="Snapshot id (under the exports folder) or snapshot folder."),
    split: str = typer.Option("validation", help="Which split to caption: train or validation."),
    max_new_tokens: int = typer.Option(40, help="Longest caption, in tokens."),
    batch_size: int = typer.Option(8, help="Images per generation batch."),
    job_id: int | None = typer.Option(None, help="Job row to report progress into (set by the app)."),
) -> None:
    """Caption a snapshot split with a student and score it against the approved captions."""
    # here, not at the top: pandas and torch would add ~0.7 s to every command's start (an import's too)
    from pipeline.student.compare import read_results, run_compare, snapshot_folder

    settings = Settings()
    init_store(settings.resolved_database_url).dispose()
    with JobReporter(settings, job_id) as job:
        out = run_compare(settings, student_dir=student, snapshot=snapshot, split=split,
                          config=GenerationConfig(max_new_tokens=max_new_tokens), batch_size=batch_size,
                          progress=lambda done, total: job.progress(done, total, "captioning", force=True),
                          expected_hash=registered_hash(settings, snapshot_folder(settings, snapshot)))
        df = read_results(out)
        job.result = {"path": str(out), "n_items": len(df), "mean_bleu": round(float(df.bleu.mean()), 2),
                      "mean_rouge_l": round(float(df.rouge_l.mean()), 4),
                      "exact_match": round(float(df.exact.mean()), 4)}
    typer.echo(json.dumps(job.result))
