"""Service behind the Home page: the store at a glance, progress toward the target, the next step."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from sqlalchemy.engine import Engine
from sqlmodel import Session

from db.catalog import count_drafts, count_images
from db.engine import session_scope
from db.models import ReviewState
from db.tally import counts_by_class
from pipeline.classes import CLASSES


@dataclass(frozen=True)
class Progress:
    """Approved pairs against the target, overall and per class."""

    approved: int
    target: int
    per_class: pd.DataFrame  # label, approved, target, pending, rejected, skipped


@dataclass(frozen=True)
class Overview:
    """The store at a glance, and what the user should do next."""

    n_images: int
    n_drafts: int
    states: dict[str, int]
    progress: Progress
    next_step: str


def progress(session: Session, *, targets: dict[str, int]) -> Progress:
    counts = counts_by_class(session)
    rows = []
    for lab in sorted(set(targets) | set(counts)):
        c = counts.get(lab, {})
        rows.append({"label": lab, "approved": c.get("approved", 0), "target": targets.get(lab, 0),
                     "pending": c.get("pending", 0), "rejected": c.get("rejected", 0),
                     "skipped": c.get("skipped", 0)})
    df = pd.DataFrame(rows, columns=["label", "approved", "target", "pending", "rejected", "skipped"])
    approved = sum(min(r["approved"], r["target"]) if r["target"] else 0 for r in rows)
    return Progress(approved=approved, target=sum(targets.values()), per_class=df)


def overview_view(engine: Engine, *, target_per_class: int) -> Overview:
    with session_scope(engine) as s:
        n_images, n_drafts = count_images(s), count_drafts(s)
        prog = progress(s, targets={c: target_per_class for c in CLASSES})
    df = prog.per_class
    states = {st.value: int(df[st.value].sum()) for st in ReviewState}
    if n_images == 0:
        step = "No images yet: start a captioning job (Jobs page) or run `python -m pipeline --help`."
    elif n_drafts == 0:
        step = "Images but no teacher drafts yet: start a captioning job on the Jobs page."
    elif prog.approved < prog.target and states["pending"] + states["skipped"] > 0:
        step = f"{prog.target - prog.approved} approvals to go: open the Review page."
    elif prog.approved < prog.target:
        step = "Every draft is reviewed but the target is not met: caption more images (Jobs page)."
    else:
        step = "The target is met: export a snapshot on the Export page."
    return Overview(n_images=n_images, n_drafts=n_drafts, states=states, progress=prog, next_step=step)
