"""Review decisions: the queue (claims that expire), approve/edit/reject/skip, undo, counts.

Every decision checks the version the reviewer saw: a decision made on a stale view is
refused (StaleWriteError) instead of overwriting someone else's.
"""
from __future__ import annotations

import enum
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import String, cast, or_, text
from sqlmodel import Session, select

from db.engine import lock_for_claim, lock_row
from db.errors import (
    ClaimedError,
    InvalidActionError,
    InvalidCaptionError,
    NothingToUndoError,
    StaleWriteError,
)
from db.models import (
    Draft,
    Image,
    RejectReason,
    Review,
    ReviewAction,
    ReviewEvent,
    ReviewState,
    utcnow,
)
from db.tally import counts_by_class

MAX_CAPTION_CHARS = 2000
CLAIM_TTL = timedelta(minutes=10)


class QueueOrder(str, enum.Enum):
    balanced = "balanced"  # classes furthest from their target first
    risk = "risk"  # most auto-flags first
    oldest = "oldest"


@dataclass(frozen=True)
class ReviewItem:
    """What the review page shows for one item (plain data, safe to cache)."""

    image_id: int
    label: str
    state: ReviewState
    version: int
    png: bytes
    draft_id: int | None
    draft_text: str
    final_caption: str | None
    flags: tuple[str, ...]
    provenance: dict
    reviewer: str | None
    claimed_by: str | None


# Unicode categories that are not content: format (zero-width space/joiners, BOM, bidi marks),
# control, surrogate, separators. Letters, marks, numbers, punctuation and symbols (emoji) are.
_NOT_CONTENT = {"Cf", "Cc", "Cs", "Zs", "Zl", "Zp"}
_CONTENT_MAJOR = {"L", "N", "P", "S"}


def validate_caption(text: str | None) -> str:
    """Return the caption as stored (surrounding whitespace removed, nothing else changed) or raise.

    A caption needs at least one visible character (a letter, number, punctuation or symbol):
    zero-width spaces, joiners, BOMs and bidi marks alone do not count; control characters and
    lone surrogates are refused. RTL text, emoji (with ZWJ sequences) and combining marks stay as
    written (no Unicode normalisation: what the reviewer typed is what is exported)."""
    if text is None or not text.strip():
        raise InvalidCaptionError("The caption is empty: write a caption or reject the item.")
    text = text.strip()
    for ch in text:
        cat = unicodedata.category(ch)
        if cat == "Cs" or (cat == "Cc" and ch not in "\t\n"):
            raise InvalidCaptionError(f"The caption contains the control character U+{ord(ch):04X}: "
                                      "remove it (retype the caption rather than pasting it).")
    if not any(unicodedata.category(ch)[0] in _CONTENT_MAJOR for ch in text):
        shown = " ".join(f"U+{ord(ch):04X}" for ch in dict.fromkeys(text))[:60]
        raise InvalidCaptionError(f"The caption has no visible characters (only {shown}): write a "
                                  "caption or reject the item.")
    if len(text) > MAX_CAPTION_CHARS:
        raise InvalidCaptionError(
            f"The caption has {len(text)} characters; the limit is {MAX_CAPTION_CHARS}."
        )
    return text


def claim_next(
    session: Session,
    *,
    reviewer: str,
    order: QueueOrder = QueueOrder.balanced,
    targets: dict[str, int] | None = None,
    label: str | None = None,
    flag: str | None = None,
    now: datetime | None = None,
    ttl: timedelta = CLAIM_TTL,
    exclude: Collection[int] = (),
) -> ReviewItem | None:
    """Claim the next item for `reviewer` (their own live claim first, other than the `exclude` ids they
    already hold in hand, e.g. prefetched by the review card); None when done."""
    now = now or utcnow()
    own_query = select(Review).where(
        Review.claimed_by == reviewer, Review.claim_expires_at > now,
        Review.state == ReviewState.pending, Review.draft_id.is_not(None),
    )
    if exclude:
        own_query = own_query.where(Review.image_id.not_in(list(exclude)))
    own = session.exec(own_query).first()
    review = own or _next_free(session, order=order, targets=targets, label=label, flag=flag, now=now)
    if review is None:
        return None
    review.claimed_by, review.claim_expires_at = reviewer, now + ttl
    session.add(review)
    session.flush()
    return get_item(session, image_id=review.image_id)


def _free(now: datetime):
    return or_(Review.claimed_by.is_(None), Review.claim_expires_at <= now)


def _next_free(session: Session, *, order, targets, label, flag, now) -> Review | None:
    for state in (ReviewState.pending, ReviewState.skipped):
        base = select(Review).where(
            Review.state == state, Review.draft_id.is_not(None), _free(now)
        )
        if flag is not None:
            # flag_count > 0 skips clean items before the JSON text of their draft is read
            base = base.join(Draft, Draft.id == Review.draft_id).where(
                Review.flag_count > 0, cast(Draft.flags, String).like(f'%"{flag}"%')
            )
        labels = [label] if label else _labels_by_need(session, targets=targets)
        if order == QueueOrder.oldest or not labels:
            found = session.exec(lock_for_claim(base.order_by(Review.image_id).limit(1), session)).first()
            if found is not None:
                return found
            continue
        if flag is not None and len(labels) > 1 and order != QueueOrder.risk:
            found = _first_of_label(session, base, order=order, label=labels[0])
            if found is not None:
                return found
            labels = labels[1:]
        if flag is not None and len(labels) > 1:
            # a filter that the neediest class lacks: find the classes it matches in one pass
            # instead of reading every flagged item of each class in turn (no DISTINCT: with it
            # SQLite walks a label index over every row instead of the flag_count index)
            present = set(session.exec(base.with_only_columns(Review.label)).all())
            labels = [lab for lab in labels if lab in present]
        if order == QueueOrder.risk:
            # most-flagged first across all classes: the top of each class (one indexed
            # look-up each), then the most flagged of those; ties go to the neediest class
            tops = [t for lab in labels if (t := _first_of_label(session, base, order=order, label=lab))]
            if tops:
                return max(tops, key=lambda r: r.flag_count)  # max keeps the first of equals
            continue
        for lab in labels:
            found = _first_of_label(session, base, order=order, label=lab)
            if found is not None:
                return found
    return None


def _first_of_label(session: Session, base, *, order: QueueOrder, label: str) -> Review | None:
    stmt = base.where(Review.label == label)
    if order == QueueOrder.risk:
        stmt = stmt.order_by(Review.flag_count.desc(), Review.image_id)  # reads ix_review_risk
    else:
        stmt = stmt.order_by(Review.image_id)
    return session.exec(lock_for_claim(stmt.limit(1), session)).first()


def _labels_by_need(session: Session, *, targets: dict[str, int] | None) -> list[str]:
    """Labels ordered by how far they are from their approved target (furthest first)."""
    counts = counts_by_class(session)  # one read of the maintained tally
    approved = {lab: c[ReviewState.approved.value] for lab, c in counts.items()}
    labels = sorted(set(targets or {}) | set(counts))
    target = targets or {}
    return sorted(labels, key=lambda lab: (-(target.get(lab, 0) - approved.get(lab, 0)), lab))


def label_list(session: Session) -> list[str]:
    """Every class with at least one item (from the maintained tally, not a scan)."""
    return sorted(counts_by_class(session))


def reviewer_names(session: Session) -> list[str]:
    """Everyone who decided an item, sorted: one index look-up per name (a recursive skip over the
    reviewer index) instead of reading every decided row."""
    walk = text(
        "WITH RECURSIVE r(name) AS (SELECT MIN(reviewer) FROM review UNION ALL "
        "SELECT (SELECT MIN(reviewer) FROM review WHERE reviewer > r.name) FROM r WHERE r.name IS NOT NULL) "
        "SELECT name FROM r WHERE name IS NOT NULL AND name <> ''")
    return list(session.execute(walk).scalars())


def get_item(session: Session, *, image_id: int) -> ReviewItem:
    review = session.get(Review, image_id)
    if review is None:
        raise InvalidActionError(f"No item with image id {image_id}.")
    image = session.get(Image, image_id)
    draft = session.get(Draft, review.draft_id) if review.draft_id else None
    provenance = {}
    if draft is not None:
        provenance = {
            "model_id": draft.model_id, "model_revision": draft.model_revision,
            "prompt": draft.prompt, "generation_params": draft.generation_params,
            "processor_params": draft.processor_params, "created_at": str(draft.created_at),
            "draft_id": draft.id,
        }
    return ReviewItem(
        image_id=image_id, label=review.label, state=ReviewState(review.state),
        version=review.version, png=image.png, draft_id=review.draft_id,
        draft_text=draft.text if draft else "", final_caption=review.final_caption,
        flags=tuple(draft.flags) if draft else (), provenance=provenance,
        reviewer=review.reviewer, claimed_by=review.claimed_by,
    )


def decide(
    session: Session,
    *,
    image_id: int,
    reviewer: str,
    action: ReviewAction,
    expected_version: int,
    caption: str | None = None,
    reason: RejectReason | None = None,
    note: str | None = None,
    now: datetime | None = None,
) -> Review:
    """Apply one decision to one item, log it, release the claim; refuse stale or bad input."""
    now = now or utcnow()
    if not reviewer or not reviewer.strip():
        raise InvalidActionError("Choose a reviewer name first.")
    review = lock_row(session, Review, image_id)
    if review is None:
        raise InvalidActionError(f"No item with image id {image_id}.")
    if review.version != expected_version:
        who = "you, in another window" if review.reviewer == reviewer else "someone else"
        said = f"Item {image_id} changed since you opened it (it is now {review.state.value}, by {{}}). " \
               "Your decision was not saved; reload to see it."
        raise StaleWriteError(said.format(who), named=said.format(review.reviewer or "nobody"))
    _refuse_if_claimed(review, reviewer=reviewer, now=now)
    draft = session.get(Draft, review.draft_id) if review.draft_id else None
    new_state, new_caption, new_reason = _apply(action, review, draft, caption, reason)
    event = ReviewEvent(
        image_id=image_id, reviewer=reviewer, action=action, before_state=review.state,
        after_state=new_state, before_caption=review.final_caption, after_caption=new_caption,
        reject_reason=new_reason, note=note or None, created_at=now,
    )
    review.state, review.final_caption, review.reject_reason = new_state, new_caption, new_reason
    review.note, review.reviewer, review.decided_at, review.updated_at = note or None, reviewer, now, now
    review.version += 1
    review.claimed_by = review.claim_expires_at = None
    session.add(review)
    session.add(event)
    session.flush()
    return review


def _refuse_if_claimed(review: Review, *, reviewer: str, now: datetime) -> None:
    """ClaimedError while another reviewer's claim runs; the name is only in `named` (curators)."""
    if review.claimed_by not in (None, reviewer) and review.claim_expires_at and review.claim_expires_at > now:
        said = f"Item {review.image_id} is being reviewed by {{}}."
        raise ClaimedError(said.format("someone else"), named=said.format(review.claimed_by))


def _apply(action, review, draft, caption, reason):
    if action == ReviewAction.approve:
        if draft is None:
            raise InvalidActionError("This item has no teacher draft to approve.")
        text = caption if caption is not None else draft.text
        return ReviewState.approved, validate_caption(text), None
    if action == ReviewAction.edit_approve:
        return ReviewState.approved, validate_caption(caption), None
    if action == ReviewAction.reject:
        if reason is None:
            raise InvalidActionError("A reject needs a reason.")
        return ReviewState.rejected, None, RejectReason(reason)
    if action == ReviewAction.skip:
        return ReviewState.skipped, None, None
    if action == ReviewAction.reopen:
        return ReviewState.pending, None, None
    raise InvalidActionError(f"{action} is not a decision; use undo_last for undo.")


def undo_last(session: Session, *, reviewer: str, now: datetime | None = None) -> Review:
    """Undo `reviewer`'s newest decision, if nobody changed that item since."""
    now = now or utcnow()
    event = session.exec(
        select(ReviewEvent).where(
            ReviewEvent.reviewer == reviewer, ReviewEvent.undone.is_(False),
            ReviewEvent.action.not_in([ReviewAction.undo, ReviewAction.adjudicate]),  # adjudications stand
        ).order_by(ReviewEvent.id.desc()).limit(1)
    ).first()
    if event is None:
        raise NothingToUndoError("There is no decision of yours to undo.")
    latest = session.exec(
        select(ReviewEvent).where(ReviewEvent.image_id == event.image_id)
        .order_by(ReviewEvent.id.desc()).limit(1)
    ).first()
    if latest.id != event.id:
        raise StaleWriteError(f"Item {event.image_id} was changed after your decision; it cannot be undone.")
    review = lock_row(session, Review, event.image_id)
    prior = session.exec(
        select(ReviewEvent).where(ReviewEvent.image_id == event.image_id, ReviewEvent.id < event.id,
                                  ReviewEvent.undone.is_(False), ReviewEvent.action != ReviewAction.undo)
        .order_by(ReviewEvent.id.desc()).limit(1)
    ).first()
    session.add(ReviewEvent(
        image_id=review.image_id, reviewer=reviewer, action=ReviewAction.undo,
        before_state=review.state, after_state=event.before_state,
        before_caption=review.final_caption, after_caption=event.before_caption, created_at=now,
    ))
    event.undone = True
    review.state, review.final_caption = event.before_state, event.before_caption
    review.reject_reason = prior.reject_reason if prior and event.before_state == ReviewState.rejected else None
    review.reviewer = prior.reviewer if prior else None
    review.decided_at = prior.created_at if prior else None
    review.updated_at = now
    review.version += 1
    # the reviewer gets the item back in hand
    review.claimed_by, review.claim_expires_at = reviewer, now + CLAIM_TTL
    session.add_all([event, review])
    session.flush()
    return review


def held_versions(session: Session, *, reviewer: str, image_ids: Collection[int]) -> dict[int, tuple[int, int]]:
    """{image_id: (version, draft_id)} of those items `reviewer` still holds claimed and undecided (one
    query): an item read earlier with the same pair is unchanged (a new teacher draft changes draft_id)."""
    if not image_ids:
        return {}
    rows = session.exec(select(Review.image_id, Review.version, Review.draft_id).where(
        Review.image_id.in_(list(image_ids)), Review.claimed_by == reviewer,
        Review.state.in_([ReviewState.pending, ReviewState.skipped]))).all()
    return {image_id: (version, draft_id) for image_id, version, draft_id in rows}


def release_claims(session: Session, *, reviewer: str) -> int:
    """Drop every claim a reviewer holds (e.g. when they change their name)."""
    rows = session.exec(select(Review).where(Review.claimed_by == reviewer)).all()
    for r in rows:
        r.claimed_by = r.claim_expires_at = None
        session.add(r)
    return len(rows)


def events_for_image(session: Session, *, image_id: int) -> list[ReviewEvent]:
    query = select(ReviewEvent).where(ReviewEvent.image_id == image_id).order_by(ReviewEvent.id)
    return list(session.exec(query).all())


def claim_item(session: Session, *, image_id: int, reviewer: str, now: datetime | None = None,
               ttl: timedelta = CLAIM_TTL) -> ReviewItem:
    """Open one chosen item for `reviewer` (e.g. from Browse); refused while someone else holds it."""
    now = now or utcnow()
    review = lock_row(session, Review, image_id)
    if review is None:
        raise InvalidActionError(f"No item with image id {image_id}.")
    _refuse_if_claimed(review, reviewer=reviewer, now=now)
    review.claimed_by, review.claim_expires_at = reviewer, now + ttl
    session.add(review)
    session.flush()
    return get_item(session, image_id=image_id)
