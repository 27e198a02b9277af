"""One pipeline command run as a Ray task (the Ray job backend's compare and evaluate jobs).

    python -m pipeline.remote compare --student DIR --snapshot DIR --job-id N

This process is the job's driver on the app's machine: it submits `python -m pipeline <argv>` as
one Ray task (with `ray_gpus_per_worker` GPUs), which reports progress into the job row itself.
The driver watches the row: a cancel the command does not honour within `grace_s` stops the
task (`ray.cancel(force=True)`). The task's output lands in this process's log (the job log).
"""
from __future__ import annotations

import subprocess
import sys
import time

from db.jobs import ACTIVE, finish_job
from db.models import JobStatus
from pipeline.settings import Settings

_PASSED_ENV = ("CAPSTUDIO_", "HF_", "TOKENIZERS_PARALLELISM", "PYTHONPATH", "CUDA_VISIBLE_DEVICES")


def run_command(argv: list[str], env: dict) -> tuple[int, str]:
    """Inside the Ray worker: run the command to the end; returns (exit code, output)."""
    import os

    proc = subprocess.run([sys.executable, "-m", "pipeline", *argv], env={**os.environ, **env},
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc.returncode, proc.stdout


def _job_id(argv: list[str]) -> int | None:
    return int(argv[argv.index("--job-id") + 1]) if "--job-id" in argv else None


def run_on_ray(settings: Settings, argv: list[str], env: dict, *, grace_s: float = 10.0,
               poll_s: float = 1.0) -> int:
    """Submit the command as a Ray task and wait; returns its exit code (-1 when cancelled by force)."""
    from db.engine import make_engine, session_scope
    from db.jobs import cancel_requested
    from pipeline.teacher.ray_engine import RayOptions, connect, import_ray

    ray = import_ray()
    started = connect(ray, RayOptions(address=settings.ray_address, workers=1))
    task = ray.remote(num_cpus=1, num_gpus=settings.ray_gpus_per_worker, max_retries=0)(run_command)
    ref, job_id = task.remote(argv, env), _job_id(argv)
    engine = make_engine(settings.resolved_database_url) if job_id is not None else None
    cancel_seen = None
    try:
        while not ray.wait([ref], timeout=poll_s)[0]:
            if engine is None:
                continue
            with session_scope(engine) as s:
                if cancel_requested(s, job_id=job_id):
                    cancel_seen = cancel_seen or time.monotonic()
            if cancel_seen and time.monotonic() - cancel_seen > grace_s:
                ray.cancel(ref, force=True)
                print(f"job {job_id}: cancel not honoured within {grace_s}s: Ray task stopped", flush=True)
                _close_row(engine, job_id, JobStatus.cancelled)
                return -1
        try:
            code, output = ray.get(ref)
        except Exception as exc:
            code, output = 1, f"the Ray task failed: {type(exc).__name__}: {exc}\n"
        print(output, end="", flush=True)
        if code != 0 and engine is not None:
            _close_row(engine, job_id, JobStatus.failed, error=output.strip()[-500:] or f"exit code {code}")
        return code
    finally:
        if engine is not None:
            engine.dispose()
        if started:
            ray.shutdown()


def _close_row(engine, job_id: int, status, error: str | None = None) -> None:
    """End a row the command left running (it was killed, or died before its reporter could)."""
    from db.engine import session_scope
    from db.jobs import get_job

    with session_scope(engine) as s:
        if get_job(s, job_id=job_id).status in ACTIVE:
            finish_job(s, job_id=job_id, status=status, error=error)


def main() -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k.startswith(_PASSED_ENV)}
    sys.exit(run_on_ray(Settings(), sys.argv[1:], env))


if __name__ == "__main__":
    main()
