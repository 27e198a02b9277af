"""Service behind the Review page: the queue, one decision and the next item in one round trip, undo.
(`upscale_png` and `flag_choices` are re-exported for the page's widgets.)

Every function takes the engine, does its work in one
short session, and returns plain data (dataclasses, DataFrames) that a page only renders.
Refusals from the store (stale view, claimed item, bad caption) come back as a message (naming another
reviewer only to a curator); a role that
may not review raises PermissionDenied. The reviewer recorded is always the signed-in `actor`.
"""
from __future__ import annotations

import difflib
import enum
from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlmodel import Session

from db.engine import session_scope
from db.errors import StoreError
from db.models import RejectReason, ReviewAction
from db.qc import QcPolicy, get_policy, route_decision
from db.review import QueueOrder, ReviewItem, claim_item, claim_next, decide, get_item, release_claims, undo_last
from pipeline.classes import CLASSES
from pipeline.data.images import upscale_png
from pipeline.identity import Actor, Role, require
from pipeline.services.overview import Progress, progress
from pipeline.teacher.flags import flag_choices

REJECT_REASON_TEXT: dict[RejectReason, str] = {
    RejectReason.wrong_object: "Wrong object: names something the image does not show as its subject",
    RejectReason.hallucination: "Hallucination: invents details (text, people, places) not in the image",
    RejectReason.too_vague: "Too vague: true but says almost nothing ('an image of a thing')",
    RejectReason.unreadable_image: "Unreadable image: even a human cannot tell what it shows",
    RejectReason.refusal: "Refusal: the teacher declined or hedged instead of describing",
    RejectReason.other: "Other: explain in the note",
}

DONE_TEXT = {ReviewAction.approve: "approved", ReviewAction.edit_approve: "approved with your edit",
             ReviewAction.reject: "rejected", ReviewAction.skip: "skipped"}


class DiffOp(str, enum.Enum):
    equal = "equal"
    removed = "removed"
    added = "added"


@dataclass(frozen=True)
class QueueSpec:
    """Which part of the queue the reviewer wants."""

    order: QueueOrder = QueueOrder.balanced
    label: str | None = None
    flag: str | None = None
    target_per_class: int = 10
    qc_default: QcPolicy = QcPolicy()  # the settings' QC policy, in force until a curator sets one

    @property
    def targets(self) -> dict[str, int]:
        return {c: self.target_per_class for c in CLASSES}


@dataclass(frozen=True)
class ReviewView:
    """What the review page shows after one call: the item in hand, progress, and any message."""

    item: ReviewItem | None
    progress: Progress
    ok: bool = True
    message: str | None = None  # why an action was refused (ok False) or what was saved


def _view(session: Session, spec: QueueSpec, item: ReviewItem | None, *, ok: bool = True,
          message: str | None = None) -> ReviewView:
    return ReviewView(item=item, progress=progress(session, targets=spec.targets), ok=ok, message=message)


def _said(err: StoreError, actor: Actor) -> str:
    """A refusal as this actor may read it: another reviewer's name only for a curator."""
    return err.message_for(may_see_names=actor.can(Role.curator))


def _next(session: Session, actor: Actor, spec: QueueSpec) -> ReviewItem | None:
    return claim_next(session, reviewer=actor.name, order=spec.order, targets=spec.targets,
                      label=spec.label, flag=spec.flag)


def open_review(engine: Engine, *, actor: Actor, spec: QueueSpec, image_id: int | None = None,
                fresh: bool = False) -> ReviewView:
    """The item to review: `image_id` if given and free, else the reviewer's next claimed item.

    `fresh` drops the reviewer's claims first (the queue filters changed: claim anew).
    """
    require(actor, Role.reviewer, "review captions")
    try:
        with session_scope(engine) as s:
            if fresh:
                release_claims(s, reviewer=actor.name)
            if image_id is not None:
                return _view(s, spec, claim_item(s, image_id=image_id, reviewer=actor.name))
            return _view(s, spec, _next(s, actor, spec))
    except StoreError as err:
        with session_scope(engine) as s:
            return _view(s, spec, _next(s, actor, spec), ok=False, message=_said(err, actor))


def submit_decision(
    engine: Engine, *, actor: Actor, spec: QueueSpec, image_id: int, expected_version: int, action: ReviewAction,
    caption: str | None = None, reason: RejectReason | None = None, note: str | None = None,
) -> ReviewView:
    """Decide one item and claim the next in one round trip; a refusal keeps the item in hand."""
    require(actor, Role.reviewer, "decide review items")
    try:
        with session_scope(engine) as s:
            decide(s, image_id=image_id, reviewer=actor.name, action=action,
                   expected_version=expected_version, caption=caption, reason=reason, note=note)
            route_decision(s, image_id=image_id, policy=get_policy(s, default=spec.qc_default))
            done = f"Item {image_id} {DONE_TEXT.get(action, action.value)}: saved."
            return _view(s, spec, _next(s, actor, spec), message=done)
    except StoreError as err:
        with session_scope(engine) as s:
            item = get_item(s, image_id=image_id)
            if item.version != expected_version or item.claimed_by not in (None, actor.name):
                item = _next(s, actor, spec)  # the item moved on: show the reviewer something fresh
            return _view(s, spec, item, ok=False, message=_said(err, actor))


def undo(engine: Engine, *, actor: Actor, spec: QueueSpec) -> ReviewView:
    """Undo the reviewer's own last decision and put that item back in their hands."""
    require(actor, Role.reviewer, "undo review decisions")
    try:
        with session_scope(engine) as s:
            review = undo_last(s, reviewer=actor.name)
            route_decision(s, image_id=review.image_id, policy=get_policy(s, default=spec.qc_default))
            item = get_item(s, image_id=review.image_id)
            return _view(s, spec, item, message=f"Item {item.image_id}: last decision undone.")
    except StoreError as err:
        with session_scope(engine) as s:
            return _view(s, spec, _next(s, actor, spec), ok=False, message=_said(err, actor))


def word_diff(before: str, after: str) -> list[tuple[DiffOp, str]]:
    """Word-level diff of the draft against the edited caption, as (op, words) runs."""
    a, b = before.split(), after.split()
    out: list[tuple[DiffOp, str]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            out.append((DiffOp.equal, " ".join(a[i1:i2])))
            continue
        if i2 > i1:
            out.append((DiffOp.removed, " ".join(a[i1:i2])))
        if j2 > j1:
            out.append((DiffOp.added, " ".join(b[j1:j2])))
    return out




__all__ = ["DiffOp", "QueueOrder", "QueueSpec", "ReviewView", "Progress", "REJECT_REASON_TEXT", "open_review",
           "submit_decision", "undo", "word_diff", "upscale_png", "flag_choices"]
