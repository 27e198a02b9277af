"""Reviewer statistics: per reviewer and per day, from the event log and the second opinions.

Decisions are approvals, edits, rejects and skips (first reviews from the event log, not undone, and
second opinions). Active time: the gaps between a reviewer's consecutive decisions of one day, each
capped at IDLE_CAP (a longer gap is a break); decisions/hour counts the decisions after the first of
the day over that time. The same numbers feed the Stats page and `python -m pipeline stats`.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta

from sqlmodel import Session, select

from db.models import Draft, Review, ReviewAction, ReviewEvent, SecondOpinion, Verdict
from db.qc import compared
from pipeline.agreement import AgreementFigures, figures, pairs_of, per_reviewer, words_changed

IDLE_CAP = timedelta(minutes=5)
_VERDICT = {ReviewAction.approve: Verdict.approve, ReviewAction.edit_approve: Verdict.edit,
            ReviewAction.reject: Verdict.reject}


@dataclass(frozen=True)
class Decision:
    reviewer: str
    at: datetime
    verdict: Verdict | None  # None: a skip
    reason: str | None
    edit_words: int | None  # words changed against the draft, for edits
    second_opinion: bool


@dataclass(frozen=True)
class ReviewerDay:
    """One row of the statistics table (day None: all days of that reviewer)."""

    reviewer: str
    day: str | None
    decisions: int
    second_opinions: int
    active_hours: float
    decisions_per_hour: float | None
    approve_share: float
    edit_share: float
    reject_share: float
    skip_share: float
    top_reject_reasons: str
    mean_edit_words: float | None
    qc_items: int
    agreement_rate: float | None
    kappa: float | None


@dataclass(frozen=True)
class ReviewerStats:
    per_day: list[ReviewerDay]
    per_reviewer: list[ReviewerDay]
    overall: AgreementFigures

    def as_dict(self) -> dict:
        return {"per_reviewer": [asdict(r) for r in self.per_reviewer],
                "per_day": [asdict(r) for r in self.per_day], "agreement_overall": self.overall.as_dict()}


def decisions(session: Session) -> list[Decision]:
    """Every decision of every reviewer, oldest first."""
    drafts = dict(session.exec(select(Review.image_id, Draft.text).join(Draft, Draft.id == Review.draft_id)).all())
    events = session.exec(select(ReviewEvent).where(
        ReviewEvent.action.in_([*_VERDICT, ReviewAction.skip]), ReviewEvent.undone.is_(False))).all()
    out = [Decision(e.reviewer, e.created_at, _VERDICT.get(ReviewAction(e.action)),
                    e.reject_reason.value if e.reject_reason else None,
                    words_changed(drafts.get(e.image_id, ""), e.after_caption or "")
                    if e.action == ReviewAction.edit_approve else None, False) for e in events]
    seconds = session.exec(select(SecondOpinion).where(SecondOpinion.second_verdict.is_not(None))).all()
    opinion_drafts = dict(session.exec(select(Draft.id, Draft.text).where(
        Draft.id.in_([o.draft_id for o in seconds if o.draft_id]))).all())
    out += [Decision(o.second_reviewer, o.second_decided_at, Verdict(o.second_verdict),
                     o.second_reason.value if o.second_reason else None,
                     words_changed(opinion_drafts.get(o.draft_id, ""), o.second_caption or "")
                     if o.second_verdict == Verdict.edit else None, True) for o in seconds]
    return sorted(out, key=lambda d: (d.at, d.reviewer))


def active_seconds(times: list[datetime]) -> float:
    times = sorted(times)
    return sum(min(b - a, IDLE_CAP).total_seconds() for a, b in zip(times, times[1:]))


def _row(reviewer: str, day: date | None, items: list[Decision], qc: AgreementFigures) -> ReviewerDay:
    n = len(items)
    by_day: dict[date, list[datetime]] = defaultdict(list)
    for d in items:
        by_day[d.at.date()].append(d.at)
    active = sum(active_seconds(ts) for ts in by_day.values())
    counted = n - len(by_day)  # the first decision of each day only starts the clock
    verdicts = Counter(d.verdict for d in items)
    reasons = Counter(d.reason for d in items if d.reason)
    edits = [d.edit_words for d in items if d.edit_words is not None]
    return ReviewerDay(
        reviewer=reviewer, day=day.isoformat() if day else None, decisions=n,
        second_opinions=sum(d.second_opinion for d in items), active_hours=round(active / 3600, 4),
        decisions_per_hour=round(counted / (active / 3600), 2) if active > 0 else None,
        approve_share=verdicts[Verdict.approve] / n, edit_share=verdicts[Verdict.edit] / n,
        reject_share=verdicts[Verdict.reject] / n, skip_share=verdicts[None] / n,
        top_reject_reasons=", ".join(f"{r} ({k})" for r, k in reasons.most_common(3)),
        mean_edit_words=sum(edits) / len(edits) if edits else None,
        qc_items=qc.n_items, agreement_rate=qc.agreement_rate, kappa=qc.kappa,
    )


def reviewer_stats(session: Session) -> ReviewerStats:
    """Per reviewer and day, per reviewer over all days, and the overall agreement."""
    all_decisions = decisions(session)
    opinions = compared(session)
    pairs = pairs_of(opinions)
    per_name = per_reviewer(pairs)
    none = figures([])
    groups: dict[tuple[str, date], list[Decision]] = defaultdict(list)
    for d in all_decisions:
        groups[(d.reviewer, d.at.date())].append(d)
    per_day = []
    for (name, day), items in sorted(groups.items()):
        # agreement on the items compared that day (the day of the second decision)
        day_pairs = [p for p, o in zip(pairs, opinions) if o.second_decided_at.date() == day
                     and name in (p.first_reviewer, p.second_reviewer)]
        per_day.append(_row(name, day, items, figures(day_pairs)))
    names = sorted({d.reviewer for d in all_decisions})
    per_rev = [_row(n, None, [d for d in all_decisions if d.reviewer == n], per_name.get(n, none)) for n in names]
    return ReviewerStats(per_day=per_day, per_reviewer=per_rev, overall=figures(pairs))
