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
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from sqlmodel import Session

from db.engine import session_scope
from db.errors import StoreError
from db.models import RejectReason, ReviewAction
from db.qc import QcPolicy, get_policy, route_decision
from db.review import (
    QueueOrder,
    ReviewItem,
    claim_item,
    claim_next,
    decide,
    get_item,
    held_versions,
    release_claims,
    undo_last,
)
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
            done = _decide(s, actor, spec, image_id=image_id, expected_version=expected_version, action=action,
                           caption=caption, reason=reason, note=note)
            return _view(s, spec, _next(s, actor, spec), message=done)
    except StoreError as err:
        with session_scope(engine) as s:
            item = get_item(s, image_id=image_id)
            if item.version != expected_version or item.claimed_by not in (None, actor.name):
                item = _next(s, actor, spec)  # the item moved on: show the reviewer something fresh
            return _view(s, spec, item, ok=False, message=_said(err, actor))


def _decide(s: Session, actor: Actor, spec: QueueSpec, *, image_id: int, expected_version: int,
            action: ReviewAction, caption: str | None, reason: RejectReason | None, note: str | None) -> str:
    """The one way a first decision is made (page and card): decide, route to QC; what was saved."""
    decide(s, image_id=image_id, reviewer=actor.name, action=action,
           expected_version=expected_version, caption=caption, reason=reason, note=note)
    route_decision(s, image_id=image_id, policy=get_policy(s, default=spec.qc_default))
    return f"Item {image_id} {DONE_TEXT.get(action, action.value)}: saved."


def undo(engine: Engine, *, actor: Actor, spec: QueueSpec) -> ReviewView:
    """Undo the reviewer's own last decision and put that item back in their hands."""
    require(actor, Role.reviewer, "undo review decisions")
    try:
        with session_scope(engine) as s:
            item = _undo(s, actor, spec)
            return _view(s, spec, item, message=f"Item {item.image_id}: last decision undone.")
    except StoreError as err:
        with session_scope(engine) as s:
            return _view(s, spec, _next(s, actor, spec), ok=False, message=_said(err, actor))


def _undo(s: Session, actor: Actor, spec: QueueSpec) -> ReviewItem:
    review = undo_last(s, reviewer=actor.name)
    route_decision(s, image_id=review.image_id, policy=get_policy(s, default=spec.qc_default))
    return get_item(s, image_id=review.image_id)


def review_progress(engine: Engine, *, spec: QueueSpec) -> Progress:
    """Approved pairs toward the targets, overall and per class."""
    with session_scope(engine) as s:
        return progress(s, targets=spec.targets)


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



# --- the browser review card: decisions arrive as a numbered queue, the next items are claimed ahead ---

CARD_ACTIONS = {a.value: a for a in (ReviewAction.approve, ReviewAction.edit_approve, ReviewAction.reject,
                                     ReviewAction.skip)}
MAX_NOTE_CHARS = 2000


@dataclass(frozen=True)
class CardResult:
    """What became of one decision the card sent: saved (ok) or refused, with the message to show."""

    client: str
    seq: int
    ok: bool
    message: str
    image_id: int | None = None


@dataclass
class CardQueue:
    """One session's review card: the last decision applied per card instance (`client`, a random id the
    browser makes when the card mounts), recent results, and the ids in hand in the order shown."""

    acked: dict[str, int] = field(default_factory=dict)
    results: list[CardResult] = field(default_factory=list)
    hand: list[int] = field(default_factory=list)
    keep_results: int = 100  # more than one rerun can apply (the hand plus an undo), so none is missed
    seen: dict[int, ReviewItem] = field(default_factory=dict)  # the items in hand as last read (by id)


@dataclass(frozen=True)
class CardView:
    items: list[ReviewItem]
    progress: Progress
    message: str | None = None  # why the item asked for could not be opened


def apply_card_decisions(engine: Engine, *, actor: Actor, spec: QueueSpec, queue: CardQueue, client: str,
                         decisions: list[dict]) -> list[CardResult]:
    """Apply, in `seq` order, each decision the card sent that this queue has not applied yet (the card
    resends every unacknowledged one: a decision is applied exactly once), each in its own session
    through the same path as the page's buttons; a refusal is a result, never an exception."""
    require(actor, Role.reviewer, "decide review items")
    done = []
    for d in sorted(decisions, key=lambda d: _seq(d)):
        seq = _seq(d)
        if seq <= queue.acked.get(client, 0):
            continue
        result = _apply_one(engine, actor, spec, queue, client, seq, d)
        queue.acked[client] = seq  # acknowledged in the same step as applied (no st call in between)
        queue.results = [*queue.results, result][-queue.keep_results:]
        done.append(result)
    return done


def _seq(d: dict) -> int:
    seq = d.get("seq") if isinstance(d, dict) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else 0


def _apply_one(engine, actor, spec, queue, client, seq, d) -> CardResult:
    action, image_id = d.get("action"), d.get("image_id")
    try:
        with session_scope(engine) as s:
            if action == "undo":
                item = _undo(s, actor, spec)
                queue.hand = [item.image_id, *[i for i in queue.hand if i != item.image_id]]
                return CardResult(client, seq, True, f"Item {item.image_id}: last decision undone.", item.image_id)
            if action not in CARD_ACTIONS or not isinstance(image_id, int) or not isinstance(d.get("version"), int):
                return CardResult(client, seq, False, f"Not saved: {action!r} is not a decision the card sends.")
            note, caption = d.get("note") or None, d.get("caption")
            if any(v is not None and not isinstance(v, str) for v in (note, caption)):
                return CardResult(client, seq, False, "Not saved: the caption and note must be text.", image_id)
            reason = d.get("reason")
            if reason is not None and reason not in {r.value for r in RejectReason}:
                return CardResult(client, seq, False, f"Not saved: {reason!r} is not a reject reason.", image_id)
            message = _decide(s, actor, spec, image_id=image_id, expected_version=d["version"],
                              action=CARD_ACTIONS[action], caption=caption,
                              reason=RejectReason(reason) if reason else None,
                              note=note[:MAX_NOTE_CHARS] if note else None)
            return CardResult(client, seq, True, message, image_id)
    except StoreError as err:
        return CardResult(client, seq, False, f"Not saved: {_said(err, actor)}", image_id)


def card_view(engine: Engine, *, actor: Actor, spec: QueueSpec, queue: CardQueue, count: int,
              fresh: bool = False, image_id: int | None = None) -> CardView:
    """The items in the reviewer's hand, in the order the card shows them: `image_id` first if given and
    free, those still claimed by them and undecided, then newly claimed ones up to `count` (the one shown
    plus those preloaded). `fresh` drops their claims first (the queue filters changed)."""
    require(actor, Role.reviewer, "review captions")
    message = None
    if fresh:
        with session_scope(engine) as s:
            release_claims(s, reviewer=actor.name)
            queue.hand = []
    if image_id is not None:
        try:
            with session_scope(engine) as s:
                claim_item(s, image_id=image_id, reviewer=actor.name)
                queue.hand = [image_id, *[i for i in queue.hand if i != image_id]]
        except StoreError as err:
            message = _said(err, actor)
    with session_scope(engine) as s:
        held = held_versions(s, reviewer=actor.name, image_ids=queue.hand)  # one query, not one per item
        items = []
        for image_id in (i for i in queue.hand if i in held):
            seen = queue.seen.get(image_id)
            fresh_enough = seen is not None and (seen.version, seen.draft_id) == held[image_id]
            items.append(seen if fresh_enough else get_item(s, image_id=image_id))
        while len(items) < count:
            item = claim_next(s, reviewer=actor.name, order=spec.order, targets=spec.targets, label=spec.label,
                              flag=spec.flag, exclude=[i.image_id for i in items])
            if item is None or item.image_id in {i.image_id for i in items}:
                break
            items.append(item)
        queue.hand = [i.image_id for i in items]
        queue.seen = {i.image_id: i for i in items}
        return CardView(items=items, progress=progress(s, targets=spec.targets), message=message)



__all__ = ["CardQueue", "CardResult", "CardView", "apply_card_decisions", "card_view", "DiffOp", "QueueOrder",
           "QueueSpec", "ReviewView", "Progress", "REJECT_REASON_TEXT", "open_review", "review_progress",
           "submit_decision", "undo", "word_diff", "upscale_png", "flag_choices"]
