"""Jobs: long work (captioning, export, training, evaluation) tracked in the store.

A job is created queued, run by a separate process that reports progress into its row, and
ends done, failed or cancelled. Cancellation is a request the running process honours. The worker
writes a heartbeat; a running job whose process died is marked interrupted (`reap_dead_jobs`), which
releases it (it is no longer active) and lets it be resumed; cancelling it ends it at once.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlmodel import Session, select

from db.errors import InvalidActionError
from db.models import Job, JobKind, JobStatus, utcnow

ACTIVE = (JobStatus.queued, JobStatus.running)


def create_job(session: Session, *, kind: JobKind, params: dict, log_path: str | None = None) -> Job:
    job = Job(kind=kind, params=params, log_path=log_path)
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, *, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise InvalidActionError(f"No job {job_id}.")
    return job


def mark_job_running(session: Session, *, job_id: int, pid: int | None = None, total: int = 0,
                     host: str | None = None) -> Job:
    job = get_job(session, job_id=job_id)
    if job.status not in ACTIVE:  # cancelled (or reaped) before its process got going
        return job
    job.status, job.started_at, job.pid = JobStatus.running, job.started_at or utcnow(), pid
    job.host, job.heartbeat_at = host or job.host, utcnow()
    job.total = total or job.total
    session.add(job)
    return job


def beat(session: Session, *, job_id: int) -> None:
    """The worker is alive: stamp the job's heartbeat."""
    job = session.get(Job, job_id)
    if job is not None and job.status == JobStatus.running:
        job.heartbeat_at = utcnow()
        session.add(job)


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def reap_dead_jobs(session: Session, *, stale_after: timedelta, host: str,
                   alive: Callable[[int], bool]) -> list[Job]:
    """Mark running jobs whose worker died as interrupted; returns them.

    Dead means: on this `host`, its pid is gone (`alive(pid)` is False); on another host (or
    with no pid), no heartbeat for `stale_after`. A live process on this host is never reaped.
    """
    now, reaped = utcnow(), []
    for job in session.exec(select(Job).where(Job.status == JobStatus.running)).all():
        local = job.host == host and job.pid
        if local:
            dead = not alive(job.pid)
        else:
            last = job.heartbeat_at or job.started_at or job.created_at
            dead = now - _aware(last) > stale_after
        if not dead:
            continue
        seen = f"{job.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC" if job.heartbeat_at else "never"
        job.status, job.finished_at = JobStatus.interrupted, now
        job.error = (f"The job's process ({job.pid} on {job.host or 'unknown host'}) stopped without finishing "
                     f"(last heartbeat: {seen}).")
        session.add(job)
        reaped.append(job)
    return reaped


def update_progress(
    session: Session, *, job_id: int, done: int, total: int | None = None, message: str | None = None,
    result: dict | None = None,
) -> Job:
    job = get_job(session, job_id=job_id)
    job.done = done
    if total is not None:
        job.total = total
    if message is not None:
        job.message = message
    if result is not None:
        job.result = {**job.result, **result}
    session.add(job)
    return job


def finish_job(session: Session, *, job_id: int, status: JobStatus, error: str | None = None,
               result: dict | None = None) -> Job:
    if status in ACTIVE:
        raise InvalidActionError("finish_job needs a final status.")
    job = get_job(session, job_id=job_id)
    job.status, job.finished_at = status, utcnow()
    job.error = error
    if result is not None:
        job.result = {**job.result, **result}
    session.add(job)
    return job


def request_cancel(session: Session, *, job_id: int) -> Job:
    """Ask a running job to stop; a queued or interrupted one (no process) is cancelled at once."""
    job = get_job(session, job_id=job_id)
    if job.status == JobStatus.interrupted:
        job.status, job.cancel_requested = JobStatus.cancelled, True
        session.add(job)
    elif job.status in ACTIVE:
        job.cancel_requested = True
        if job.status == JobStatus.queued:
            job.status, job.finished_at = JobStatus.cancelled, utcnow()
        session.add(job)
    return job


def cancel_requested(session: Session, *, job_id: int) -> bool:
    job = session.get(Job, job_id)
    return bool(job and job.cancel_requested)


def list_jobs(session: Session, *, kind: JobKind | None = None, limit: int = 20) -> list[Job]:
    stmt = select(Job).order_by(Job.id.desc()).limit(limit)
    if kind is not None:
        stmt = stmt.where(Job.kind == kind)
    return list(session.exec(stmt).all())


def active_jobs(session: Session, *, kind: JobKind | None = None) -> list[Job]:
    stmt = select(Job).where(Job.status.in_(ACTIVE)).order_by(Job.id)
    if kind is not None:
        stmt = stmt.where(Job.kind == kind)
    return list(session.exec(stmt).all())
