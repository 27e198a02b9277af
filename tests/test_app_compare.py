"""Batch compare (AppTest + a real `python -m pipeline compare` job): a tiny student captions a
snapshot's validation split; the table holds approved, teacher and student captions with scores,
most disagreeing first; selected items go back to the review queue."""
from __future__ import annotations

import pytest

from db.engine import session_scope
from db.jobs import list_jobs
from db.models import JobKind, JobStatus, Review, ReviewAction, ReviewState
from db.review import events_for_image
from pipeline.identity import Actor, Role
from pipeline.jobs import wait_for_job
from pipeline.services.compare import read_results, send_back
from pipeline.settings import Settings
from pipeline.student.compare import score_pair
from tests.app_store import app_for, engine_for
from tests.playground_models import approved_caption, store_with_snapshot, tiny_base, train_tiny_student

PAGE = "app_pages/compare.py"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    data = root / "data"
    ids, snapshot_id = store_with_snapshot(data)
    train_tiny_student(data, snapshot_id=snapshot_id, base=tiny_base(root / "base"))
    return {"data": data, "ids": ids, "snapshot_id": snapshot_id}


def test_scores_reward_agreement():
    same = score_pair("a small cat on a sofa.", "a small cat on a sofa.")
    near = score_pair("a small cat on a bed.", "a small cat on a sofa.")
    off = score_pair("a red truck.", "a small cat on a sofa.")
    assert same["exact"] and same["rouge_l"] == 1.0 and same["bleu"] == 100.0
    assert 1.0 > near["rouge_l"] > off["rouge_l"] and near["bleu"] > off["bleu"]
    assert score_pair("", "a cat.")["rouge_l"] == 0.0


def test_compare_job_fills_a_sortable_table_and_sends_items_back(world, monkeypatch):
    data = world["data"]
    at = app_for(data, monkeypatch)
    at.run()
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    assert world["snapshot_id"] in at.selectbox(key="cmp_student").value
    assert at.selectbox(key="cmp_snapshot").value == world["snapshot_id"]
    at.number_input(key="cmp_max_new").set_value(6)
    at.button(key="cmp_run").click().run()
    assert "Started compare job" in at.success[0].value
    engine = engine_for(data)
    with session_scope(engine) as s:
        [job] = list_jobs(s, kind=JobKind.compare)
    job = wait_for_job(Settings(data_dir=data, _env_file=None), job.id, timeout_s=240)
    assert job.status == JobStatus.done, (job.error, open(job.log_path).read()[-3000:])

    at.run()
    assert not at.exception, at.exception
    table = read_results(at.selectbox(key="cmp_results").value)
    assert len(table) == job.result["n_items"] == 3  # one validation item per class
    assert list(table.disagreement) == sorted(table.disagreement, reverse=True)
    by_item = {int(r.item_id): r for r in table.itertuples()}
    for label, ids in world["ids"].items():
        for n, image_id in enumerate(ids):
            if image_id in by_item:
                assert by_item[image_id].approved == approved_caption(label, n)
                assert by_item[image_id].teacher == f"A small photo of a {label} outdoors."

    first = at.multiselect(key="cmp_pick").options[0]
    at.multiselect(key="cmp_pick").select(first).run()
    at.button(key="cmp_send").click().run()
    assert "Sent 1 item(s) back" in at.success[0].value
    image_id = int(first.split()[0].lstrip("#"))
    with session_scope(engine) as s:
        review = s.get(Review, image_id)
        assert review.state == ReviewState.pending and review.final_caption is None
        last = events_for_image(s, image_id=image_id)[-1]
        assert (last.action, last.reviewer) == (ReviewAction.reopen, "ann")
    # a pending item is not reopened again: the refusal says why
    again = send_back(engine, actor=Actor("ann", Role.curator), image_ids=[image_id])
    assert again.reopened == [] and "already pending" in again.message
    engine.dispose()
