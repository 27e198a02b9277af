"""Service behind the Second review and Adjudicate pages: blind second opinions, the QC policy, and
the curators' adjudication of disagreements (rules in db/qc.py, figures in pipeline/agreement.py).

Every state change takes the signed-in `actor` and checks the role; refusals from the store come back
as a message, a role that may not act raises PermissionDenied.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlmodel import Session

from db import qc as store
from db.engine import session_scope
from db.errors import StoreError
from db.models import Adjudication, Draft, Image, RejectReason, SecondOpinion, Verdict
from db.qc import QcPolicy, SecondItem
from pipeline.agreement import AgreementFigures, figures, pairs_of, similarity
from pipeline.identity import Actor, Role, require
from pipeline.services.review import REJECT_REASON_TEXT, DiffOp, word_diff
from pipeline.settings import Settings

DONE_TEXT = {Verdict.approve: "approved", Verdict.edit: "approved with your edit", Verdict.reject: "rejected"}
CHOICE_TEXT = {Adjudication.first: "kept the first version", Adjudication.second: "kept the second version",
               Adjudication.merged: "approved the merged caption", Adjudication.rejected: "rejected"}


@dataclass(frozen=True)
class SecondView:
    """The second review in hand (None: nothing waits for this reviewer) and any message."""

    item: SecondItem | None
    ok: bool = True
    message: str | None = None


@dataclass(frozen=True)
class Side:
    """One reviewer's version of a disputed item."""

    reviewer: str
    verdict: Verdict
    caption: str | None
    reason: str | None  # the reject reason's text


@dataclass(frozen=True)
class Dispute:
    opinion_id: int
    version: int
    image_id: int
    label: str
    png: bytes
    draft_text: str
    first: Side
    second: Side
    similarity: float | None  # ROUGE-L of the two captions when both approved
    diff: list[tuple[DiffOp, str]]  # first caption -> second caption


@dataclass(frozen=True)
class AdjudicationView:
    policy: QcPolicy
    counts: dict[str, int]  # second opinions per state
    figures: AgreementFigures
    disputes: list[Dispute]


def open_second_review(engine: Engine, *, actor: Actor) -> SecondView:
    """Claim the next second review for `actor` (never an item they decided first)."""
    require(actor, Role.reviewer, "do second reviews")
    with session_scope(engine) as s:
        return SecondView(item=store.claim_second(s, reviewer=actor.name))


def submit_second_opinion(engine: Engine, *, actor: Actor, opinion_id: int, expected_version: int, verdict: Verdict,
                          caption: str | None = None, reason: RejectReason | None = None,
                          note: str | None = None) -> SecondView:
    """Record `actor`'s blind decision and claim their next second review in one round trip."""
    require(actor, Role.reviewer, "record second opinions")
    try:
        with session_scope(engine) as s:
            store.decide_second(s, opinion_id=opinion_id, reviewer=actor.name, verdict=verdict,
                                expected_version=expected_version, caption=caption, reason=reason, note=note)
            done = f"Second opinion {DONE_TEXT[verdict]}: saved."
            return SecondView(item=store.claim_second(s, reviewer=actor.name), message=done)
    except StoreError as err:
        with session_scope(engine) as s:
            return SecondView(item=store.claim_second(s, reviewer=actor.name), ok=False, message=str(err))


def _side(reviewer: str, verdict: Verdict, caption: str | None, reason: RejectReason | None) -> Side:
    return Side(reviewer=reviewer, verdict=Verdict(verdict), caption=caption,
                reason=REJECT_REASON_TEXT[RejectReason(reason)] if reason else None)


def _dispute(s: Session, o: SecondOpinion) -> Dispute:
    image = s.get(Image, o.image_id)
    draft = s.get(Draft, o.draft_id) if o.draft_id else None
    both = o.first_caption is not None and o.second_caption is not None
    return Dispute(
        opinion_id=o.id, version=o.version, image_id=o.image_id, label=image.label, png=image.png,
        draft_text=draft.text if draft else "",
        first=_side(o.first_reviewer, o.first_verdict, o.first_caption, o.first_reason),
        second=_side(o.second_reviewer, o.second_verdict, o.second_caption, o.second_reason),
        similarity=similarity(o.first_caption, o.second_caption) if both else None,
        diff=word_diff(o.first_caption or "", o.second_caption or ""),
    )


def adjudication_view(settings: Settings, engine: Engine, *, limit: int = 20) -> AdjudicationView:
    """The policy in force, the second opinions per state, overall agreement, and the oldest disputes."""
    with session_scope(engine) as s:
        return AdjudicationView(
            policy=store.get_policy(s, default=settings.qc_default), counts=store.state_counts(s),
            figures=figures(pairs_of(store.compared(s))),
            disputes=[_dispute(s, o) for o in store.disputed(s, limit=limit)])


def set_policy(engine: Engine, *, actor: Actor, enabled: bool, sample_fraction: float,
               route_edited: bool) -> tuple[bool, str]:
    """Switch QC on or off and set what is routed; recorded with the curator's name."""
    require(actor, Role.curator, "change the quality-control policy")
    try:
        policy = QcPolicy(enabled=enabled, sample_fraction=sample_fraction, route_edited=route_edited)
        with session_scope(engine) as s:
            store.set_policy(s, policy=policy, curator=actor.name)
    except StoreError as err:
        return False, str(err)
    if not enabled:
        return True, "Quality control is off: nothing is routed, exports ignore second opinions."
    edited = " and every edited item" if route_edited else ""
    return True, f"Quality control is on: {sample_fraction:.0%} of decided items{edited} go to a second reviewer."


def route_existing(settings: Settings, engine: Engine, *, actor: Actor) -> tuple[bool, str]:
    """Apply the policy to the items decided before QC was switched on."""
    require(actor, Role.curator, "route decided items to second review")
    with session_scope(engine) as s:
        policy = store.get_policy(s, default=settings.qc_default)
        if not policy.enabled:
            return False, "Switch quality control on first."
        n = store.route_decided(s, policy=policy)
    return True, f"{n} already decided item(s) routed to a second review."


def settle(engine: Engine, *, actor: Actor, opinion_id: int, expected_version: int, choice: Adjudication,
           caption: str | None = None, reason: RejectReason | None = None) -> tuple[bool, str]:
    """Adjudicate one disputed item; the outcome and the curator's name go to the event log."""
    require(actor, Role.curator, "adjudicate disagreements")
    try:
        with session_scope(engine) as s:
            review = store.adjudicate(s, opinion_id=opinion_id, curator=actor.name, choice=choice,
                                      expected_version=expected_version, caption=caption, reason=reason)
    except StoreError as err:
        return False, str(err)
    return True, f"Item {review.image_id}: {CHOICE_TEXT[choice]}."
