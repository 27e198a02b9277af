"""Train and lineage pages (AppTest): a short training job on a tiny Phi-3 runs from the form to
a finished student with its loss curve and evaluation report; cancel and resume; every student
shows its snapshot and a snapshot a student was trained on cannot be deleted."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from db.engine import session_scope
from db.jobs import get_job, list_jobs
from db.lineage import get_snapshot_row, list_students
from db.models import JobKind, JobStatus
from pipeline.data.export import export_snapshot
from pipeline.jobs import log_tail, process_alive, wait_for_job
from pipeline.settings import Settings
from tests.app_store import app_for, engine_for
from tests.playground_models import store_with_snapshot, tiny_base, train_tiny_student

LINEAGE = "app_pages/lineage.py"
TRAIN = "app_pages/train.py"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    data = root / "data"
    ids, snapshot_id = store_with_snapshot(data)
    base = tiny_base(root / "base")
    student = train_tiny_student(data, snapshot_id=snapshot_id, base=base, name="first")
    return {"root": root, "data": data, "ids": ids, "snapshot_id": snapshot_id, "base": base,
            "student": student}


def _open(world, monkeypatch, page):
    at = app_for(world["data"], monkeypatch)
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def test_lineage_shows_each_student_with_its_snapshot_and_each_snapshot_with_its_items(world, monkeypatch):
    at = _open(world, monkeypatch, LINEAGE)
    students = at.dataframe[0].value
    row = students[students.student == "first"].iloc[0]
    assert row.snapshot_id == world["snapshot_id"] and bool(row.on_disk)
    texts = " ".join(c.value for c in at.caption)
    assert "reviewers: ann" in texts and "students trained on it: first" in texts
    items = [d.value for d in at.dataframe if "caption" in getattr(d.value, "columns", [])][0]
    assert sorted(items.item_id.astype(int)) == sorted(i for ids in world["ids"].values() for i in ids)
    assert set(items.reviewer) == {"ann"}


def test_a_snapshot_a_student_was_trained_on_cannot_be_deleted(world, monkeypatch):
    at = _open(world, monkeypatch, LINEAGE)
    at.button(key=f"del-{world['snapshot_id']}").click().run()
    assert "used by 1 student" in at.error[0].value
    engine = engine_for(world["data"])
    with session_scope(engine) as s:
        assert get_snapshot_row(s, snapshot_id=world["snapshot_id"]) is not None
    settings = Settings(data_dir=world["data"], _env_file=None)
    assert (settings.exports_dir / world["snapshot_id"] / "manifest.json").is_file()
    # a snapshot nobody trained on can be deleted: row and folder go
    spare = export_snapshot(settings, engine, override_balance=True)
    engine.dispose()
    at.run()
    at.button(key=f"del-{spare.snapshot_id}").click().run()
    assert f"Deleted snapshot {spare.snapshot_id}" in at.success[0].value
    assert not spare.path.exists()
    with session_scope(engine_for(world["data"])) as s:
        assert [r.snapshot_id for r in list_students(s)] == [world["snapshot_id"]]


def _fill_form(at, world, *, name: str, steps: int, checkpoint_every: int) -> None:
    at.text_input(key="tr_name").set_value(name)
    at.text_input(key="tr_base").set_value(str(world["base"]))
    at.number_input(key="tr_proj").set_value(64)
    at.checkbox(key="tr_4bit").uncheck()
    at.number_input(key="tr_steps").set_value(steps)
    at.number_input(key="tr_batch").set_value(4)
    at.number_input(key="tr_ckpt").set_value(checkpoint_every)


def _jobs(world, kind):
    engine = engine_for(world["data"])
    with session_scope(engine) as s:
        jobs = list_jobs(s, kind=kind)
    engine.dispose()
    return jobs


def _wait(world, job_id, timeout_s=180):
    """Wait for the job row to end; fails fast if its process exited without finishing the row."""
    job = wait_for_job(Settings(data_dir=world["data"], _env_file=None), job_id, timeout_s=timeout_s)
    return job, log_tail(job)


def test_a_training_job_is_cancelled_resumed_and_ends_with_an_evaluation_report(world, monkeypatch):
    at = _open(world, monkeypatch, TRAIN)
    assert at.selectbox(key="tr_snapshot").value == world["snapshot_id"]
    _fill_form(at, world, name="from-the-app", steps=16, checkpoint_every=2)
    at.button(key="tr_start").click().run()
    assert "Started training job" in at.success[0].value, at.error
    [first] = _jobs(world, JobKind.train)
    engine = engine_for(world["data"])
    deadline = time.monotonic() + 120
    while True:  # let it take a few steps, then press Cancel
        with session_scope(engine) as s:
            row = get_job(s, job_id=first.id)
        if (row.done >= 3 or row.status not in (JobStatus.queued, JobStatus.running) or not process_alive(row.pid)
                or time.monotonic() > deadline):
            break
        time.sleep(0.2)
    at.run()
    at.button(key=f"tr_cancel_{first.id}").click().run()
    job, log = _wait(world, first.id)
    assert job.status == JobStatus.cancelled and job.done < 16, log

    at.run()
    at.button(key=f"tr_resume_{first.id}").click().run()
    assert "Resumed training job" in at.success[0].value
    resumed = max(j.id for j in _jobs(world, JobKind.train))
    assert not [b for b in at.button if b.key == f"tr_resume_{first.id}"]  # superseded by the resumed job
    job, log = _wait(world, resumed)
    assert job.status == JobStatus.done, log
    folder = Path(job.params["student_dir"])
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["optimizer_steps"] == 16 and len(metrics["sessions"]) == 2
    assert metrics["sessions"][1]["start_step"] >= 2  # continued from a checkpoint, not from zero
    curve = [json.loads(x) for x in (folder / "loss_curve.jsonl").read_text().splitlines()]
    assert [r["step"] for r in curve] == list(range(1, 17)) and curve[-1]["val_loss"] is not None

    at.run()  # the page sees the finished run and starts its evaluation
    assert not at.exception, at.exception
    [eval_job] = _jobs(world, JobKind.evaluate)
    job, log = _wait(world, eval_job.id)
    assert job.status == JobStatus.done, log
    at.run()
    assert not at.exception, at.exception
    [ablation] = [d.value for d in at.dataframe if "condition" in getattr(d.value, "columns", [])]
    assert list(ablation.condition) == ["real", "blank", "shuffled"]
    with session_scope(engine) as s:  # registered: lineage knows its snapshot
        row = next(r for r in list_students(s) if r.path.endswith("from-the-app"))
        assert row.snapshot_id == world["snapshot_id"] and "real_class_mention" in row.metrics
    engine.dispose()


@pytest.mark.parametrize("name,message", [("../escape", "Name the student with letters"),
                                          ("first", "already exists")])
def test_the_form_refuses_a_bad_or_taken_student_name(world, monkeypatch, name, message):
    at = _open(world, monkeypatch, TRAIN)
    _fill_form(at, world, name=name, steps=2, checkpoint_every=0)
    at.button(key="tr_start").click().run()
    assert message in at.error[0].value
    assert not [j for j in _jobs(world, JobKind.train) if j.params.get("student_dir", "").endswith(name)]


def test_the_form_refuses_contradictory_hyperparameters(world, monkeypatch):
    at = _open(world, monkeypatch, TRAIN)
    _fill_form(at, world, name="no-steps", steps=0, checkpoint_every=0)
    at.number_input(key="tr_epochs").set_value(0.0)
    at.button(key="tr_start").click().run()
    assert "Check the form" in at.error[0].value and "epochs" in at.error[0].value


def test_the_few_example_controls_reach_the_training_run(world, monkeypatch):
    """Augmentation, the conv image path, weight decay and early stopping set on the Train page are
    what the job trains with: its params, the student's student.json and its metrics say so."""
    at = _open(world, monkeypatch, TRAIN)
    _fill_form(at, world, name="few-examples", steps=4, checkpoint_every=0)
    at.checkbox(key="tr_augment").check()
    at.number_input(key="tr_jitter").set_value(0.4)
    at.number_input(key="tr_crop").set_value(0.6)
    at.selectbox(key="tr_projector").set_value("conv")
    at.number_input(key="tr_decay").set_value(0.05)
    at.checkbox(key="tr_early").check()
    at.number_input(key="tr_eval_every").set_value(2)
    at.button(key="tr_start").click().run()
    assert "Started training job" in at.success[0].value, at.error
    job = max(_jobs(world, JobKind.train), key=lambda j: j.id)
    assert job.params["student_dir"].endswith("few-examples")
    train, student = job.params["train"], job.params["student"]
    assert (train["augment"], train["color_jitter"], train["crop_scale"]) == (True, 0.4, 0.6)
    assert (train["weight_decay"], train["early_stopping"], train["eval_every"]) == (0.05, True, 2)
    assert student["projector"] == "conv"
    job, log = _wait(world, job.id)
    assert job.status == JobStatus.done, log
    folder = Path(job.params["student_dir"])
    assert json.loads((folder / "student.json").read_text())["projector"] == "conv"
    stopped = json.loads((folder / "metrics.json").read_text())["early_stopping"]
    assert stopped["best_step"] in (2, 4)
