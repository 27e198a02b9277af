"""The browser review card's service (pipeline/services/review.py): the card resends every decision it has
not seen acknowledged, so each numbered decision must be applied exactly once, in order; the items in
hand are claimed by the reviewer ahead of time; refusals come back as results, never vanish."""
from __future__ import annotations

import pytest
from sqlmodel import select

from db.engine import session_scope
from db.models import RejectReason, Review, ReviewAction, ReviewEvent, ReviewState
from db.review import claim_next, decide, release_claims
from pipeline.identity import Actor, PermissionDenied, Role
from pipeline.services import review as studio
from tests.app_store import engine_for, fill_store

ANN = Actor(name="ann", role=Role.reviewer)


@pytest.fixture
def engine(tmp_path):
    fill_store(tmp_path / "data", per_class=4)  # 12 pending items
    engine = engine_for(tmp_path / "data")
    yield engine
    engine.dispose()


def _events(engine, reviewer="ann"):
    with session_scope(engine) as s:
        rows = s.exec(select(ReviewEvent).where(ReviewEvent.reviewer == reviewer).order_by(ReviewEvent.id)).all()
        return [(e.image_id, e.action) for e in rows]


def _hand(engine, queue, count=4):
    return studio.card_view(engine, actor=ANN, spec=studio.QueueSpec(), queue=queue, count=count).items


def test_the_items_in_hand_are_distinct_claims_kept_in_order(engine):
    queue = studio.CardQueue()
    items = _hand(engine, queue)
    assert len({i.image_id for i in items}) == 4 and queue.hand == [i.image_id for i in items]
    with session_scope(engine) as s:
        assert {r.image_id for r in s.exec(select(Review).where(Review.claimed_by == "ann"))} == set(queue.hand)
        assert claim_next(s, reviewer="bob").image_id not in queue.hand  # nobody else gets them
    assert [i.image_id for i in _hand(engine, queue)] == queue.hand  # the same hand, same order


def test_each_decision_is_applied_once_however_often_it_is_resent(engine):
    queue, spec = studio.CardQueue(), studio.QueueSpec()
    a, b, c, _ = _hand(engine, queue)
    sent = [{"seq": 1, "action": "approve", "image_id": a.image_id, "version": a.version, "caption": a.draft_text},
            {"seq": 2, "action": "skip", "image_id": b.image_id, "version": b.version}]
    first = studio.apply_card_decisions(engine, actor=ANN, spec=spec, queue=queue, client="c1", decisions=sent)
    assert [r.ok for r in first] == [True, True]
    sent.append({"seq": 3, "action": "reject", "image_id": c.image_id, "version": c.version,
                 "reason": RejectReason.too_vague.value, "note": "says nothing"})
    again = studio.apply_card_decisions(engine, actor=ANN, spec=spec, queue=queue, client="c1",
                                        decisions=list(reversed(sent)))  # resent, out of order
    assert [(r.seq, r.ok) for r in again] == [(3, True)]
    assert _events(engine) == [(a.image_id, ReviewAction.approve), (b.image_id, ReviewAction.skip),
                               (c.image_id, ReviewAction.reject)]
    assert queue.acked == {"c1": 3}
    hand = _hand(engine, queue)
    assert not {a.image_id, b.image_id, c.image_id} & {i.image_id for i in hand} and len(hand) == 4


def test_undo_puts_the_item_back_first_in_hand(engine):
    queue, spec = studio.CardQueue(), studio.QueueSpec()
    a = _hand(engine, queue)[0]
    studio.apply_card_decisions(engine, actor=ANN, spec=spec, queue=queue, client="c1", decisions=[
        {"seq": 1, "action": "skip", "image_id": a.image_id, "version": a.version}, {"seq": 2, "action": "undo"}])
    first = _hand(engine, queue)[0]
    assert (first.image_id, first.state, first.version) == (a.image_id, ReviewState.pending, a.version + 2)
    assert queue.results[-1].message == f"Item {a.image_id}: last decision undone."


def test_refusals_are_results_and_later_decisions_still_land(engine):
    queue, spec = studio.CardQueue(), studio.QueueSpec()
    a, b, c, d = _hand(engine, queue)
    with session_scope(engine) as s:  # someone else decided b after its claim was dropped
        release_claims(s, reviewer="ann")
        decide(s, image_id=b.image_id, reviewer="bob", action=ReviewAction.approve, expected_version=b.version)
    results = studio.apply_card_decisions(engine, actor=ANN, spec=spec, queue=queue, client="c1", decisions=[
        {"seq": 1, "action": "approve", "image_id": b.image_id, "version": b.version},
        {"seq": 2, "action": "edit_approve", "image_id": a.image_id, "version": a.version, "caption": "\u200b"},
        {"seq": 3, "action": "reject", "image_id": c.image_id, "version": c.version},  # no reason
        {"seq": 4, "action": "reject", "image_id": c.image_id, "version": c.version, "reason": "rude"},
        {"seq": 5, "action": "adjudicate", "image_id": c.image_id, "version": c.version},
        {"seq": 6, "action": "approve", "image_id": d.image_id, "version": d.version, "caption": 7},
        {"seq": 7, "action": "approve", "image_id": d.image_id, "version": d.version}])
    assert [r.ok for r in results] == [False] * 6 + [True]
    assert "changed since you opened it" in results[0].message and "bob" not in results[0].message
    assert "no visible characters" in results[1].message and "needs a reason" in results[2].message
    assert _events(engine) == [(d.image_id, ReviewAction.approve)]
    assert queue.acked == {"c1": 7}


def test_a_viewer_may_not_use_the_card(engine):
    with pytest.raises(PermissionDenied):
        studio.apply_card_decisions(engine, actor=Actor(name="vic", role=Role.viewer), spec=studio.QueueSpec(),
                                    queue=studio.CardQueue(), client="c1", decisions=[])


def test_an_item_opened_from_browse_comes_first(engine):
    queue = studio.CardQueue()
    before = [i.image_id for i in _hand(engine, queue)]
    with session_scope(engine) as s:
        wanted = s.exec(select(Review.image_id).where(Review.claimed_by.is_(None))).first()
    view = studio.card_view(engine, actor=ANN, spec=studio.QueueSpec(), queue=queue, count=4, image_id=wanted)
    assert [i.image_id for i in view.items] == [wanted, *before] and view.message is None  # the rest stay in hand


def test_an_item_in_hand_is_read_again_when_it_changed(engine):
    from db.catalog import add_draft

    queue = studio.CardQueue()
    a, b, _, _ = _hand(engine, queue)
    with session_scope(engine) as s:
        add_draft(s, image_id=a.image_id, text="A newer draft of this image.", model_id="t2", prompt="Describe it.")
    with session_scope(engine) as s:  # b's claim ran out and bob skipped it: no longer in ann's hand
        row = s.get(Review, b.image_id)
        row.claimed_by = None
        s.add(row)
    with session_scope(engine) as s:
        decide(s, image_id=b.image_id, reviewer="bob", action=ReviewAction.skip, expected_version=b.version)
    items = _hand(engine, queue)
    assert items[0].image_id == a.image_id and items[0].draft_text == "A newer draft of this image."
    assert b.image_id not in [i.image_id for i in items] and len(items) == 4
