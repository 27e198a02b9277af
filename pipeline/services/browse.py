"""Service behind the Browse page: every item with a thumbnail, filtered, plus per-class rates
(`flag_choices` is re-exported for the flag filter)."""
from __future__ import annotations

import base64
from dataclasses import dataclass, field

import pandas as pd
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from db.engine import session_scope
from db.models import Draft, Image, Review, ReviewState
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


@dataclass(frozen=True)
class BrowseView:
    items: pd.DataFrame  # one row per item, thumbnail as a data URI
    rates: pd.DataFrame  # per class: approved, rejected, edited, approval_rate, edit_rate
    states: pd.DataFrame  # long form: label, state, n (for a stacked bar chart)
    reviewers: list[str] = field(default_factory=list)


def _data_uri(png: bytes, size: int) -> str:
    return "data:image/png;base64," + base64.b64encode(upscale_png(png, size=size)).decode("ascii")


def _rows(session: Session) -> list[dict]:
    stmt = (select(Review, Image.png, Draft.text, Draft.flags)
            .join(Image, Image.id == Review.image_id)
            .join(Draft, Draft.id == Review.draft_id, isouter=True).order_by(Review.image_id))
    out = []
    for r, png, draft_text, flags in session.exec(stmt).all():
        caption = r.final_caption if r.final_caption is not None else (draft_text or "")
        out.append({
            "image_id": r.image_id, "png": png, "label": r.label, "state": ReviewState(r.state).value,
            "caption": caption, "chars": len(caption), "draft": draft_text or "",
            "edited": r.state == ReviewState.approved and r.final_caption != draft_text,
            "reviewer": r.reviewer or "", "flags": ", ".join(flag_label(f) for f in flags or []),
            "flag_values": list(flags or []),
            "reject_reason": r.reject_reason.value if r.reject_reason else "",
        })
    return out


def _keep(row: dict, f: BrowseFilters) -> bool:
    return ((not f.labels or row["label"] in f.labels)
            and (not f.states or row["state"] in {s.value for s in f.states})
            and (not f.reviewer or row["reviewer"] == f.reviewer)
            and (not f.flag or f.flag in row["flag_values"])
            and (not f.text or f.text.casefold() in row["caption"].casefold())
            and row["chars"] >= f.min_chars and (f.max_chars is None or row["chars"] <= f.max_chars))


def browse_view(engine: Engine, *, filters: BrowseFilters) -> BrowseView:
    """Every item matching the filters (with thumbnails), plus per-class state counts and rates."""
    with session_scope(engine) as s:
        rows = _rows(s)
    everything = pd.DataFrame(rows, columns=["label", "state", "edited", "reviewer"])
    kept = [r for r in rows if _keep(r, filters)]
    for r in kept:
        r["thumbnail"] = _data_uri(r.pop("png"), filters.thumb_size)
        r.pop("flag_values")
    cols = ["image_id", "thumbnail", "label", "state", "caption", "chars", "flags", "reviewer",
            "reject_reason", "edited", "draft"]
    items = pd.DataFrame(kept, columns=cols)
    states = (everything.groupby(["label", "state"]).size().reset_index(name="n")
              if rows else pd.DataFrame(columns=["label", "state", "n"]))
    return BrowseView(items=items, rates=_rates(everything), states=states,
                      reviewers=sorted({r["reviewer"] for r in rows if r["reviewer"]}))


def _rates(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["label", "approved", "rejected", "edited", "approval_rate", "edit_rate"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    g = df.assign(approved=df.state == "approved", rejected=df.state == "rejected")
    out = g.groupby("label")[["approved", "rejected", "edited"]].sum().reset_index()
    decided = out.approved + out.rejected
    out["approval_rate"] = (out.approved / decided.where(decided > 0)).fillna(0.0)
    out["edit_rate"] = (out.edited / out.approved.where(out.approved > 0)).fillna(0.0)
    return out[cols]
