"""Several reviewer processes on one SQLite store: no item decided twice, no decision lost."""
from __future__ import annotations

import multiprocessing as mp
import time
from collections import Counter

import pytest
from sqlalchemy import func
from sqlmodel import select

from db.engine import init_store, make_engine, session_scope
from db.errors import StaleWriteError
from db.models import RejectReason, Review, ReviewAction, ReviewEvent, ReviewState
from db.review import claim_next, decide, get_item
from pipeline.classes import CLASSES
from tests.conftest import seed_images

N_WORKERS = 4
PER_CLASS = 6  # 60 items
THINK_S = 0.01


def review_until_empty(args: tuple) -> dict:
    """One reviewer in its own process: claim, decide, repeat until the queue is empty."""
    url, reviewer, start = args
    engine = make_engine(url)
    start.wait(timeout=60)  # every reviewer starts together, so their work interleaves
    decided, errors = [], []
    try:
        while True:
            with session_scope(engine) as s:
                item = claim_next(s, reviewer=reviewer)
            if item is None:
                break
            time.sleep(THINK_S)  # the reviewer looks at the image while others claim
            action = ReviewAction.approve if item.image_id % 2 else ReviewAction.reject
            try:
                with session_scope(engine) as s:
                    decide(s, image_id=item.image_id, reviewer=reviewer, action=action,
                           expected_version=item.version, reason=RejectReason.other)
                decided.append(item.image_id)
            except Exception as err:  # noqa: BLE001  (reported to the parent, which fails)
                errors.append(f"{type(err).__name__}: {err}")
    finally:
        engine.dispose()
    return {"reviewer": reviewer, "decided": decided, "errors": errors}


@pytest.fixture
def store_url(settings):
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    engine = init_store(url)
    seed_images(engine, {label: PER_CLASS for label in CLASSES}, text="A {label}.")
    engine.dispose()
    return url


def test_parallel_reviewers_decide_every_item_exactly_once(store_url):
    names = [f"reviewer{k}" for k in range(N_WORKERS)]
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(N_WORKERS) as pool:
        start = manager.Barrier(N_WORKERS)
        results = pool.map(review_until_empty, [(store_url, n, start) for n in names], chunksize=1)
    assert sum(1 for r in results if r["decided"]) >= 2  # the reviewers really overlapped
    assert [e for r in results for e in r["errors"]] == []  # no stale write, no claim clash
    decided = Counter(i for r in results for i in r["decided"])
    total = len(CLASSES) * PER_CLASS
    assert len(decided) == total and set(decided.values()) == {1}
    engine = make_engine(store_url)
    with session_scope(engine) as s:
        rows = s.exec(select(Review)).all()
        events = dict(s.exec(select(ReviewEvent.image_id, func.count()).group_by(ReviewEvent.image_id)).all())
    engine.dispose()
    assert all(r.state in (ReviewState.approved, ReviewState.rejected) for r in rows)
    assert events == {r.image_id: 1 for r in rows}
    who = {i: r["reviewer"] for r in results for i in r["decided"]}
    assert all(r.reviewer == who[r.image_id] for r in rows)  # the row holds the decision made
    assert sum(len(r["decided"]) for r in results) == total


def test_second_decision_on_the_same_view_is_refused_and_the_first_kept(store_url):
    engine = make_engine(store_url)
    with session_scope(engine) as s:
        ann_view = get_item(s, image_id=1)
        bob_view = get_item(s, image_id=1)
    with session_scope(engine) as s:
        decide(s, image_id=1, reviewer="ann", action=ReviewAction.edit_approve,
               expected_version=ann_view.version, caption="An airliner at the gate.")
    with pytest.raises(StaleWriteError, match="reload"):
        with session_scope(engine) as s:
            decide(s, image_id=1, reviewer="bob", action=ReviewAction.reject,
                   expected_version=bob_view.version, reason=RejectReason.other)
    with session_scope(engine) as s:
        row = s.get(Review, 1)
        n_events = len(s.exec(select(ReviewEvent).where(ReviewEvent.image_id == 1)).all())
    engine.dispose()
    assert (row.state, row.final_caption, row.reviewer, n_events) == (
        ReviewState.approved, "An airliner at the gate.", "ann", 1)
