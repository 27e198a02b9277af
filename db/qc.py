"""Quality control of the reviewers: routing decided items to a blind second review, the second
opinions themselves, and the curators' adjudication of disagreements.

A routed item gets one SecondOpinion row holding a copy of the first decision; the second reviewer
(never the first) claims it like a review item and decides it without seeing the first decision.
Their decision stays in that row and never changes the item's Review; only an adjudication does,
through the event log (action `adjudicate`).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_
from sqlmodel import Session, select

from db.engine import lock_for_claim, lock_row
from db.errors import ClaimedError, InvalidActionError, StaleWriteError
from db.models import (
    Adjudication,
    Draft,
    Image,
    OpinionState,
    QcPolicyRow,
    RejectReason,
    Review,
    ReviewAction,
    ReviewEvent,
    ReviewState,
    RouteReason,
    SecondOpinion,
    Verdict,
    utcnow,
)
from db.review import CLAIM_TTL, validate_caption

HELD = (OpinionState.waiting, OpinionState.disputed)  # QC on: these items stay out of an export
OPEN = HELD  # undoing or sending back the item withdraws these


@dataclass(frozen=True)
class QcPolicy:
    """Whether decided items go to a second reviewer, and which."""

    enabled: bool = False  # off: nothing is routed and exports ignore second opinions
    sample_fraction: float = 0.2  # share of decided items drawn for a second review
    route_edited: bool = True  # also every item whose first reviewer edited the draft

    def __post_init__(self) -> None:
        if not 0 <= self.sample_fraction <= 1:
            raise InvalidActionError(f"The sample fraction must be between 0 and 1, not {self.sample_fraction}.")


@dataclass(frozen=True)
class SecondItem:
    """What the second reviewer sees: the image and the teacher's draft, nothing of the first decision."""

    opinion_id: int
    image_id: int
    version: int
    label: str
    png: bytes
    draft_text: str
    flags: tuple[str, ...]


def normalise_caption(text: str | None) -> str:
    """Case, runs of whitespace and a final period do not make two captions different."""
    text = re.sub(r"\s+", " ", (text or "").strip().lower())
    return text[:-1].rstrip() if text.endswith(".") else text


def verdicts_agree(first: Verdict, first_caption: str | None, second: Verdict, second_caption: str | None) -> bool:
    """Both reject, or both approve captions equal after normalisation."""
    if Verdict.reject in (first, second):
        return first == second
    return normalise_caption(first_caption) == normalise_caption(second_caption)


def in_sample(image_id: int, fraction: float) -> bool:
    """A stable draw: the same item is always in (or out of) the same sample fraction."""
    digest = hashlib.sha256(f"qc-sample:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def get_policy(session: Session, *, default: QcPolicy) -> QcPolicy:
    """The policy a curator set, else `default` (from the settings)."""
    row = session.get(QcPolicyRow, 1)
    if row is None:
        return default
    return QcPolicy(enabled=row.enabled, sample_fraction=row.sample_fraction, route_edited=row.route_edited)


def set_policy(session: Session, *, policy: QcPolicy, curator: str, now: datetime | None = None) -> QcPolicy:
    row = session.get(QcPolicyRow, 1) or QcPolicyRow(id=1)
    row.enabled, row.sample_fraction, row.route_edited = policy.enabled, policy.sample_fraction, policy.route_edited
    row.updated_by, row.updated_at = curator, now or utcnow()
    session.add(row)
    session.flush()
    return policy


def _first_verdict(review: Review, draft: Draft | None) -> Verdict | None:
    if review.state == ReviewState.rejected:
        return Verdict.reject
    if review.state != ReviewState.approved:
        return None
    same = draft is not None and normalise_caption(review.final_caption) == normalise_caption(draft.text)
    return Verdict.approve if same else Verdict.edit


def route_decision(session: Session, *, image_id: int, policy: QcPolicy, now: datetime | None = None
                   ) -> SecondOpinion | None:
    """Called after every first decision (and undo) of an item: route it, refresh or withdraw its
    second opinion. Returns the item's second opinion unless it has none or it is withdrawn.

    A withdrawn opinion comes back when the item is decided again: compared anew when it holds a
    second decision, else routed again as a new item would be (or left withdrawn)."""
    now = now or utcnow()
    review = session.get(Review, image_id)
    draft = session.get(Draft, review.draft_id) if review.draft_id else None
    verdict = _first_verdict(review, draft)
    if verdict is None or review.reviewer is None:  # undone, skipped or sent back: nothing to compare yet
        withdraw_second_opinion(session, image_id=image_id, now=now)
        return None
    opinion = session.exec(select(SecondOpinion).where(SecondOpinion.image_id == image_id)).first()
    if opinion is None or (opinion.state == OpinionState.withdrawn and opinion.second_verdict is None):
        because = _route_reason(image_id, verdict, policy)
        if because is None:
            return None
        opinion = opinion or SecondOpinion(image_id=image_id, routed_because=because,
                                           first_reviewer=review.reviewer, first_verdict=verdict, created_at=now)
        opinion.routed_because = because
    opinion.first_reviewer, opinion.first_verdict, opinion.draft_id = review.reviewer, verdict, review.draft_id
    opinion.first_caption, opinion.first_reason = review.final_caption, review.reject_reason
    opinion.first_decided_at, opinion.updated_at = review.decided_at or now, now
    if opinion.second_reviewer == review.reviewer or opinion.claimed_by == review.reviewer:
        _clear_second(opinion)  # the new first reviewer was its second: it needs someone else
    _settle(opinion)
    opinion.version += 1 if opinion.id is not None else 0
    session.add(opinion)
    session.flush()
    return opinion


def _route_reason(image_id: int, verdict: Verdict, policy: QcPolicy) -> RouteReason | None:
    if not policy.enabled:
        return None
    if in_sample(image_id, policy.sample_fraction):
        return RouteReason.sample
    if policy.route_edited and verdict == Verdict.edit:
        return RouteReason.edited
    return None


def withdraw_second_opinion(session: Session, *, image_id: int, now: datetime | None = None
                            ) -> SecondOpinion | None:
    """The item went back to review (undone or sent back): an open second opinion (waiting, or a
    dispute) is closed as withdrawn, never deleted, so no queue offers it; returns it if it was."""
    opinion = session.exec(select(SecondOpinion).where(SecondOpinion.image_id == image_id,
                                                       SecondOpinion.state.in_(OPEN))).first()
    if opinion is None:
        return None
    opinion.state, opinion.claimed_by, opinion.claim_expires_at = OpinionState.withdrawn, None, None
    opinion.updated_at, opinion.version = now or utcnow(), opinion.version + 1
    session.add(opinion)
    session.flush()
    return opinion


def _clear_second(opinion: SecondOpinion) -> None:
    opinion.second_reviewer = opinion.second_verdict = opinion.second_caption = None
    opinion.second_reason = opinion.second_note = opinion.second_decided_at = None
    opinion.claimed_by = opinion.claim_expires_at = None


def _settle(opinion: SecondOpinion) -> None:
    """State from the two decisions (a redone first decision re-opens a settled comparison)."""
    opinion.adjudicator = opinion.adjudication = opinion.adjudicated_at = None
    if opinion.second_verdict is None:
        opinion.state = OpinionState.waiting
        return
    agree = verdicts_agree(opinion.first_verdict, opinion.first_caption, opinion.second_verdict,
                           opinion.second_caption)
    opinion.state = OpinionState.agreed if agree else OpinionState.disputed


def route_decided(session: Session, *, policy: QcPolicy, now: datetime | None = None) -> int:
    """Apply the policy to items decided before it was switched on; returns how many were routed."""
    if not policy.enabled:
        return 0
    routed = select(SecondOpinion.image_id).where(SecondOpinion.state != OpinionState.withdrawn)
    ids = session.exec(select(Review.image_id).where(
        Review.state.in_([ReviewState.approved, ReviewState.rejected]), Review.reviewer.is_not(None),
        Review.image_id.not_in(routed)).order_by(Review.image_id)).all()
    return sum(route_decision(session, image_id=i, policy=policy, now=now) is not None for i in ids)


def _free(now: datetime):
    return or_(SecondOpinion.claimed_by.is_(None), SecondOpinion.claim_expires_at <= now)


def claim_second(session: Session, *, reviewer: str, now: datetime | None = None,
                 ttl: timedelta = CLAIM_TTL) -> SecondItem | None:
    """Claim the next waiting second review for `reviewer` (their live claim first); never an item
    they decided first. None when there is nothing for them."""
    now = now or utcnow()
    decided = select(Review.image_id).where(Review.state.in_([ReviewState.approved, ReviewState.rejected]))
    mine = select(SecondOpinion).where(  # (an item sent back to review waits until it is decided again)
        SecondOpinion.state == OpinionState.waiting, SecondOpinion.first_reviewer != reviewer,
        SecondOpinion.image_id.in_(decided))
    opinion = session.exec(mine.where(SecondOpinion.claimed_by == reviewer, SecondOpinion.claim_expires_at > now)
                           .order_by(SecondOpinion.id).limit(1)).first()
    if opinion is None:
        stmt = mine.where(_free(now)).order_by(SecondOpinion.id).limit(1)
        opinion = session.exec(lock_for_claim(stmt, session)).first()
    if opinion is None:
        return None
    opinion.claimed_by, opinion.claim_expires_at = reviewer, now + ttl
    session.add(opinion)
    session.flush()
    return second_item(session, opinion=opinion)


def second_item(session: Session, *, opinion: SecondOpinion) -> SecondItem:
    image = session.get(Image, opinion.image_id)
    draft = session.get(Draft, opinion.draft_id) if opinion.draft_id else None
    return SecondItem(opinion_id=opinion.id, image_id=opinion.image_id, version=opinion.version,
                      label=image.label, png=image.png, draft_text=draft.text if draft else "",
                      flags=tuple(draft.flags) if draft else ())


def decide_second(session: Session, *, opinion_id: int, reviewer: str, verdict: Verdict, expected_version: int,
                  caption: str | None = None, reason: RejectReason | None = None, note: str | None = None,
                  now: datetime | None = None) -> SecondOpinion:
    """Record the second reviewer's decision and whether it agrees; the item's Review is untouched."""
    now = now or utcnow()
    opinion = lock_row(session, SecondOpinion, opinion_id)
    if opinion is None:
        raise InvalidActionError(f"No second review {opinion_id}.")
    if opinion.first_reviewer == reviewer:
        raise InvalidActionError("You decided this item first: a second opinion must come from someone else.")
    if opinion.version != expected_version or opinion.state != OpinionState.waiting:
        raise StaleWriteError(f"Second review {opinion_id} changed since you opened it; it was not saved.")
    if opinion.claimed_by not in (None, reviewer) and opinion.claim_expires_at and opinion.claim_expires_at > now:
        raise ClaimedError(f"Second review {opinion_id} is being done by {opinion.claimed_by}.")
    draft = session.get(Draft, opinion.draft_id) if opinion.draft_id else None
    if verdict == Verdict.reject:
        if reason is None:
            raise InvalidActionError("A reject needs a reason.")
        caption, reason = None, RejectReason(reason)
    else:
        caption = validate_caption(draft.text if verdict == Verdict.approve and draft else caption)
        reason = None
    opinion.second_reviewer, opinion.second_verdict, opinion.second_caption = reviewer, verdict, caption
    opinion.second_reason, opinion.second_note, opinion.second_decided_at = reason, note or None, now
    opinion.claimed_by = opinion.claim_expires_at = None
    opinion.updated_at = now
    opinion.version += 1
    _settle(opinion)
    session.add(opinion)
    session.flush()
    return opinion


def disputed(session: Session, *, limit: int | None = None) -> list[SecondOpinion]:
    """The adjudication queue, oldest first."""
    stmt = select(SecondOpinion).where(SecondOpinion.state == OpinionState.disputed).order_by(SecondOpinion.id)
    return list(session.exec(stmt.limit(limit) if limit else stmt).all())


def adjudicate(session: Session, *, opinion_id: int, curator: str, choice: Adjudication, expected_version: int,
               caption: str | None = None, reason: RejectReason | None = None,
               now: datetime | None = None) -> Review:
    """Settle a disputed item: keep one version, approve a merged caption, or reject. The item's
    Review takes the outcome, and the event log records it with the curator's name."""
    now = now or utcnow()
    opinion = lock_row(session, SecondOpinion, opinion_id)
    if opinion is None:
        raise InvalidActionError(f"No second review {opinion_id}.")
    if opinion.version != expected_version or opinion.state != OpinionState.disputed:
        raise StaleWriteError(f"Item {opinion.image_id} changed since you opened it; the adjudication was not saved.")
    if choice == Adjudication.first:
        caption, reason = opinion.first_caption, opinion.first_reason
    elif choice == Adjudication.second:
        caption, reason = opinion.second_caption, opinion.second_reason
    elif choice == Adjudication.merged:
        caption, reason = validate_caption(caption), None
    else:
        if reason is None:
            raise InvalidActionError("A reject needs a reason.")
        caption = None
    review = lock_row(session, Review, opinion.image_id)
    after = ReviewState.rejected if caption is None else ReviewState.approved
    session.add(ReviewEvent(
        image_id=review.image_id, reviewer=curator, action=ReviewAction.adjudicate, before_state=review.state,
        after_state=after, before_caption=review.final_caption, after_caption=caption,
        reject_reason=RejectReason(reason) if caption is None else None,
        note=f"adjudication: {choice.value}", created_at=now))
    review.state, review.final_caption = after, caption
    review.reject_reason = RejectReason(reason) if caption is None else None
    review.reviewer, review.decided_at, review.updated_at = curator, now, now
    review.version += 1
    review.claimed_by = review.claim_expires_at = None
    opinion.state, opinion.adjudication, opinion.adjudicator, opinion.adjudicated_at = (
        OpinionState.adjudicated, choice, curator, now)
    opinion.updated_at, opinion.version = now, opinion.version + 1
    session.add_all([review, opinion])
    session.flush()
    return review


def held_image_ids(session: Session) -> set[int]:
    """Items an export leaves out while QC is on: routed but not agreed or adjudicated yet."""
    return set(session.exec(select(SecondOpinion.image_id).where(SecondOpinion.state.in_(HELD))).all())


def held_approved_counts(session: Session) -> dict[str, int]:
    """Approved items per class that QC holds back (the balance check leaves them out)."""
    rows = session.exec(
        select(Review.label, func.count()).join(SecondOpinion, SecondOpinion.image_id == Review.image_id)
        .where(Review.state == ReviewState.approved, SecondOpinion.state.in_(HELD)).group_by(Review.label)
    ).all()
    return {lab: n for lab, n in rows}


def compared(session: Session) -> list[SecondOpinion]:
    """Every second opinion with both decisions (agreed, disputed or adjudicated; not a withdrawn one,
    whose first decision no longer stands)."""
    return list(session.exec(select(SecondOpinion).where(SecondOpinion.second_verdict.is_not(None),
                                                         SecondOpinion.state != OpinionState.withdrawn)
                             .order_by(SecondOpinion.id)).all())


def state_counts(session: Session) -> dict[str, int]:
    rows = session.exec(select(SecondOpinion.state, func.count()).group_by(SecondOpinion.state)).all()
    return {s.value: 0 for s in OpinionState} | {OpinionState(s).value: n for s, n in rows}
