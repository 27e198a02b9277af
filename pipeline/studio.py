"""Service functions behind the review studio's pages: each page calls one of these per action.

Every function takes the engine (and settings where files are involved), does its work in one
short session, and returns plain data (dataclasses, DataFrames) that a page only renders.
Refusals from the store (stale view, claimed item, bad caption) come back as a message.
"""
from __future__ import annotations

import difflib
import enum
import io
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image as PILImage
from sqlalchemy.engine import Engine
from sqlmodel import Session

from db.catalog import count_drafts, count_images
from db.engine import session_scope
from db.errors import StoreError
from db.jobs import ACTIVE, list_jobs, request_cancel
from db.models import JobKind, JobStatus, RejectReason, ReviewAction, ReviewState
from db.review import (
    QueueOrder, ReviewItem, claim_item, claim_next, counts_by_class, decide, load_item,
    release_claims, undo_last,
)
from pipeline.classes import CLASSES
from pipeline.export import (
    BalanceReport, ExportError, ExportSummary, balance_report, export_snapshot, list_exports,
)
from pipeline.flags import FLAG_LABELS
from pipeline.settings import Settings

REJECT_REASON_TEXT: dict[RejectReason, str] = {
    RejectReason.wrong_object: "Wrong object: names something the image does not show as its subject",
    RejectReason.hallucination: "Hallucination: invents details (text, people, places) not in the image",
    RejectReason.too_vague: "Too vague: true but says almost nothing ('an image of a thing')",
    RejectReason.unreadable_image: "Unreadable image: even a human cannot tell what it shows",
    RejectReason.refusal: "Refusal: the teacher declined or hedged instead of describing",
    RejectReason.other: "Other: explain in the note",
}

DEFAULT_GUIDELINES = """\
**A good caption** names the object of the image's class (or a synonym: *jet*, *puppy*,
*lorry*), says one or two things that are visibly true (colour, pose, background), and is one
or two plain sentences.

- **Approve** when the draft is right as written.
- **Edit and approve** when a few words are wrong: fix them, check the diff, save.
- **Reject** when it would take a rewrite; pick the reason that fits best.
- **Skip** when you are unsure; skipped items come back after the pending ones.

Do not guess at what 32×32 pixels cannot show (breeds, brands, text, emotions).
"""
GUIDELINES_FILE_NAME = "guidelines.md"
DONE_TEXT = {ReviewAction.approve: "approved", ReviewAction.edit_approve: "approved with your edit",
             ReviewAction.reject: "rejected", ReviewAction.skip: "skipped"}


class DiffOp(str, enum.Enum):
    equal = "equal"
    removed = "removed"
    added = "added"


@dataclass(frozen=True)
class QueueSpec:
    """Who is reviewing and which part of the queue they want."""

    reviewer: str
    order: QueueOrder = QueueOrder.balanced
    label: str | None = None
    flag: str | None = None
    target_per_class: int = 10

    @property
    def targets(self) -> dict[str, int]:
        return {c: self.target_per_class for c in CLASSES}


@dataclass(frozen=True)
class Progress:
    """Approved pairs against the target, overall and per class."""

    approved: int
    target: int
    per_class: pd.DataFrame  # label, approved, target, pending, rejected, skipped


@dataclass(frozen=True)
class ReviewView:
    """What the review page shows after one call: the item in hand, progress, and any message."""

    item: ReviewItem | None
    progress: Progress
    ok: bool = True
    message: str | None = None  # why an action was refused (ok False) or what was saved


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


def _view(session: Session, spec: QueueSpec, item: ReviewItem | None, *, ok: bool = True,
          message: str | None = None) -> ReviewView:
    return ReviewView(item=item, progress=progress(session, targets=spec.targets), ok=ok, message=message)


def _next(session: Session, spec: QueueSpec) -> ReviewItem | None:
    return claim_next(session, reviewer=spec.reviewer, order=spec.order, targets=spec.targets,
                      label=spec.label, flag=spec.flag)


def open_review(engine: Engine, *, spec: QueueSpec, image_id: int | None = None,
                fresh: bool = False) -> ReviewView:
    """The item to review: `image_id` if given and free, else the reviewer's next claimed item.

    `fresh` drops the reviewer's claims first (the queue filters changed: claim anew).
    """
    try:
        with session_scope(engine) as s:
            if fresh:
                release_claims(s, reviewer=spec.reviewer)
            if image_id is not None:
                return _view(s, spec, claim_item(s, image_id=image_id, reviewer=spec.reviewer))
            return _view(s, spec, _next(s, spec))
    except StoreError as err:
        with session_scope(engine) as s:
            return _view(s, spec, _next(s, spec), ok=False, message=str(err))


def submit_decision(
    engine: Engine, *, spec: QueueSpec, image_id: int, expected_version: int, action: ReviewAction,
    caption: str | None = None, reason: RejectReason | None = None, note: str | None = None,
) -> ReviewView:
    """Decide one item and claim the next in one round trip; a refusal keeps the item in hand."""
    try:
        with session_scope(engine) as s:
            decide(s, image_id=image_id, reviewer=spec.reviewer, action=action,
                   expected_version=expected_version, caption=caption, reason=reason, note=note)
            done = f"Item {image_id} {DONE_TEXT.get(action, action.value)}: saved."
            return _view(s, spec, _next(s, spec), message=done)
    except StoreError as err:
        with session_scope(engine) as s:
            item = load_item(s, image_id=image_id)
            if item.version != expected_version or item.claimed_by not in (None, spec.reviewer):
                item = _next(s, spec)  # the item moved on: show the reviewer something fresh
            return _view(s, spec, item, ok=False, message=str(err))


def undo(engine: Engine, *, spec: QueueSpec) -> ReviewView:
    """Undo the reviewer's last decision and put that item back in their hands."""
    try:
        with session_scope(engine) as s:
            review = undo_last(s, reviewer=spec.reviewer)
            item = load_item(s, image_id=review.image_id)
            return _view(s, spec, item, message=f"Item {item.image_id}: last decision undone.")
    except StoreError as err:
        with session_scope(engine) as s:
            return _view(s, spec, _next(s, spec), ok=False, message=str(err))


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


def upscale_png(png: bytes, *, size: int) -> bytes:
    """The image enlarged to `size` pixels with nearest-neighbour, so every pixel stays crisp."""
    img = PILImage.open(io.BytesIO(png)).convert("RGB")
    buf = io.BytesIO()
    img.resize((size, size), PILImage.Resampling.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


def flag_choices() -> dict[str, str]:
    """Flag value -> human label, for filters and badges."""
    return {f.value: text for f, text in FLAG_LABELS.items()}


def guidelines_path(settings: Settings) -> Path:
    return Path(settings.guidelines_file or Path(settings.data_dir) / GUIDELINES_FILE_NAME)


def load_guidelines(settings: Settings) -> str:
    """The team's guidelines (the settings' file when it exists), else the built-in text."""
    path = guidelines_path(settings)
    return path.read_text(encoding="utf-8") if path.is_file() else DEFAULT_GUIDELINES


def save_guidelines(settings: Settings, *, text: str) -> Path:
    path = guidelines_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def store_overview(engine: Engine, *, target_per_class: int) -> Overview:
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


@dataclass(frozen=True)
class JobStart:
    ok: bool
    message: str
    job_id: int | None = None


def start_caption_job(settings: Settings, engine: Engine, *, source: str, n_per_class: int,
                      path: str | None = None, limit: int | None = None) -> JobStart:
    """Import up to `n_per_class` images per class, then caption every undrafted one as a job."""
    from pipeline.jobs import launch_job
    from pipeline.sources import ImportSource, SourceError, import_images

    try:
        summary = import_images(engine, source=ImportSource(source), n_per_class=n_per_class,
                                path=Path(path) if path else None)
    except (SourceError, ValueError, OSError) as err:
        return JobStart(ok=False, message=f"Import failed: {err}")
    argv = ["caption"] + (["--limit", str(limit)] if limit else [])
    params = {"source": source, "n_per_class": n_per_class, "path": path, "limit": limit,
              "imported": summary.added}
    job_id = launch_job(settings, kind=JobKind.caption, argv=argv, params=params)
    return JobStart(ok=True, job_id=job_id,
                    message=f"Imported {summary.added} new images; captioning job {job_id} started.")


def job_table(engine: Engine, *, limit: int = 20) -> pd.DataFrame:
    """The newest jobs as plain rows (status, progress, message, error) for the jobs page."""
    with session_scope(engine) as s:
        jobs = list_jobs(s, limit=limit)
        rows = [{"id": j.id, "kind": JobKind(j.kind).value, "status": JobStatus(j.status).value,
                 "done": j.done, "total": j.total,
                 "progress": (j.done / j.total) if j.total else 0.0, "message": j.message or "",
                 "error": j.error or "", "started": str(j.started_at or j.created_at)[:19],
                 "active": j.status in ACTIVE, "cancel_requested": j.cancel_requested,
                 "log_path": j.log_path or ""}
                for j in jobs]
    return pd.DataFrame(rows, columns=["id", "kind", "status", "done", "total", "progress", "message",
                                       "error", "started", "active", "cancel_requested", "log_path"])


def cancel_job(engine: Engine, *, job_id: int) -> str:
    """Ask a running job to stop (it finishes its current batch first)."""
    try:
        with session_scope(engine) as s:
            job = request_cancel(s, job_id=job_id)
            return f"Job {job_id}: cancel requested ({JobStatus(job.status).value})."
    except StoreError as err:
        return str(err)


@dataclass(frozen=True)
class ExportView:
    balance: BalanceReport
    balance_table: pd.DataFrame  # label, approved, target, share (of the target, at most 1)
    snapshots: list[ExportSummary]


def export_view(settings: Settings, engine: Engine) -> ExportView:
    """The balance check now and every snapshot written so far (newest first)."""
    balance = balance_report(settings, engine)
    target = balance.target_per_class
    rows = [{"label": k, "approved": v, "target": target, "share": min(v / target, 1.0) if target else 1.0}
            for k, v in balance.counts.items()]
    table = pd.DataFrame(rows, columns=["label", "approved", "target", "share"])
    return ExportView(balance=balance, balance_table=table, snapshots=list_exports(settings, engine))


def run_export(settings: Settings, engine: Engine, *, override_balance: bool,
               exported_by: str | None = None) -> tuple[bool, str]:
    """Write a snapshot now; (ok, message) — a balance or empty-store refusal is a message."""
    try:
        result = export_snapshot(settings, engine, override_balance=override_balance, exported_by=exported_by)
    except ExportError as err:
        return False, str(err)
    return True, (f"Snapshot {result.snapshot_id} written: {result.n_items} pairs "
                  f"({result.split_counts.get('train', 0)} train, {result.split_counts.get('validation', 0)} "
                  f"validation) at {result.path}.")
