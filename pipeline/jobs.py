"""Running long work as jobs: start a CLI process for a job row, and report progress into it.

The app calls `start_job(...)`: it creates the row and starts `python -m pipeline <command>
... --job-id N` in its own process, logging to data/jobs/<N>.log. With `CAPSTUDIO_JOB_BACKEND=ray`
that process is a thin driver and the work runs on Ray (`job_command`): captioning on Ray Data,
compare and evaluate as one Ray task each, training under torchrun with `train_nproc` processes.
The command wraps its work in `JobReporter(settings, job_id)`, which writes progress, honours
cancel requests, and records how the job ended. A browser refresh loses nothing: everything lives in the row.
While it runs, a thread of the worker stamps the row's heartbeat every `job_heartbeat_s`;
`reap_dead_jobs(settings, engine)` marks a job whose process died (kill -9, a crash, a lost
machine) as interrupted, so its student folder is free again and it can be resumed or cancelled.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import traceback
from datetime import timedelta
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from db.engine import make_engine, session_scope
from db.jobs import beat, cancel_requested, create_job, finish_job, mark_job_running, update_progress
from db.jobs import reap_dead_jobs as _reap
from db.models import JobKind, JobStatus
from pipeline.settings import JobBackend, Settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class JobCancelled(Exception):
    """Raised inside the work when the job's cancel was requested."""


def job_command(settings: Settings, kind: JobKind, argv: list[str]) -> list[str]:
    """The Python arguments (after the interpreter) that run a job under the configured backend."""
    if settings.job_backend != JobBackend.ray:
        return ["-m", "pipeline", *argv]
    if kind == JobKind.caption:
        extra = ["--engine", "ray", "--workers", str(settings.ray_workers),
                 "--gpus-per-worker", str(settings.ray_gpus_per_worker)]
        return ["-m", "pipeline", *argv, *extra, *(["--ray-address", settings.ray_address]
                                                  if settings.ray_address else [])]
    if kind in (JobKind.compare, JobKind.evaluate):
        return ["-m", "pipeline.remote", *argv]
    if kind == JobKind.train and settings.train_nproc > 1:
        return ["-m", "pipeline", *argv, "--nproc", str(settings.train_nproc)]
    return ["-m", "pipeline", *argv]


def start_job(settings: Settings, *, kind: JobKind, argv: list[str], params: dict) -> int:
    """Create a job row and start `python -m pipeline <argv> --job-id N` detached (through the
    configured backend, see `job_command`); returns N."""
    engine = make_engine(settings.resolved_database_url)
    settings.jobs_dir.mkdir(parents=True, exist_ok=True)
    with session_scope(engine) as s:
        job = create_job(s, kind=kind, params=params)
        job_id = job.id
        log_path = settings.jobs_dir / f"{job_id}.log"
        job.log_path = str(log_path)
    env = {**os.environ, "CAPSTUDIO_DATA_DIR": str(Path(settings.data_dir).resolve()),
           "PYTHONUNBUFFERED": "1"}
    if settings.database_url:
        env["CAPSTUDIO_DATABASE_URL"] = settings.database_url
    if settings.job_backend == JobBackend.ray:
        env.update(CAPSTUDIO_JOB_BACKEND="ray", CAPSTUDIO_RAY_GPUS_PER_WORKER=str(settings.ray_gpus_per_worker))
        if settings.ray_address:
            env["CAPSTUDIO_RAY_ADDRESS"] = settings.ray_address
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, *job_command(settings, kind, [*argv, "--job-id", str(job_id)])],
            cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    with session_scope(engine) as s:
        mark_job_running(s, job_id=job_id, pid=proc.pid, host=HOST)
    engine.dispose()
    return job_id


HOST = socket.gethostname()


def reap_dead_jobs(engine: Engine, *, settings: Settings | None = None) -> list[int]:
    """Mark running jobs whose process died as interrupted (see db.jobs.reap_dead_jobs); their ids.
    Without `settings`, the default staleness (Settings.job_stale_after_s) applies."""
    stale_s = settings.job_stale_after_s if settings else Settings.model_fields["job_stale_after_s"].default
    with session_scope(engine) as s:
        return [j.id for j in _reap(s, stale_after=timedelta(seconds=stale_s), host=HOST, alive=process_alive)]


class JobReporter:
    """Progress and cancellation for one job row; a no-op when job_id is None (plain CLI runs).

    Use as a context manager: it marks the job done, failed (with the error) or cancelled.
    Progress writes are throttled so that a fast loop does not hammer the database.
    """

    def __init__(self, settings: Settings, job_id: int | None, *, min_interval_s: float = 0.5):
        self.job_id = job_id
        self.min_interval_s = min_interval_s
        self.heartbeat_s = settings.job_heartbeat_s
        self._last = 0.0
        self._engine = make_engine(settings.resolved_database_url) if job_id is not None else None
        self._stop = threading.Event()
        self._beating: threading.Thread | None = None
        self.result: dict = {}

    def __enter__(self) -> JobReporter:
        if self._engine is not None:
            with session_scope(self._engine) as s:
                mark_job_running(s, job_id=self.job_id, pid=os.getpid(), host=HOST)
            self._beating = threading.Thread(target=self._heartbeat, name=f"job-{self.job_id}-heartbeat",
                                             daemon=True)
            self._beating.start()
        return self

    def _heartbeat(self) -> None:
        """Stamp the row every heartbeat_s until the job ends (a busy store only delays a beat)."""
        while not self._stop.wait(self.heartbeat_s):
            try:
                with session_scope(self._engine) as s:
                    beat(s, job_id=self.job_id)
            except SQLAlchemyError:
                continue

    def progress(self, done: int, total: int | None = None, message: str | None = None, *,
                 force: bool = False, result: dict | None = None, raise_on_cancel: bool = True) -> None:
        """Write progress (throttled); raise JobCancelled when a cancel was requested (unless the
        work polls `should_stop` itself to stop at a clean point, as training does)."""
        if self._engine is None:
            return
        now = time.monotonic()
        if not force and now - self._last < self.min_interval_s and (total is None or done < total):
            return
        self._last = now
        with session_scope(self._engine) as s:
            update_progress(s, job_id=self.job_id, done=done, total=total, message=message, result=result)
            cancelled = cancel_requested(s, job_id=self.job_id)
        if cancelled and raise_on_cancel:
            raise JobCancelled(f"job {self.job_id} was cancelled")

    def should_stop(self) -> bool:
        if self._engine is None:
            return False
        with session_scope(self._engine) as s:
            return cancel_requested(s, job_id=self.job_id)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._engine is None:
            return False
        self._stop.set()
        if self._beating is not None:
            self._beating.join()
        if exc_type is None:
            status, error = JobStatus.done, None
        elif issubclass(exc_type, JobCancelled) or (exc_type is KeyboardInterrupt):
            status, error = JobStatus.cancelled, None
        else:
            status, error = JobStatus.failed, "".join(traceback.format_exception_only(exc_type, exc)).strip()
        with session_scope(self._engine) as s:
            finish_job(s, job_id=self.job_id, status=status, error=error, result=self.result)
        self._engine.dispose()
        return exc_type is not None and issubclass(exc_type, JobCancelled)


def process_alive(pid: int | None) -> bool:
    """Whether process `pid` still runs on this machine (an exited child lingers as a zombie: not alive)."""
    if not pid:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True


def log_tail(job, n_chars: int = 3000) -> str:
    path = Path(job.log_path) if job.log_path else None
    return path.read_text(errors="replace")[-n_chars:] if path and path.is_file() else ""


def wait_for_job(settings: Settings, job_id: int, *, timeout_s: float = 300, poll_s: float = 0.3,
                 gone_grace_s: float = 5.0):
    """Block until the job ends (for tests and scripts); returns the final row.

    Raises TimeoutError after `timeout_s`, and RuntimeError (with the log's tail) when the job's
    process has been gone for `gone_grace_s` while its row still says queued/running.
    """
    from db.jobs import get_job

    engine = make_engine(settings.resolved_database_url)
    deadline, gone_since = time.monotonic() + timeout_s, None
    try:
        while True:
            with session_scope(engine) as s:
                job = get_job(s, job_id=job_id)
            if job.status not in (JobStatus.queued, JobStatus.running):
                return job
            if job.pid and not process_alive(job.pid):
                gone_since = gone_since or time.monotonic()
                if time.monotonic() - gone_since > gone_grace_s:
                    raise RuntimeError(f"job {job_id} ({job.kind.value}) exited but its row still says "
                                       f"{job.status.value}\n{log_tail(job)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status.value} after {timeout_s}s\n{log_tail(job)}")
            time.sleep(poll_s)
    finally:
        engine.dispose()
