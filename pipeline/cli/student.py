"""Typer commands `train` and `evaluate` (registered by pipeline/cli/__init__.py as `python -m pipeline ...`).

The config is the CLI: `python -m pipeline train --snapshot DIR --config train.json [--lr-lora 1e-3 ...]`
reads StudentConfig/TrainConfig fields from JSON (a student folder's student.json and train.json
work as they are), then the field options given; each option's help is its field's documentation.
Standalone for tests and debugging: `python -m pipeline.cli.student train --help`.
"""
from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from pipeline.cli.options import config_options, read_config_files, split_fields
from pipeline.cli.snapshots import registered_hash
from pipeline.jobs import JobCancelled, JobReporter
from pipeline.student.config import GenerationConfig, StudentConfig, TrainConfig


def train_configs(config_files: list[Path] | None, overrides: dict[str, Any], *,
                  base_model: str) -> tuple[StudentConfig, TrainConfig]:
    """Field defaults < `--config` files (in order) < options given; `base_model` when none says one.

    Raises ValueError (one line) for unknown fields and contradictory or out-of-range values."""
    values = {**read_config_files(config_files), **overrides}
    student, train = split_fields(values, StudentConfig, TrainConfig)
    student.setdefault("base_model", str(base_model))
    return StudentConfig.from_dict(student), TrainConfig.from_dict(train)


def _refuse(exc: Exception | str) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2)


@config_options(StudentConfig, TrainConfig, panel="{name} fields (override --config)")
def train_command(
    snapshot: Path = typer.Option(..., help="Export snapshot folder to train on (never the live store)."),
    config: list[Path] | None = typer.Option(
        None, metavar="FILE", help="JSON file of StudentConfig/TrainConfig fields (e.g. a student folder's "
        "student.json and train.json); repeatable, later files win, the field options below win over all."),
    out: Path | None = typer.Option(
        None, help="Student folder; rerun with the same folder to resume. "
        "Default: <students_dir>/student-<snapshot>-<time>."),
    device: str | None = typer.Option(None, help="cpu, cuda or auto; default from settings."),
    job_id: int | None = typer.Option(None, help="Job row to report progress to (set by the app)."),
    overrides: dict | None = None,
    nproc: int = typer.Option(1, min=1, help="Data-parallel processes here (torchrun; gloo on CPU, nccl on GPU)."),
) -> None:
    """Train a student (QLoRA + patch projector) on an export snapshot; resumes if interrupted."""
    from pipeline.data.snapshot import read_snapshot
    from pipeline.settings import Settings
    from pipeline.student.train import train

    settings = Settings()
    if not (snapshot / "manifest.json").is_file():
        raise _refuse(f"--snapshot {snapshot} is not a snapshot (no manifest.json): export one with "
                      f"`python -m pipeline export` and pass its folder under {settings.exports_dir}")
    try:
        sc, tc = train_configs(config, overrides or {}, base_model=settings.student_base_model)
    except ValueError as exc:
        raise _refuse(exc) from exc
    if out is None:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        out = settings.students_dir / f"student-{read_snapshot(snapshot).snapshot_id}-{stamp}"
    if nproc > 1:  # re-run this command under torchrun; rank 0 reports to the job row
        import sys

        from pipeline.student.distributed import launch

        raise typer.Exit(launch(sys.argv[1:], nproc=nproc, out=out))
    from pipeline.student.distributed import ranks_from_env

    main = ranks_from_env().is_main  # under torchrun: only rank 0 talks to the job row and prints
    with JobReporter(settings, job_id if main else None) as job:
        def report(step: int, total: int, row: dict) -> None:
            loss = row.get("train_loss")
            job.progress(step, total, f"step {step}/{total}" + (f" · loss {loss:.3f}" if loss is not None else ""),
                         raise_on_cancel=False)  # train() polls should_stop and checkpoints first

        metrics = train(snapshot_dir=snapshot, out_dir=out, student_config=sc, train_config=tc,
                        device=device or settings.resolved_device(), on_progress=report,
                        should_stop=job.should_stop, expected_hash=registered_hash(settings, snapshot))
        job.result = {"student": str(out), "status": metrics.get("status")}
        if metrics.get("status") == "stopped" and main:
            raise JobCancelled(f"training stopped at step {metrics.get('optimizer_steps')}; resume with --out {out}")
    if not main:
        return
    typer.echo(json.dumps({"student": str(out), **{k: metrics.get(k) for k in
                           ("status", "optimizer_steps", "total_steps", "final_val_loss")}}))


@config_options(GenerationConfig, exclude=("seed",))
def evaluate_command(
    student: Path = typer.Option(..., help="Trained student folder."),
    snapshot: Path | None = typer.Option(None, help="Snapshot folder whose split to evaluate on."),
    images: Path | None = typer.Option(
        None, help="Labelled image folder (metadata.jsonl or one sub-folder per class)."),
    split: str = typer.Option("validation", help="Snapshot split: validation or train."),
    name: str | None = typer.Option(None, help="Name of the evaluation folder under <student>/evaluations/."),
    inference_path: str = typer.Option(
        "auto", help="Inference path: auto (chosen from the CPU and memory), nf4 (4-bit base as trained; fastest "
        "with AVX512-BF16), bf16 or fp32 (dequantised, LoRA merged; the AVX2 paths)."),
    seed: int = typer.Option(0, help="Seed for shuffling and sampling."),
    limit: int = typer.Option(0, help="Evaluate only the first N items (0: all)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    job_id: int | None = typer.Option(None, help="Job row to report progress to (set by the app)."),
    overrides: dict | None = None,
) -> None:
    """Score a student against approved captions, with blank- and shuffled-image controls."""
    from pipeline.settings import Settings
    from pipeline.student.evaluate import evaluate, evaluation_dir, items_from_folder, items_from_snapshot
    from pipeline.student.loader import load_student

    if (snapshot is None) == (images is None):
        raise typer.BadParameter("give exactly one of --snapshot or --images")
    try:
        gen = GenerationConfig(**(overrides or {}), seed=seed)
    except ValueError as exc:
        raise _refuse(exc) from exc
    items = (items_from_snapshot(snapshot, split=split, expected_hash=registered_hash(Settings(), snapshot))
             if snapshot else items_from_folder(images))
    items = items[:limit] if limit else items
    with JobReporter(Settings(), job_id) as job:
        model = load_student(student, path=inference_path, device=device, cpu_path=Settings().cpu_path)
        out_dir = evaluation_dir(student, name)
        result = evaluate(student=model, items=items, out_dir=out_dir, generation=gen, seed=seed,
                          source=f"{snapshot}:{split}" if snapshot else str(images),
                          on_progress=lambda done, total, info: job.progress(
                              done, total, f"{info.get('condition', '')} images"))
        job.result = {"evaluation": str(out_dir)}
    summary = {c: round(m["class_mention"]["accuracy"], 4) for c, m in result["conditions"].items()}
    typer.echo(json.dumps({"evaluation": str(out_dir), "class_mention": summary}))


def build_app() -> typer.Typer:
    from pipeline.cli.errors import FriendlyGroup

    app = typer.Typer(add_completion=False, no_args_is_help=True, cls=FriendlyGroup)
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
    return app


if __name__ == "__main__":
    build_app()()
