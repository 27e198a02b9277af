"""Review counts per class and state (and how many approvals were edits), read from `review_tally`,
which the database's own triggers keep exact in the same transaction as every write to `review`
(migration 0008): progress and the per-class charts read a few dozen rows, not a million."""
from __future__ import annotations

from sqlalchemy import func, text
from sqlmodel import Session, select

from db.models import Draft, Review, ReviewState, ReviewTally

FOLD_ROWS = 2000
"""PostgreSQL: when the deltas outnumber this, a reader folds them into one row per key."""

FOLD_LOCK = 0x7461_6C6C  # PostgreSQL advisory lock key ("tall"): held by the one transaction folding

Key = tuple[str, ReviewState, bool]  # (label, state, edited)

_FOLD = text(
    "WITH gone AS (DELETE FROM review_tally RETURNING label, state, edited, n) "
    "INSERT INTO review_tally (label, state, edited, n) SELECT label, state, edited, SUM(n) FROM gone "
    "GROUP BY label, state, edited HAVING SUM(n) <> 0")


def tally(session: Session) -> dict[Key, int]:
    """{(label, state, edited): rows}, keys with no rows left out."""
    rows = session.exec(select(ReviewTally.label, ReviewTally.state, ReviewTally.edited,
                               func.sum(ReviewTally.n), func.count())
                        .group_by(ReviewTally.label, ReviewTally.state, ReviewTally.edited)).all()
    if sum(r[4] for r in rows) > FOLD_ROWS:
        fold(session)
    return {(lab, ReviewState(st), bool(ed)): int(n) for lab, st, ed, n, _ in rows if n}


def fold(session: Session) -> None:
    """PostgreSQL: replace the deltas by one row per key with their sum, in the caller's transaction. Safe
    beside concurrent writers (they only insert: a delta committed after this statement began stays and is
    not read) and readers (they see the deltas or their sums, never both). SQLite keeps one row per key
    already: nothing to do."""
    if session.get_bind().dialect.name != "postgresql":
        return
    # one folder at a time (the others just read the deltas): two DELETEs over a large table could lock
    # its rows in different orders and deadlock
    if session.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": FOLD_LOCK}).scalar():
        session.execute(_FOLD)


def counts_by_class(session: Session) -> dict[str, dict[str, int]]:
    """{label: {state: n}} for every label in the store, every state present (0 when none)."""
    out: dict[str, dict[str, int]] = {}
    for (lab, state, _), n in tally(session).items():
        per = out.setdefault(lab, {s.value: 0 for s in ReviewState})
        per[state.value] += n
    return dict(sorted(out.items()))


def approved_counts(session: Session) -> dict[str, int]:
    out: dict[str, int] = {}
    for (lab, state, _), n in tally(session).items():
        if state == ReviewState.approved:
            out[lab] = out.get(lab, 0) + n
    return out


def edited_counts(session: Session) -> dict[str, int]:
    """{label: approved items whose caption is not the draft's text} (labels with none left out)."""
    return edited_of(tally(session))


def edited_of(kept: dict[Key, int]) -> dict[str, int]:
    """edited_counts from a tally already read."""
    out: dict[str, int] = {}
    for (lab, _, edited), n in kept.items():
        if edited:
            out[lab] = out.get(lab, 0) + n
    return out


def recount(session: Session) -> dict[Key, int]:
    """The same figures counted from `review` itself (a full scan: for checks and tests)."""
    draft_text = select(Draft.text).where(Draft.id == Review.draft_id).scalar_subquery()
    edited = (Review.state == ReviewState.approved) & func.coalesce(
        func.coalesce(Review.final_caption, "") != draft_text, Review.final_caption.is_not(None))
    rows_ = select(Review.label, Review.state, edited.label("edited")).subquery()
    rows = session.exec(select(rows_.c.label, rows_.c.state, rows_.c.edited, func.count())
                        .group_by(rows_.c.label, rows_.c.state, rows_.c.edited)).all()
    out: dict[Key, int] = {}
    for lab, state, ed, n in rows:
        key = (lab, ReviewState(state), bool(ed))
        out[key] = out.get(key, 0) + n
    return out
