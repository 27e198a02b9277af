"""Crashed jobs (issue 12, item 4): a worker stamps a heartbeat; a job whose process was killed
(kill -9) is shown as interrupted instead of running forever, its student folder is free again,
Resume continues from the last checkpoint, and Cancel ends a dead job at once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from db.engine import session_scope
from db.jobs import create_job, get_job, mark_job_running, reap_dead_jobs
from db.models import JobKind, JobStatus, utcnow
from pipeline.identity import Actor, Role
from pipeline.jobs import HOST, process_alive, wait_for_job
from pipeline.services.jobs import cancel_job, jobs_view
from pipeline.services.train import resume_training, start_training, training_runs
from pipeline.settings import Settings
from pipeline.student.config import TrainConfig
from tests.app_store import app_for, engine_for
from tests.playground_models import store_with_snapshot, tiny_base, tiny_student_config

CURATOR = Actor("cora", Role.curator)


def _row(engine, job_id):
    with session_scope(engine) as s:
        return get_job(s, job_id=job_id)


def test_a_killed_training_job_is_interrupted_and_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPSTUDIO_JOB_HEARTBEAT_S", "0.2")  # the job process inherits it
    data = tmp_path / "data"
    _, snapshot_id = store_with_snapshot(data)
    settings = Settings(data_dir=data, _env_file=None, job_stale_after_s=5)
    engine = engine_for(data)
    started = start_training(settings, engine, actor=CURATOR, snapshot_id=snapshot_id, name="killed",
                             student=tiny_student_config(tiny_base(tmp_path / "base")),
                             train=TrainConfig(max_steps=16, batch_size=4, checkpoint_every=2, warmup_ratio=0.0))
    assert started.ok, started.message
    beats, deadline = set(), time.monotonic() + 240
    while True:  # a few steps (a checkpoint at step 2), and the heartbeat moving
        row = _row(engine, started.job_id)
        beats.add(row.heartbeat_at)
        if row.done >= 3 or row.status != JobStatus.running or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert row.status == JobStatus.running and row.done >= 3, (settings.jobs_dir / f"{started.job_id}.log").read_text()
    assert len(beats) >= 3 and row.host == HOST and process_alive(row.pid)
    os.killpg(row.pid, signal.SIGKILL)  # the job runs in its own session: kill it and any children
    deadline = time.monotonic() + 10
    while process_alive(row.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _row(engine, started.job_id).status == JobStatus.running  # what the row says after a kill -9

    [run] = [r for r in training_runs(settings, engine, actor=CURATOR) if r.job_id == started.job_id]
    assert run.status == JobStatus.interrupted and not run.active and run.resumable
    assert "stopped without finishing" in (run.error or "")
    resumed = resume_training(settings, engine, actor=CURATOR, job_id=started.job_id)
    assert resumed.ok and "Resumed training job" in resumed.message, resumed.message
    job = wait_for_job(settings, resumed.job_id, timeout_s=300)
    assert job.status == JobStatus.done, (settings.jobs_dir / f"{resumed.job_id}.log").read_text()
    metrics = json.loads((Path(job.params["student_dir"]) / "metrics.json").read_text())
    assert metrics["optimizer_steps"] == 16 and metrics["sessions"][1]["start_step"] >= 2
    engine.dispose()


def test_a_dead_job_shows_interrupted_on_the_jobs_page_and_cancel_ends_it_at_once(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    engine = engine_for(data)
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    with session_scope(engine) as s:
        job_id = create_job(s, kind=JobKind.caption, params={}).id
        mark_job_running(s, job_id=job_id, pid=worker.pid, host=HOST)
    assert jobs_view(engine).iloc[0]["status"] == "running"  # alive: left alone
    worker.kill()
    worker.wait()
    at = app_for(data, monkeypatch)
    at.run()
    at.switch_page("app_pages/jobs.py").run()
    assert not at.exception, at.exception
    table = at.dataframe[-1].value
    assert table.iloc[0]["status"] == "interrupted" and "stopped without finishing" in table.iloc[0]["error"]
    assert not [b for b in at.button if b.key == f"cancel-{job_id}"]  # not active any more
    cancelled = cancel_job(engine, actor=CURATOR, job_id=job_id)
    assert cancelled == f"Job {job_id}: cancelled (its process had already stopped)."
    assert _row(engine, job_id).status == JobStatus.cancelled
    engine.dispose()


def test_cancel_of_a_killed_job_still_marked_running_cancels_it_at_once(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    engine = engine_for(data)
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with session_scope(engine) as s:
        job_id = create_job(s, kind=JobKind.train, params={}).id
        mark_job_running(s, job_id=job_id, pid=worker.pid, host=HOST)
    worker.kill()
    worker.wait()
    assert "cancelled" in cancel_job(engine, actor=CURATOR, job_id=job_id)
    row = _row(engine, job_id)
    assert row.status == JobStatus.cancelled and row.finished_at is not None
    engine.dispose()


def test_a_job_on_another_machine_is_interrupted_when_its_heartbeat_stops(store):
    with session_scope(store) as s:
        stale = create_job(s, kind=JobKind.caption, params={}).id
        fresh = create_job(s, kind=JobKind.caption, params={}).id
        local = create_job(s, kind=JobKind.caption, params={}).id
        for job_id, host, pid in ((stale, "gpu-box-7", 4242), (fresh, "gpu-box-7", 4242), (local, HOST, os.getpid())):
            mark_job_running(s, job_id=job_id, pid=pid, host=host)
        get_job(s, job_id=stale).heartbeat_at = utcnow() - timedelta(minutes=5)
        get_job(s, job_id=local).heartbeat_at = utcnow() - timedelta(minutes=5)  # alive here: kept
    with session_scope(store) as s:
        reaped = reap_dead_jobs(s, stale_after=timedelta(seconds=60), host=HOST, alive=process_alive)
        assert [j.id for j in reaped] == [stale]
    with session_scope(store) as s:
        assert [get_job(s, job_id=i).status for i in (stale, fresh, local)] == [
            JobStatus.interrupted, JobStatus.running, JobStatus.running]
