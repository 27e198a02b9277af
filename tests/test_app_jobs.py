"""The Jobs page (AppTest): importing + captioning runs as a real background job (a tiny random
teacher) whose progress the page reads from the store; a job can be cancelled from the page."""
from __future__ import annotations

from db.catalog import count_drafts, count_images
from db.engine import session_scope
from db.jobs import create_job, get_job
from db.models import JobKind, JobStatus
from pipeline.jobs import wait_for_job
from pipeline.settings import Settings
from pipeline.tiny import build_tiny_teacher
from tests.app_store import app_for, engine_for


def _jobs_page(data, monkeypatch):
    at = app_for(data, monkeypatch)
    at.run()
    at.switch_page("app_pages/jobs.py").run()
    assert not at.exception, at.exception
    return at


def test_import_and_caption_job_from_the_page(tmp_path, monkeypatch):
    teacher = build_tiny_teacher(tmp_path / "tiny-teacher")
    monkeypatch.setenv("CAPSTUDIO_TEACHER_MODEL", str(teacher))
    data = tmp_path / "data"
    at = _jobs_page(data, monkeypatch)
    assert "No jobs yet" in at.info[0].value
    at.selectbox(key="job_source").set_value(at.selectbox(key="job_source").options[0])  # bundled
    at.number_input(key="job_n").set_value(1)
    at.button[0].click().run()  # the form's submit button
    assert "Imported 10 new images" in at.success[0].value, at.error
    job = wait_for_job(Settings(data_dir=data, _env_file=None), int(at.success[0].value.split("job ")[1].split()[0]),
                       timeout_s=240)
    assert job.status == JobStatus.done, job.error
    at.run()  # a refresh reads everything back from the store
    table = at.dataframe[-1].value
    assert (table.iloc[0]["status"], table.iloc[0]["done"], table.iloc[0]["total"]) == ("done", 10, 10)
    engine = engine_for(data)
    with session_scope(engine) as s:
        assert (count_images(s), count_drafts(s)) == (10, 10)
    engine.dispose()


def test_cancel_a_job_from_the_page(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    engine = engine_for(data)
    with session_scope(engine) as s:
        job_id = create_job(s, kind=JobKind.caption, params={}).id
    at = _jobs_page(data, monkeypatch)
    at.button(key=f"cancel-{job_id}").click().run()
    assert "cancel requested" in at.info[0].value
    with session_scope(engine) as s:
        job = get_job(s, job_id=job_id)
        assert (job.status, job.cancel_requested) == (JobStatus.cancelled, True)
    assert at.dataframe[-1].value.iloc[0]["status"] == "cancelled"
    engine.dispose()
