"""Service behind the Jobs page: import and caption as a background job, the job table, cancel."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sqlalchemy.engine import Engine

from db.engine import session_scope
from db.errors import StoreError
from db.jobs import ACTIVE, get_job, list_jobs, request_cancel
from db.models import JobKind, JobStatus
from pipeline.data.sources import ImportSource, SourceError, import_images
from pipeline.identity import Actor, Role, require
from pipeline.jobs import reap_dead_jobs, start_job
from pipeline.settings import Settings


@dataclass(frozen=True)
class JobStart:
    ok: bool
    message: str
    job_id: int | None = None


def start_caption_job(settings: Settings, engine: Engine, *, actor: Actor, source: str, n_per_class: int,
                      path: str | None = None, limit: int | None = None) -> JobStart:
    """Import up to `n_per_class` images per class, then caption every undrafted one as a job."""
    require(actor, Role.curator, "import images and start captioning jobs")
    folder = None
    if path:
        folder = inside_import_root(settings, path)
        if folder is None:
            return JobStart(ok=False, message=(
                f"Import refused: {path} is not inside the import folder {settings.import_root.resolve()}. "
                "Copy the images there (one sub-folder per class) and give that folder's path "
                "(or its name relative to the import folder)."))
    try:
        summary = import_images(engine, source=ImportSource(source), n_per_class=n_per_class, path=folder)
    except (SourceError, ValueError, OSError) as err:
        return JobStart(ok=False, message=f"Import failed: {err}")
    argv = ["caption"] + (["--limit", str(limit)] if limit else [])
    params = {"source": source, "n_per_class": n_per_class, "path": path, "limit": limit,
              "imported": summary.added, "started_by": actor.name}
    job_id = start_job(settings, kind=JobKind.caption, argv=argv, params=params)
    return JobStart(ok=True, job_id=job_id,
                    message=f"Imported {summary.added} new images; captioning job {job_id} started.")


def inside_import_root(settings: Settings, path: str) -> Path | None:
    """`path` (absolute, or relative to the import folder) resolved, when it lies inside
    settings.import_root (symlinks resolved too); None when it points anywhere else."""
    root = settings.import_root.resolve()
    folder = (root / path).resolve()  # an absolute `path` replaces root here
    return folder if folder.is_relative_to(root) else None


def jobs_view(engine: Engine, *, settings: Settings | None = None, limit: int = 20) -> pd.DataFrame:
    """The newest jobs as plain rows (status, progress, message, error) for the jobs page; a job
    whose process died is shown as interrupted first."""
    reap_dead_jobs(engine, settings=settings)
    with session_scope(engine) as s:
        jobs = list_jobs(s, limit=limit)
        rows = [{"id": j.id, "kind": JobKind(j.kind).value, "status": JobStatus(j.status).value,
                 "done": j.done, "total": j.total,
                 "progress": (j.done / j.total) if j.total else 0.0, "message": j.message or "",
                 "error": j.error or "", "started": str(j.started_at or j.created_at)[:19],
                 "active": j.status in ACTIVE, "cancel_requested": j.cancel_requested,
                 "log_path": j.log_path or ""}
                for j in jobs]
    return pd.DataFrame(rows, columns=["id", "kind", "status", "done", "total", "progress", "message",
                                       "error", "started", "active", "cancel_requested", "log_path"])


def cancel_job(engine: Engine, *, actor: Actor, job_id: int, settings: Settings | None = None) -> str:
    """Ask a running job to stop (it finishes its current batch first); a job whose process died
    is cancelled at once."""
    require(actor, Role.curator, "cancel jobs")
    reap_dead_jobs(engine, settings=settings)
    try:
        with session_scope(engine) as s:
            dead = get_job(s, job_id=job_id).status == JobStatus.interrupted
            job = request_cancel(s, job_id=job_id)
            if dead:
                return f"Job {job_id}: cancelled (its process had already stopped)."
            return f"Job {job_id}: cancel requested ({JobStatus(job.status).value})."
    except StoreError as err:
        return str(err)
