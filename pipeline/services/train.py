"""Training from the app: start, cancel and resume a `python -m pipeline train` job, read its
loss curve and evaluation report, and register finished students (lineage) in the store.

A student folder is data/students/<name>. The form's configs are written into it as student.json
and train.json, and the job is `python -m pipeline train --config <folder>/student.json --config
<folder>/train.json`; resuming relaunches that command on the same folder, and training picks up
from its latest checkpoint.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd
from sqlalchemy.engine import Engine

from db.engine import session_scope
from db.errors import StoreError
from db.jobs import active_jobs, get_job, list_jobs, request_cancel
from db.lineage import get_snapshot_row
from db.models import Job, JobKind, JobStatus
from pipeline.identity import Actor, Role, require
from pipeline.jobs import reap_dead_jobs, start_job
from pipeline.services.lineage import read_json, read_report, sync_students
from pipeline.settings import Settings
from pipeline.student.config import StudentConfig, TrainConfig
from pipeline.student.metrics import BLEU_LABEL as BLEU_LABEL  # the ablation table's bleu column

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
EVAL_NAME = "app"  # the evaluation the app starts: <student>/evaluations/app/
ACTIVE = (JobStatus.queued, JobStatus.running)


@dataclass(frozen=True)
class TrainStart:
    ok: bool
    message: str
    job_id: int | None = None


@dataclass(frozen=True)
class TrainView:
    """One training run as the train page shows it (plain data)."""

    job_id: int
    status: JobStatus
    done: int
    total: int
    message: str | None
    error: str | None
    student_dir: str
    snapshot_id: str
    snapshot_path: str
    curve: pd.DataFrame  # step, train_loss, val_loss
    metrics: dict = field(default_factory=dict)  # metrics.json (when training finished)
    report: dict = field(default_factory=dict)  # the evaluation report (when written)
    superseded: bool = False  # a later job trains the same folder (it was resumed)
    evaluation: tuple | None = None  # (JobStatus, error) of its latest evaluation job

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def resumable(self) -> bool:
        """Stopped before the end, and no later run took over its folder."""
        return (self.status in (JobStatus.cancelled, JobStatus.failed, JobStatus.interrupted) and not self.metrics
                and not self.superseded)


def default_configs(settings: Settings) -> tuple[StudentConfig, TrainConfig]:
    """The form's defaults: the configured base model, the standard hyperparameters."""
    return StudentConfig(base_model=str(settings.student_base_model)), TrainConfig()


CONFIG_FILES = ("student.json", "train.json")  # what the student folder keeps; the job reads them


def train_argv(*, snapshot_dir: Path, out_dir: Path) -> list[str]:
    """`python -m pipeline train` arguments: the folder's config files are the whole configuration."""
    argv = ["train", "--snapshot", str(snapshot_dir), "--out", str(out_dir)]
    for name in CONFIG_FILES:
        argv += ["--config", str(Path(out_dir) / name)]
    return argv


def write_configs(out_dir: Path, *, student: StudentConfig, train: TrainConfig) -> None:
    """Write student.json and train.json into the (new) student folder, as training keeps them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    student.to_json(out_dir / "student.json")
    train.to_json(out_dir / "train.json")


def start_training(settings: Settings, engine: Engine, *, actor: Actor, snapshot_id: str, name: str,
                   student: StudentConfig, train: TrainConfig) -> TrainStart:
    """Launch a train job on a registered snapshot into a new student folder."""
    require(actor, Role.curator, "train a student")
    if not NAME_RE.match(name or ""):
        return TrainStart(False, "Name the student with letters, digits, '.', '_' or '-' (up to 64).")
    with session_scope(engine) as s:
        row = get_snapshot_row(s, snapshot_id=snapshot_id)
        snapshot_path = row.path if row else None
    if snapshot_path is None or not (Path(snapshot_path) / "manifest.json").is_file():
        return TrainStart(False, f"Snapshot {snapshot_id} is not in the store: export one first.")
    out_dir = Path(settings.students_dir) / name
    if (out_dir / "metrics.json").is_file() or (out_dir.exists() and any(out_dir.iterdir())):
        return TrainStart(False, f"A student called {name} already exists: choose another name.")
    return _launch(settings, actor=actor, snapshot_id=snapshot_id, snapshot_path=Path(snapshot_path),
                   out_dir=out_dir, student=student, train=train)


def _launch(settings: Settings, *, actor: Actor, snapshot_id: str, snapshot_path: Path, out_dir: Path,
            student: StudentConfig, train: TrainConfig, resumed_from: int | None = None) -> TrainStart:
    params = {"snapshot_id": snapshot_id, "snapshot_path": str(snapshot_path), "student_dir": str(out_dir),
              "student": asdict(student), "train": asdict(train), "resumed_from": resumed_from,
              "started_by": actor.name}
    if not all((out_dir / name).is_file() for name in CONFIG_FILES):  # a resume reuses the folder's files
        write_configs(out_dir, student=student, train=train)
    argv = train_argv(snapshot_dir=snapshot_path, out_dir=out_dir)
    job_id = start_job(settings, kind=JobKind.train, argv=argv, params=params)
    verb = "Resumed" if resumed_from else "Started"
    return TrainStart(True, f"{verb} training job {job_id}: student {out_dir.name}.", job_id)


def resume_training(settings: Settings, engine: Engine, *, actor: Actor, job_id: int) -> TrainStart:
    """Relaunch a cancelled, failed or interrupted run on its folder; training continues from its
    checkpoint."""
    require(actor, Role.curator, "resume training")
    reap_dead_jobs(engine, settings=settings)  # a killed run's row still says running until reaped
    try:
        with session_scope(engine) as s:
            job = get_job(s, job_id=job_id)
    except StoreError:
        job = None
    if job is None or job.kind != JobKind.train:
        return TrainStart(False, f"No training job {job_id}.")
    if job.status in ACTIVE:
        return TrainStart(False, f"Job {job_id} is still {job.status.value}.")
    params = dict(job.params)
    out_dir = Path(params["student_dir"])
    with session_scope(engine) as s:
        busy = [j.id for j in active_jobs(s, kind=JobKind.train) if j.params.get("student_dir") == str(out_dir)]
    if busy:
        return TrainStart(False, f"Student {out_dir.name} is already training (job {busy[0]}).")
    if (out_dir / "metrics.json").is_file():
        return TrainStart(False, f"Student {out_dir.name} already finished training.")
    return _launch(settings, actor=actor, snapshot_id=params["snapshot_id"],
                   snapshot_path=Path(params["snapshot_path"]), out_dir=out_dir,
                   student=StudentConfig.from_dict(params["student"]),
                   train=TrainConfig.from_dict(params["train"]), resumed_from=job_id)


def cancel_training(engine: Engine, *, actor: Actor, job_id: int, settings: Settings | None = None) -> str:
    require(actor, Role.curator, "cancel training")
    reap_dead_jobs(engine, settings=settings)
    with session_scope(engine) as s:
        dead = get_job(s, job_id=job_id).status == JobStatus.interrupted
        request_cancel(s, job_id=job_id)
        if dead:
            return f"Job {job_id} cancelled (its process had stopped); resume it from its last checkpoint."
    return f"Cancel requested for job {job_id}: it stops at the next step and keeps a checkpoint."


def loss_curve(student_dir: Path) -> pd.DataFrame:
    """step, train_loss, val_loss (NaN where not measured) from loss_curve.jsonl."""
    path = Path(student_dir) / "loss_curve.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
    df = pd.DataFrame(rows, columns=["step", "train_loss", "val_loss"])
    return df.astype({"step": "int64", "train_loss": "float64", "val_loss": "float64"})


def start_evaluation(settings: Settings, *, actor: Actor, student_dir: str, snapshot_path: str) -> int:
    """Evaluate a finished student on its snapshot's validation split, as a job."""
    require(actor, Role.curator, "evaluate a student")
    argv = ["evaluate", "--student", student_dir, "--snapshot", snapshot_path, "--split", "validation",
            "--name", EVAL_NAME]
    return start_job(settings, kind=JobKind.evaluate, argv=argv,
                      params={"student_dir": student_dir, "snapshot_path": snapshot_path, "started_by": actor.name})


def _evaluations(settings: Settings, engine: Engine, runs: list[TrainView], actor: Actor) -> dict[str, tuple]:
    """{student folder: (status, error)} of its latest evaluation job; a newly finished run gets
    its evaluation started here, once (the report follows the training), when `actor` may curate."""
    latest: dict[str, tuple] = {}
    with session_scope(engine) as s:
        for j in list_jobs(s, kind=JobKind.evaluate, limit=200):  # newest first
            latest.setdefault(j.params.get("student_dir"), (JobStatus(j.status), j.error))
    for run in runs:
        if (run.status == JobStatus.done and run.metrics and not run.report and run.student_dir not in latest
                and actor.can(Role.curator)):
            start_evaluation(settings, actor=actor, student_dir=run.student_dir, snapshot_path=run.snapshot_path)
            latest[run.student_dir] = (JobStatus.queued, None)
    return latest


def training_runs(settings: Settings, engine: Engine, *, actor: Actor, limit: int = 20) -> list[TrainView]:
    """The latest training jobs, newest first, each with its curve, metrics and report."""
    reap_dead_jobs(engine, settings=settings)
    sync_students(settings, engine)
    with session_scope(engine) as s:
        jobs = list_jobs(s, kind=JobKind.train, limit=limit)
        snap = [(j.id, JobStatus(j.status), j.done, j.total, j.message, j.error, dict(j.params)) for j in jobs]
    runs, seen = [], set()
    for row in snap:  # newest first: an older job on a folder already seen was resumed
        run = _view(*row, superseded=row[-1].get("student_dir") in seen)
        seen.add(run.student_dir)
        runs.append(run)
    evaluations = _evaluations(settings, engine, runs, actor)
    return [replace(r, evaluation=evaluations.get(r.student_dir)) for r in runs]


def _view(job_id, status, done, total, message, error, params, *, superseded: bool) -> TrainView:
    folder = Path(params.get("student_dir", ""))
    return TrainView(job_id=job_id, status=status, done=done, total=total, message=message, error=error,
                     superseded=superseded,
                     student_dir=str(folder), snapshot_id=params.get("snapshot_id", ""),
                     snapshot_path=params.get("snapshot_path", ""),
                     curve=loss_curve(folder), metrics=read_json(folder / "metrics.json"),
                     report=read_report(folder))


def job_row(engine: Engine, *, job_id: int) -> Job:
    with session_scope(engine) as s:
        return get_job(s, job_id=job_id)


@dataclass(frozen=True)
class TrainPage:
    snapshots: list[str]  # registered snapshot ids, newest first
    student_defaults: StudentConfig
    train_defaults: TrainConfig


def train_view(settings: Settings, engine: Engine) -> TrainPage:
    """The snapshots to train on and the form defaults (the runs come from training_runs)."""
    from db.lineage import list_snapshot_rows

    with session_scope(engine) as s:
        snapshots = [r.id for r in list_snapshot_rows(s)]
    sc, tc = default_configs(settings)
    return TrainPage(snapshots=snapshots, student_defaults=sc, train_defaults=tc)


def per_class_table(report: dict) -> pd.DataFrame:
    """Class-mention accuracy per class (rows) under each image condition (columns)."""
    conds = report.get("conditions") or {}
    return pd.DataFrame({c: m.get("class_mention", {}).get("per_class", {}) for c, m in conds.items()})


def ablation_table(report: dict) -> pd.DataFrame:
    """Scores under each condition: real images against the blank and shuffled controls (bleu: BLEU_LABEL)."""
    rows = [{"condition": c, "class_mention": m.get("class_mention", {}).get("accuracy"),
             **{k: m.get(k) for k in ("bleu", "rouge_l", "cider")}}
            for c, m in (report.get("conditions") or {}).items()]
    return pd.DataFrame(rows, columns=["condition", "class_mention", "bleu", "rouge_l", "cider"])
