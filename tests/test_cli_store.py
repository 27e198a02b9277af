"""`python -m pipeline` end to end: build-tiny, import, caption (also as a job, and after kill -9), status."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import func
from sqlmodel import select

from db.engine import make_engine, session_scope
from db.models import Draft, JobKind, JobStatus
from pipeline.jobs import start_job, wait_for_job
from pipeline.settings import Settings
from tests.conftest import REPO

# one thread: a tiny model spends its time in thread hand-offs, more so on a busy machine
CAPTION = ["caption", "--max-new-tokens", "6", "--batch-size", "5", "--threads", "1"]


def cli(data_dir, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "CAPSTUDIO_DATA_DIR": str(data_dir)}
    env.pop("CAPSTUDIO_DATABASE_URL", None)
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def draft_stats(data_dir) -> tuple[int, int]:
    """(drafts, distinct images with a draft)."""
    engine = make_engine(Settings(data_dir=data_dir, _env_file=None).resolved_database_url)
    with session_scope(engine) as s:
        n, distinct = s.exec(select(func.count(Draft.id), func.count(func.distinct(Draft.image_id)))).one()
    engine.dispose()
    return n, distinct


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "tiny-teacher"
    proc = cli(tmp_path_factory.mktemp("unused"), "build-tiny", "teacher", str(out))
    assert "tiny random test teacher" in proc.stdout
    return out


def test_help_describes_every_command(tmp_path):
    out = cli(tmp_path, "--help").stdout
    for name in ("build-tiny", "import", "caption", "status"):
        assert name in out
    assert "--n-per-class" in cli(tmp_path, "import", "--help").stdout
    assert "--teacher-model" in cli(tmp_path, "caption", "--help").stdout


def test_import_caption_kill_resume_rerun_ends_with_exactly_100_drafts(tmp_path, tiny):
    data = tmp_path / "data"
    assert "added 100" in cli(data, "import", "--n-per-class", "10").stdout
    assert "added 0, already present 100" in cli(data, "import", "--n-per-class", "10").stdout

    env = {**os.environ, "CAPSTUDIO_DATA_DIR": str(data)}
    slow = ["--max-new-tokens", "30"]  # the last value wins: a longer run is easier to kill midway
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *CAPTION, *slow, "--teacher-model", str(tiny)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while draft_stats(data)[0] < 10 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_killed, _ = draft_stats(data)
    assert 10 <= n_killed < 100, "the run should have been killed midway"

    out = cli(data, *CAPTION, "--teacher-model", str(tiny)).stdout
    assert f"wrote {100 - n_killed} drafts" in out and "tiny random test model" in out
    assert draft_stats(data) == (100, 100)  # no image lost, none drafted twice
    assert "wrote 0 drafts" in cli(data, *CAPTION, "--teacher-model", str(tiny)).stdout
    assert draft_stats(data) == (100, 100)

    status = cli(data, "status").stdout.splitlines()
    assert status[0].split() == ["class", "pending", "approved", "rejected", "skipped", "drafted", "total"]
    assert "cat 10 0 0 0 10 10" in [" ".join(line.split()) for line in status]


def test_caption_as_a_job_reports_progress(tmp_path, tiny):
    settings = Settings(data_dir=tmp_path / "data", _env_file=None)
    cli(settings.data_dir, "import", "--n-per-class", "2")
    job_id = start_job(settings, kind=JobKind.caption, params={"teacher": str(tiny)},
                        argv=[*CAPTION, "--teacher-model", str(tiny)])
    job = wait_for_job(settings, job_id, timeout_s=120)
    assert job.status == JobStatus.done, (settings.jobs_dir / f"{job_id}.log").read_text()
    assert (job.done, job.total) == (20, 20) and job.result["written"] == 20

