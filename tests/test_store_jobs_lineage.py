"""Jobs and lineage in the store, on SQLite and on a real PostgreSQL: a job's life (progress,
cancel, failure) through JobReporter, and the rule that a snapshot a student uses stays."""
from __future__ import annotations

import pytest

from db.engine import session_scope
from db.errors import InUseError, InvalidActionError
from db.jobs import active_jobs, create_job, get_job, list_jobs, request_cancel
from db.lineage import (
    delete_snapshot_row,
    get_snapshot_row,
    list_snapshot_rows,
    list_students,
    register_snapshot,
    register_student,
)
from db.models import JobKind, JobStatus
from pipeline.jobs import JobReporter
from tests.conftest import both_backends

pytestmark = both_backends


def new_job(engine, kind=JobKind.caption, **params) -> int:
    with session_scope(engine) as s:
        return create_job(s, kind=kind, params=params).id


def test_a_job_reports_progress_and_ends_done_with_its_result(engine, settings):
    job_id = new_job(engine, n=3)
    with JobReporter(settings, job_id, min_interval_s=0) as rep:
        for i in range(1, 4):
            rep.progress(i, 3, message=f"image {i}")
        rep.result = {"captioned": 3}
        with session_scope(engine) as s:
            mid = get_job(s, job_id=job_id)
            assert (mid.status, mid.done, mid.total, mid.message) == (JobStatus.running, 3, 3, "image 3")
            assert [j.id for j in active_jobs(s, kind=JobKind.caption)] == [job_id]
    with session_scope(engine) as s:
        job = get_job(s, job_id=job_id)
        assert (job.status, job.result, job.error, job.params) == (JobStatus.done, {"captioned": 3}, None, {"n": 3})
        assert job.finished_at >= job.started_at and active_jobs(s) == []


def test_a_cancel_request_stops_the_running_job_and_a_queued_one_at_once(engine, settings):
    running, queued = new_job(engine), new_job(engine, kind=JobKind.export)
    with JobReporter(settings, running, min_interval_s=0) as rep:
        rep.progress(1, 10)
        with session_scope(engine) as s:
            request_cancel(s, job_id=running)  # from the app, in its own session
        rep.progress(2, 10)
        pytest.fail("progress() should have raised JobCancelled")
    with session_scope(engine) as s:
        request_cancel(s, job_id=queued)
        assert get_job(s, job_id=running).status == JobStatus.cancelled
        assert get_job(s, job_id=running).done == 2  # the last progress was written, then it stopped
        assert get_job(s, job_id=queued).status == JobStatus.cancelled
        assert [j.id for j in list_jobs(s)] == [queued, running]
        assert [j.id for j in list_jobs(s, kind=JobKind.export)] == [queued]


def test_a_failing_job_records_its_error(engine, settings):
    job_id = new_job(engine)
    with pytest.raises(ValueError, match="bad image"), JobReporter(settings, job_id):
        raise ValueError("bad image 7")
    with session_scope(engine) as s:
        job = get_job(s, job_id=job_id)
        assert job.status == JobStatus.failed and job.error == "ValueError: bad image 7"
        with pytest.raises(InvalidActionError, match="No job"):
            get_job(s, job_id=job_id + 100)


def test_a_snapshot_in_use_by_a_student_cannot_be_deleted(engine):
    with session_scope(engine) as s:
        register_snapshot(s, snapshot_id="a", path="/e/a", content_hash="h1", n_items=2,
                          reviewers=["bob", "ann", "bob"], image_ids=[3, 1])
        register_snapshot(s, snapshot_id="b", path="/e/b", content_hash="h2", n_items=1,
                          reviewers=["ann"], image_ids=[2])
        register_student(s, path="/s/1", snapshot_id="a", metrics={"loss": 1.0})
    with session_scope(engine) as s:
        register_student(s, path="/s/1", snapshot_id="a", metrics={"loss": 0.5})  # same folder: updated
        row = get_snapshot_row(s, snapshot_id="a")
        assert (row.reviewers, row.image_ids) == (["ann", "bob"], [1, 3])
        assert [st.metrics for st in list_students(s, snapshot_id="a")] == [{"loss": 0.5}]
        assert {r.id for r in list_snapshot_rows(s)} == {"a", "b"}
    with session_scope(engine) as s, pytest.raises(InUseError, match="/s/1"):
        delete_snapshot_row(s, snapshot_id="a")
    with session_scope(engine) as s:
        delete_snapshot_row(s, snapshot_id="b")
    with session_scope(engine) as s:
        assert [r.id for r in list_snapshot_rows(s)] == ["a"]
        with pytest.raises(InvalidActionError, match="No snapshot"):
            delete_snapshot_row(s, snapshot_id="b")
