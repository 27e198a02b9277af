"""Review transitions in the store: approve, edit, reject (needs a reason), skip, undo, stale
writes refused, claims that keep two reviewers apart and expire."""
from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest

from db.catalog import add_draft, add_image
from db.engine import session_scope
from db.errors import (
    ClaimedError,
    InvalidActionError,
    InvalidCaptionError,
    NothingToUndoError,
    StaleWriteError,
)
from db.models import RejectReason, Review, ReviewAction, ReviewState, SourceKind, utcnow
from db.review import (
    CLAIM_TTL,
    MAX_CAPTION_CHARS,
    claim_next,
    counts_by_class,
    decide,
    events_for_image,
    get_item,
    release_claims,
    undo_last,
)
from tests.conftest import BUNDLED, both_backends, seed_images

pytestmark = both_backends  # every test here runs on SQLite and on a real PostgreSQL


def seed(engine, labels: dict[str, int]) -> list[int]:
    return seed_images(engine, labels)


def act(engine, image_id, action, reviewer="ann", **kw):
    with session_scope(engine) as s:
        version = get_item(s, image_id=image_id).version
        return decide(s, image_id=image_id, reviewer=reviewer, action=action,
                      expected_version=version, **kw)


def row(engine, image_id) -> Review:
    with session_scope(engine) as s:
        return s.get(Review, image_id)


def test_approve_keeps_the_draft_and_logs_it(store):
    (i,) = seed(store, {"cat": 1})
    with session_scope(store) as s:
        item = claim_next(s, reviewer="ann")
    assert item.image_id == i and item.draft_text == "A cat photo 0." and item.png[:4] == b"\x89PNG"
    act(store, i, ReviewAction.approve)
    r = row(store, i)
    assert (r.state, r.final_caption, r.reviewer, r.version) == (ReviewState.approved, "A cat photo 0.", "ann", 2)
    assert r.claimed_by is None and r.decided_at is not None
    with session_scope(store) as s:
        (event,) = events_for_image(s, image_id=i)
    assert (event.action, event.before_state, event.after_state) == (
        ReviewAction.approve, ReviewState.pending, ReviewState.approved)


def test_edit_approve_stores_the_edited_caption_and_refuses_empty_or_long(store):
    (i,) = seed(store, {"dog": 1})
    with pytest.raises(InvalidCaptionError, match="empty"):
        act(store, i, ReviewAction.edit_approve, caption="   ")
    with pytest.raises(InvalidCaptionError, match=str(MAX_CAPTION_CHARS)):
        act(store, i, ReviewAction.edit_approve, caption="x" * (MAX_CAPTION_CHARS + 1))
    assert row(store, i).state == ReviewState.pending and row(store, i).version == 1
    act(store, i, ReviewAction.edit_approve, caption="  A puppy chewing a red ball. ")
    assert row(store, i).final_caption == "A puppy chewing a red ball."


def test_reject_needs_a_reason(store):
    (i,) = seed(store, {"frog": 1})
    with pytest.raises(InvalidActionError, match="reason"):
        act(store, i, ReviewAction.reject)
    act(store, i, ReviewAction.reject, reason=RejectReason.wrong_object, note="it is a toad? no, a rock")
    r = row(store, i)
    assert (r.state, r.reject_reason, r.final_caption) == (ReviewState.rejected, RejectReason.wrong_object, None)
    assert r.note == "it is a toad? no, a rock"


def test_skipped_items_come_back_after_the_pending_ones(store):
    a, b = seed(store, {"ship": 2})
    act(store, a, ReviewAction.skip)
    with session_scope(store) as s:
        assert claim_next(s, reviewer="ann").image_id == b
    act(store, b, ReviewAction.approve)
    with session_scope(store) as s:
        assert claim_next(s, reviewer="ann").image_id == a
    assert counts_by_class_of(store)["ship"] == {"pending": 0, "approved": 1, "rejected": 0, "skipped": 1}


def counts_by_class_of(engine):
    with session_scope(engine) as s:
        return counts_by_class(s)


def test_undo_restores_the_previous_state_and_gives_the_item_back(store):
    (i,) = seed(store, {"bird": 1})
    act(store, i, ReviewAction.edit_approve, caption="A robin on a branch.")
    with session_scope(store) as s:
        undo_last(s, reviewer="ann")
    r = row(store, i)
    assert (r.state, r.final_caption, r.reviewer, r.claimed_by) == (ReviewState.pending, None, None, "ann")
    with session_scope(store) as s, pytest.raises(NothingToUndoError):
        undo_last(s, reviewer="ann")
    with session_scope(store) as s:
        assert [e.action for e in events_for_image(s, image_id=i)] == [ReviewAction.edit_approve, ReviewAction.undo]


def test_undo_is_refused_after_someone_else_changed_the_item(store):
    (i,) = seed(store, {"deer": 1})
    act(store, i, ReviewAction.approve, reviewer="ann")
    act(store, i, ReviewAction.reject, reviewer="bob", reason=RejectReason.too_vague)
    with session_scope(store) as s, pytest.raises(StaleWriteError):
        undo_last(s, reviewer="ann")
    assert row(store, i).state == ReviewState.rejected


def test_a_decision_on_a_stale_view_is_refused(store):
    (i,) = seed(store, {"horse": 1})
    with session_scope(store) as s:
        seen_by_ann = get_item(s, image_id=i)
        seen_by_bob = get_item(s, image_id=i)
    with session_scope(store) as s:
        decide(s, image_id=i, reviewer="ann", action=ReviewAction.approve, expected_version=seen_by_ann.version)
    with session_scope(store) as s, pytest.raises(StaleWriteError, match="changed since you opened it"):
        decide(s, image_id=i, reviewer="bob", action=ReviewAction.reject,
               reason=RejectReason.other, expected_version=seen_by_bob.version)
    r = row(store, i)
    assert (r.state, r.reviewer) == (ReviewState.approved, "ann")


def test_two_reviewers_never_hold_the_same_item_and_claims_expire(store):
    a, b, c = seed(store, {"truck": 3})
    with session_scope(store) as s:
        ann = claim_next(s, reviewer="ann")
        bob = claim_next(s, reviewer="bob")
        assert claim_next(s, reviewer="ann").image_id == ann.image_id  # own claim first
    assert {ann.image_id, bob.image_id} == {a, b}
    with session_scope(store) as s, pytest.raises(ClaimedError, match="someone else") as refused:
        decide(s, image_id=ann.image_id, reviewer="bob", action=ReviewAction.approve,
               expected_version=ann.version)
    assert "ann" not in str(refused.value) and "by ann" in refused.value.named  # the name: curators only
    later = utcnow() + CLAIM_TTL + timedelta(seconds=1)
    with session_scope(store) as s:
        cy = claim_next(s, reviewer="cy", label="truck", now=later)
    assert cy.image_id == a  # ann's claim expired: the oldest item is free again
    with session_scope(store) as s:
        assert release_claims(s, reviewer="bob") == 1
    with session_scope(store) as s:
        assert claim_next(s, reviewer="dee").image_id == b


def test_balanced_queue_serves_the_class_furthest_from_target(store):
    ids = seed(store, {"cat": 3, "dog": 3})
    for i in ids[:2]:
        act(store, i, ReviewAction.approve)  # cat has 2 approved, dog none
    with session_scope(store) as s:
        item = claim_next(s, reviewer="ann", targets={"cat": 3, "dog": 3})
    assert item.label == "dog"


def test_risk_order_serves_the_most_flagged_draft_of_any_class_first(store):
    ids = {}
    with session_scope(store) as s:
        for label, n_flags in (("cat", 0), ("dog", 1), ("ship", 3), ("frog", 2)):
            png = (BUNDLED / label / f"{label}_0000.png").read_bytes()
            image, _ = add_image(s, source_kind=SourceKind.bundled, source_key=label, label=label, png=png,
                                 content_hash=hashlib.sha256(png).hexdigest(), width=32, height=32)
            add_draft(s, image_id=image.id, text=f"draft {label}", model_id="t", prompt="p",
                      flags=["hedging", "too_short", "repetition"][:n_flags])
            ids[label] = image.id
    from db.review import QueueOrder

    served = []
    for _ in range(4):
        with session_scope(store) as s:
            item = claim_next(s, reviewer="ann", order=QueueOrder.risk, targets={"cat": 10, "dog": 10})
            served.append(item.label)
            decide(s, image_id=item.image_id, reviewer="ann", action=ReviewAction.skip,
                   expected_version=item.version)
    assert served == ["ship", "frog", "dog", "cat"]
