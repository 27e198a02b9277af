"""CLI commands for filling the store: build-tiny, import, caption, status.

Run `python -m pipeline import --help` (and so on); registered in pipeline/cli/__init__.py.
"""
from __future__ import annotations

import enum
from pathlib import Path

import typer
from sqlalchemy import func
from sqlmodel import select
from tqdm import tqdm

from db.engine import init_store, session_scope
from db.models import Draft, Image, ReviewState
from db.tally import counts_by_class
from pipeline.data.sources import BATCH, ImportSource, SourceError, Split, import_images
from pipeline.settings import Settings


def open_store(settings: Settings):
    """Migrate and open the store (creating the data folder on a first run)."""
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    return init_store(settings.resolved_database_url)


class CaptionEngine(str, enum.Enum):
    """Where the teacher runs."""

    local = "local"
    ray = "ray"


class TinyKind(str, enum.Enum):
    """Which tiny random model to build."""

    teacher = "teacher"
    student = "student"


def build_tiny(
    kind: TinyKind = typer.Argument(..., help="teacher: Idefics3 (SmolVLM architecture); student: Phi3."),
    out_dir: Path = typer.Argument(..., help="Folder to write (a Hugging Face model folder)."),
    processor_dir: Path | None = typer.Option(
        None, help="Real tokenizer/processor files to copy (default: ../shared/models or tests/assets)."),
    train_tokenizer: bool = typer.Option(
        False, help="Teacher only: train a small tokenizer here instead of using SmolVLM's files."),
    seed: int = typer.Option(0, help="Seed of the random weights."),
) -> None:
    """Build a tiny RANDOM model of the real architecture, for tests and offline use (captions are noise)."""
    from pipeline.tiny import build_tiny_student, build_tiny_teacher, find_smolvlm_processor_dir

    if kind == TinyKind.teacher:
        src = None if train_tokenizer else (processor_dir or find_smolvlm_processor_dir())
        out = build_tiny_teacher(out_dir, processor_dir=src, seed=seed)
    else:
        out = build_tiny_student(out_dir, tokenizer_dir=processor_dir, seed=seed)
    typer.echo(f"wrote a tiny random test {kind.value} model to {out}")
    if kind == TinyKind.teacher:
        typer.echo(f"use it with: python -m pipeline caption --teacher-model {out}")


def import_(
    source: ImportSource = typer.Option(
        ImportSource.bundled, help="bundled (200 shipped CIFAR-10 examples), folder, or cifar10."),
    n_per_class: int = typer.Option(10, min=1, help="Images per class (a balanced sample)."),
    all_images: bool = typer.Option(
        False, "--all", help="Import every image of the source in path order (ignores --n-per-class)."),
    seed: int = typer.Option(0, help="Sampling seed: the same seed picks the same images."),
    split: Split = typer.Option(Split.test, help="CIFAR-10 split."),
    path: Path | None = typer.Option(None, help="folder source: a folder with one sub-folder per class."),
    cifar_root: Path | None = typer.Option(
        None, help="cifar10 source: folder holding cifar-10-batches-py (default: <data_dir>/cifar10)."),
    download: bool = typer.Option(False, help="cifar10 source: download CIFAR-10 when missing (needs network)."),
    workers: int | None = typer.Option(
        None, min=0, help="Processes that decode and write batches (default: one per core from 2,000 images)."),
    batch_size: int = typer.Option(
        BATCH, min=1, help="Images written per transaction (a killed import loses at most one batch per process)."),
) -> None:
    """Import images (a balanced, seeded sample, or --all); re-running adds nothing and a killed
    import resumes where it stopped; unreadable files are counted."""
    settings = Settings()
    if source == ImportSource.cifar10:
        path = cifar_root or Path(settings.data_dir) / "cifar10"
    engine = open_store(settings)
    tqdm.monitor_interval = 0  # no monitor thread: a single-threaded process forks its writers directly
    try:
        with tqdm(total=None, desc="importing", unit="img", smoothing=0.1) as bar:
            def tick(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)
            summary = import_images(engine, source=source, n_per_class=None if all_images else n_per_class,
                                    seed=seed, split=split, path=path, download=download, on_progress=tick,
                                    workers=workers, batch_size=batch_size)
    except SourceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except KeyboardInterrupt:
        typer.echo("import stopped (Ctrl-C): every batch written is whole; run the same command again to add "
                   "the rest", err=True)
        raise typer.Exit(130) from None
    finally:
        engine.dispose()
    typer.echo(f"added {summary.added}, already present {summary.existing}, "
               f"unreadable files skipped {summary.corrupt}")
    for label, n in summary.per_class.items():
        typer.echo(f"  {label:<12} +{n}")
    for key in summary.corrupt_keys[:50]:
        typer.echo(f"  skipped unreadable: {key}")
    if len(summary.corrupt_keys) > 50:
        typer.echo(f"  ... and {len(summary.corrupt_keys) - 50} more unreadable files")


def caption(
    teacher_model: str | None = typer.Option(
        None, help="Hub id or local folder of the SmolVLM teacher (default: CAPSTUDIO_TEACHER_MODEL)."),
    prompt: str | None = typer.Option(None, help="Captioning instruction (default: the built-in prompt)."),
    batch_size: int | None = typer.Option(None, min=1, help="Images per batch (default: CAPSTUDIO_BATCH_SIZE)."),
    limit: int | None = typer.Option(None, min=0, help="Caption at most this many images."),
    image_id: list[int] | None = typer.Option(None, help="Only these image ids (repeatable)."),
    per_prompt: bool = typer.Option(
        False, help="Caption images lacking a draft for THIS prompt and model (re-draft with a new prompt)."),
    device: str | None = typer.Option(None, help="auto, cpu or cuda (default: CAPSTUDIO_DEVICE)."),
    dtype: str = typer.Option("auto", help="auto (bf16 where the hardware has it), float32, bfloat16, float16."),
    max_new_tokens: int = typer.Option(60, min=1, help="Longest caption, in tokens."),
    do_sample: bool = typer.Option(False, help="Sample instead of greedy decoding."),
    temperature: float = typer.Option(1.0, help="Sampling temperature (with --do-sample)."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass (with --do-sample)."),
    repetition_penalty: float = typer.Option(1.1, help=">1 discourages loops."),
    seed: int = typer.Option(0, help="Random seed for sampling."),
    threads: int | None = typer.Option(
        None, min=1, help="CPU threads for torch (default: one per core; 1 is faster for tiny models)."),
    engine: CaptionEngine = typer.Option(
        CaptionEngine.local, help="local: this process; ray: a pool of teacher workers on Ray Data."),
    ray_address: str | None = typer.Option(
        None, help="--engine ray: cluster to join (auto, or HEAD:6379 after `ray start --address`); default: local."),
    workers: int = typer.Option(2, min=1, help="--engine ray: teacher workers (each loads the teacher once)."),
    gpus_per_worker: float = typer.Option(0.0, min=0, help="--engine ray: GPUs per worker (0: CPU workers)."),
    job_id: int | None = typer.Option(None, help="Job row to report progress to (set by the app)."),
) -> None:
    """Draft captions with the teacher for images that have none; resumable after any crash."""
    from pipeline.generation import GenerationConfig
    from pipeline.teacher.drafting import CaptionRequest, job_plan
    from pipeline.teacher.model import DEFAULT_PROMPT, TeacherError

    settings = Settings()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    try:
        plan = job_plan(settings, device=device, dtype=dtype, batch_size=batch_size)
        params = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                                  top_p=top_p, repetition_penalty=repetition_penalty, seed=seed)
        request = CaptionRequest(prompt=prompt or DEFAULT_PROMPT, params=params,
                                 batch_size=plan.batch_size, limit=limit,
                                 image_ids=tuple(image_id) if image_id else None,
                                 per_prompt=per_prompt or bool(prompt and image_id))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    ray_options = None
    if engine == CaptionEngine.ray:
        from pipeline.teacher.ray_engine import RayOptions

        ray_options = RayOptions(address=ray_address, workers=workers, gpus_per_worker=gpus_per_worker,
                                 cpus_per_worker=threads or 1)
    try:
        summary = _run_caption_job(settings, request, model=teacher_model or settings.teacher_model,
                                   device=device or settings.device, dtype=dtype, job_id=job_id,
                                   ray_options=ray_options)
    except (TeacherError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if summary is None:
        typer.echo("cancelled; the drafts written so far are kept")
        return
    typer.echo(f"wrote {summary.written} drafts for {summary.total} images "
               f"in {summary.seconds:.1f}s ({summary.images_per_s:.2f} images/s)")


def _run_caption_job(settings: Settings, request, *, model: str, device: str, dtype: str,
                     job_id: int | None, ray_options=None):
    """Load the teacher and caption, with a tqdm bar here and progress in the job row.

    Returns the CaptionSummary, or None when the job was cancelled (finished batches are kept)."""
    from pipeline.jobs import JobReporter
    from pipeline.teacher.drafting import run_captioning
    from pipeline.teacher.model import load_teacher, prepare_long_run

    engine, summary = open_store(settings), None
    try:
        with JobReporter(settings, job_id) as reporter:  # swallows a cancel: summary stays None
            if ray_options is not None:
                summary = _run_on_ray(engine, request, reporter, model=model, device=device, dtype=dtype,
                                      options=ray_options)
                return summary
            teacher = prepare_long_run(load_teacher(model, device=device, dtype=dtype))  # a process of its own
            note = " (tiny random test model: captions are noise)" if teacher.tiny else ""
            typer.echo(f"teacher {model} on {teacher.device} in {teacher.dtype}{note}")
            with tqdm(desc="captioning", unit="img") as bar:
                def tick(done: int, total: int) -> None:
                    bar.total = total
                    bar.update(done - bar.n)
                    reporter.progress(done, total, f"captioned {done}/{total}{note}")
                summary = run_captioning(engine, teacher, request, on_progress=tick)
            reporter.result = summary.as_dict()
            reporter.progress(summary.total, summary.total, f"done: {summary.written} drafts", force=True)
    finally:
        engine.dispose()
    return summary


def _run_on_ray(engine, request, reporter, *, model: str, device: str, dtype: str, options):
    """The Ray engine with the same tqdm bar and job-row progress; a cancel stops the Ray work."""
    from pipeline.jobs import JobCancelled
    from pipeline.teacher.ray_engine import run_captioning_ray

    where = options.address or "a local Ray"
    typer.echo(f"teacher {model} on {options.workers} Ray workers ({where}, {options.gpus_per_worker} GPU each)")
    with tqdm(desc="captioning (ray)", unit="img") as bar:
        def tick(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)
            reporter.progress(done, total, f"captioned {done}/{total} on Ray", raise_on_cancel=False)
        summary = run_captioning_ray(engine, request, model=model, device=device, dtype=dtype,
                                     options=options, on_progress=tick, should_stop=reporter.should_stop)
    if reporter.should_stop():
        raise JobCancelled(f"cancelled after {summary.written} drafts")
    reporter.result = summary.as_dict()
    reporter.progress(summary.total, summary.total, f"done: {summary.written} drafts", force=True)
    return summary


def drafted_counts(session) -> dict[str, int]:
    """{label: images with at least one draft}."""
    drafted = select(Draft.image_id).distinct().subquery()
    rows = session.exec(select(Image.label, func.count()).join(drafted, drafted.c.image_id == Image.id)
                        .group_by(Image.label)).all()
    return dict(rows)


def status() -> None:
    """Print images per class and review state, and how many have a teacher draft."""
    settings = Settings()
    engine = open_store(settings)
    with session_scope(engine) as s:
        counts, drafted = counts_by_class(s), drafted_counts(s)
    engine.dispose()
    states = [st.value for st in ReviewState]
    header = f"{'class':<12}" + "".join(f"{h:>10}" for h in [*states, "drafted", "total"])
    typer.echo(header)
    totals = [0] * (len(states) + 2)
    for label, by_state in counts.items():
        row = [by_state.get(st, 0) for st in states]
        row += [drafted.get(label, 0), sum(row)]
        totals = [a + b for a, b in zip(totals, row)]
        typer.echo(f"{label:<12}" + "".join(f"{n:>10}" for n in row))
    typer.echo(f"{'all':<12}" + "".join(f"{n:>10}" for n in totals))


def init(
    n_per_class: int = typer.Option(10, min=0, help="Bundled examples per class to import into an empty store."),
) -> None:
    """Create (or migrate) the store; an empty store gets the bundled CIFAR-10 examples to review."""
    settings = Settings()
    engine = open_store(settings)
    try:
        with session_scope(engine) as s:
            n_images = s.exec(select(func.count()).select_from(Image)).one()
        if n_images == 0 and n_per_class > 0:
            summary = import_images(engine, source=ImportSource.bundled, n_per_class=n_per_class)
            typer.echo(f"store created at {settings.display_database_url}; "
                       f"imported {summary.added} bundled CIFAR-10 examples")
        else:
            typer.echo(f"store ready at {settings.display_database_url} ({n_images} images)")
    finally:
        engine.dispose()
    typer.echo("next: draft captions from the app's Jobs page, or `python -m pipeline caption`")
