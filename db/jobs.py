"""Jobs: long work (captioning, export, training, evaluation) tracked in the store.

A job is created queued, run by a separate process that reports progress into its row, and
ends done, failed or cancelled. Cancellation is a request the running process honours.
"""
from __future__ import annotations

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


def mark_job_running(session: Session, *, job_id: int, pid: int | None = None, total: int = 0) -> Job:
    job = get_job(session, job_id=job_id)
    job.status, job.started_at, job.pid = JobStatus.running, job.started_at or utcnow(), pid
    job.total = total or job.total
    session.add(job)
    return job


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
    job = get_job(session, job_id=job_id)
    if job.status in ACTIVE:
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
