"""Service behind the Browse page: one page of items with thumbnails, filtered in SQL (keyset
pagination by image id, so a page costs the same at a million items; filters that must look at each
row look at SCAN_ROWS items at most per page), plus per-class states and rates from the tally the
database keeps (`flag_choices` is re-exported for the flag filter)."""
from __future__ import annotations

import base64
import functools
from dataclasses import dataclass, field

import pandas as pd
from sqlalchemy import String, and_, cast, func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from db.engine import session_scope
from db.models import Draft, Image, Review, ReviewState
from db.review import reviewer_names
from db.tally import edited_of, tally
from pipeline.data.images import upscale_png
from pipeline.teacher.flags import flag_choices, flag_label

__all__ = ["BrowseFilters", "BrowseView", "browse_view", "flag_choices"]


@dataclass(frozen=True)
class BrowseFilters:
    """Browse page filters; None / empty means 'any'."""

    labels: tuple[str, ...] = ()
    states: tuple[ReviewState, ...] = ()
    reviewer: str | None = None
    flag: str | None = None
    text: str = ""
    min_chars: int = 0
    max_chars: int | None = None
    thumb_size: int = 64
    page_size: int = 100  # items per page
    after_id: int = 0  # keyset pagination: items with a larger image id (0: the first page)


@dataclass(frozen=True)
class BrowseView:
    items: pd.DataFrame  # one page of items, thumbnail as a data URI
    rates: pd.DataFrame  # per class: approved, rejected, edited, approval_rate, edit_rate
    states: pd.DataFrame  # long form: label, state, n (for a stacked bar chart)
    reviewers: list[str] = field(default_factory=list)
    next_after_id: int | None = None  # pass as after_id for the next page; None: this is the last one
    searched_to: int | None = None  # set when the scan budget ended this page early: items up to this id were
    # looked at, fewer than a page matched, and the next page searches on from here


SCAN_ROWS = 25_000
"""Most items one page looks at row by row (auto-flag, caption text or length filters): a filter that
matches few or none answers a page within a bounded time, and Next page searches on (about 2-3 µs a row)."""


@functools.lru_cache(maxsize=4096)  # by content: a rerun or a page seen again re-encodes nothing
def _data_uri(png: bytes, size: int) -> str:
    return "data:image/png;base64," + base64.b64encode(upscale_png(png, size=size)).decode("ascii")


def _caption():
    return func.coalesce(Review.final_caption, Draft.text, "")


def _indexed(f: BrowseFilters) -> list:
    """The conditions an index answers (class, state, reviewer) and the page's start."""
    conds = [Review.image_id > f.after_id]
    if f.labels:
        conds.append(Review.label.in_(f.labels))
    if f.states:
        conds.append(Review.state.in_([ReviewState(s) for s in f.states]))
    if f.reviewer:
        conds.append(Review.reviewer == f.reviewer)
    return conds


def _scanned(f: BrowseFilters) -> list:
    """The conditions only a look at each row answers (auto-flag, caption text and length)."""
    caption = _caption()
    conds = []
    if f.flag:  # flags are a JSON list of values: match the quoted value in its text (clean drafts skipped first)
        conds += [Review.flag_count > 0, cast(Draft.flags, String).contains(f'"{f.flag}"', autoescape=True)]
    if f.text:
        conds.append(func.lower(caption).contains(f.text.lower(), autoescape=True))
    if f.min_chars:
        conds.append(func.length(caption) >= f.min_chars)
    if f.max_chars is not None:
        conds.append(func.length(caption) <= f.max_chars)
    return conds


def _window_end(session: Session, f: BrowseFilters) -> int | None:
    """The image id of the SCAN_ROWS-th item the indexed filters let through (an index-only read), or
    None when no more follow it: a page with row-by-row filters looks at no more items than that."""
    stmt = (select(Review.image_id).where(and_(*_indexed(f))).order_by(Review.image_id)
            .offset(SCAN_ROWS - 1).limit(2))
    ends = session.exec(stmt).all()
    return ends[0] if len(ends) == 2 else None


def _rows(session: Session, f: BrowseFilters) -> tuple[list[dict], int | None]:
    """One page (page_size + 1 rows, to know whether another page follows) in image id order, and, when
    the row-by-row filters stopped at the scan budget before filling it, the last image id looked at."""
    conds, scanned, end = _indexed(f), _scanned(f), None
    if scanned and (end := _window_end(session, f)) is not None:
        conds.append(Review.image_id <= end)
    # the ids first, from review (and draft) alone: image rows (the PNG) are read for the page only
    ids = session.exec(select(Review.image_id).join(Draft, Draft.id == Review.draft_id, isouter=True)
                       .where(and_(*conds, *scanned)).order_by(Review.image_id).limit(f.page_size + 1)).all()
    stmt = (select(Review, Image.png, Draft.text, Draft.flags)
            .join(Image, Image.id == Review.image_id)
            .join(Draft, Draft.id == Review.draft_id, isouter=True)
            .where(Review.image_id.in_(list(ids))).order_by(Review.image_id))
    out = []
    for r, png, draft_text, flags in session.exec(stmt).all():
        caption = r.final_caption if r.final_caption is not None else (draft_text or "")
        out.append({
            "image_id": r.image_id, "png": png, "label": r.label, "state": ReviewState(r.state).value,
            "caption": caption, "chars": len(caption), "draft": draft_text or "",
            "edited": r.state == ReviewState.approved and r.final_caption != draft_text,
            "reviewer": r.reviewer or "", "flags": ", ".join(flag_label(f) for f in flags or []),
            "reject_reason": r.reject_reason.value if r.reject_reason else "",
        })
    return out, (end if len(out) <= f.page_size else None)


def _class_counts(session: Session) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(states long form, edited approvals per class, reviewers) from the tally the database keeps
    (db/tally.py) and an index walk over the reviewer names: no count over every item."""
    kept = tally(session)
    states = pd.DataFrame([(lab, state.value, n) for (lab, state, _), n in kept.items()],
                          columns=["label", "state", "n"]).groupby(["label", "state"], as_index=False)["n"].sum()
    edited = pd.DataFrame(sorted(edited_of(kept).items()), columns=["label", "edited"])  # the same read
    return states, edited, reviewer_names(session)


def browse_view(engine: Engine, *, filters: BrowseFilters) -> BrowseView:
    """One page of the items matching the filters (with thumbnails), plus per-class state counts and rates."""
    with session_scope(engine) as s:
        rows, searched_to = _rows(s, filters)
        states, edited, reviewers = _class_counts(s)
    more = len(rows) > filters.page_size
    rows = rows[:filters.page_size]
    next_after = int(rows[-1]["image_id"]) if more else searched_to
    for r in rows:
        r["thumbnail"] = _data_uri(r.pop("png"), filters.thumb_size)
    cols = ["image_id", "thumbnail", "label", "state", "caption", "chars", "flags", "reviewer",
            "reject_reason", "edited", "draft"]
    items = pd.DataFrame(rows, columns=cols)
    states = states[states.n > 0].sort_values(["label", "state"]).reset_index(drop=True)
    return BrowseView(items=items, rates=_rates(states, edited), states=states, reviewers=reviewers,
                      next_after_id=next_after, searched_to=searched_to)


def _rates(states: pd.DataFrame, edited: pd.DataFrame) -> pd.DataFrame:
    cols = ["label", "approved", "rejected", "edited", "approval_rate", "edit_rate"]
    if states.empty:
        return pd.DataFrame(columns=cols)
    wide = states.pivot_table(index="label", columns="state", values="n", aggfunc="sum", fill_value=0)
    out = pd.DataFrame({"label": wide.index,
                        "approved": wide.get("approved", pd.Series(0, index=wide.index)).to_numpy(),
                        "rejected": wide.get("rejected", pd.Series(0, index=wide.index)).to_numpy()})
    out = out.merge(edited, on="label", how="left").fillna({"edited": 0})
    out[["approved", "rejected", "edited"]] = out[["approved", "rejected", "edited"]].astype(int)
    decided = out.approved + out.rejected
    out["approval_rate"] = (out.approved / decided.where(decided > 0)).fillna(0.0)
    out["edit_rate"] = (out.edited / out.approved.where(out.approved > 0)).fillna(0.0)
    return out[cols].reset_index(drop=True)
