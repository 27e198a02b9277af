"""Export: approved pairs from the store become an immutable snapshot on disk (see snapshot.py).

`export_snapshot(settings, engine)` checks class balance, writes the snapshot atomically and
registers it in the store; `zip_snapshot` packs one for download; `list_exports` lists them.
"""
from __future__ import annotations

import io
import json
import shutil
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from db.engine import session_scope
from db.lineage import list_snapshot_rows, list_students, register_snapshot
from db.models import Draft, Image, Review, ReviewState
from db.qc import compared, get_policy, held_approved_counts, held_image_ids, state_counts
from pipeline import __version__
from pipeline.agreement import figures, pairs_of
from pipeline.classes import CLASSES
from pipeline.data.snapshot import SnapshotRecord, content_hash, list_snapshots, new_snapshot_id, write_snapshot
from pipeline.settings import Settings

STALE_TEMP_S = 3600  # a temporary export folder this old belongs to a crashed export
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same snapshot zips to the same bytes

Progress = Callable[[int, int, str], None]


class ExportError(Exception):
    """An export was refused; nothing was written."""


class BalanceError(ExportError):
    """Some class is below its approved target and the override was not given."""


@dataclass(frozen=True)
class ExportConfig:
    """Options of one export; written into the snapshot manifest."""

    override_balance: bool = False  # export even though some class is below target
    val_fraction: float = 0.2  # share of each class held out as the validation split
    seed: int = 0  # seed of the stratified train/validation split
    exported_by: str | None = None  # who asked for the export (shown in the list)
    target_per_class: int = 10  # approved pairs wanted per CIFAR-10 class
    include_weak: bool = False  # add pending (unreviewed) teacher drafts as a separate `weak` split

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.target_per_class < 0:
            raise ValueError(f"target_per_class must be >= 0, got {self.target_per_class}")


@dataclass(frozen=True)
class BalanceReport:
    """Approved pairs per class against the per-class target."""

    target_per_class: int
    counts: dict[str, int]  # every CIFAR-10 class (0 when none), plus any other label approved
    below: dict[str, int]  # CIFAR-10 classes under target -> their approved count

    @property
    def ok(self) -> bool:
        return not self.below

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def message(self) -> str:
        if self.ok:
            return f"Every class has at least {self.target_per_class} approved pairs."
        parts = ", ".join(f"{c} {n}/{self.target_per_class}" for c, n in self.below.items())
        return f"{len(self.below)} class(es) below the target of {self.target_per_class}: {parts}."


@dataclass(frozen=True)
class ExportResult:
    snapshot_id: str
    path: Path
    content_hash: str
    n_items: int
    counts_per_class: dict[str, int]
    split_counts: dict[str, int]
    balance: BalanceReport
    n_weak: int = 0  # unreviewed teacher drafts in the separate `weak` split


@dataclass(frozen=True)
class ExportSummary:
    """One past snapshot as the export page lists it."""

    snapshot_id: str
    path: Path
    created_at: str
    n_items: int
    content_hash: str
    counts_per_class: dict[str, int]
    reviewers: list[str] = field(default_factory=list)
    exported_by: str | None = None
    app_version: str | None = None
    n_students: int = 0  # students trained on it (it cannot be deleted while > 0)
    registered: bool = True  # known to the store (False: a folder copied in by hand)


def balance_from_counts(counts: dict[str, int], *, target_per_class: int) -> BalanceReport:
    full = {c: counts.get(c, 0) for c in CLASSES} | {k: v for k, v in counts.items() if k not in CLASSES}
    below = {c: full[c] for c in CLASSES if full[c] < target_per_class}
    return BalanceReport(target_per_class=target_per_class, counts=full, below=below)


def balance_report(settings: Settings, engine: Engine) -> BalanceReport:
    """Approved pairs per class now, against settings.target_per_class (for the export page)."""
    from db.tally import approved_counts

    with session_scope(engine) as s:
        counts = approved_counts(s)
        if get_policy(s, default=settings.qc_default).enabled:  # QC on: only agreed or adjudicated items
            counts = {k: n - held_approved_counts(s).get(k, 0) for k, n in counts.items()}
    return balance_from_counts(counts, target_per_class=settings.target_per_class)


def approved_records(session: Session, *, held: set[int] | frozenset[int] = frozenset()
                     ) -> tuple[list[SnapshotRecord], list[dict]]:
    """Every approved item (but the `held` image ids) as a snapshot record, and the teacher drafts behind them.

    Reads plain columns, not ORM objects: an export of 100,000 pairs builds no 300,000 entities."""
    stmt = (select(Image.id, Image.png, Image.label, Image.source_key, Image.source_kind, Review.final_caption,
                   Review.reviewer, Review.draft_id, Review.decided_at, Draft.id.label("has_draft"), Draft.text,
                   Draft.model_id, Draft.model_revision, Draft.prompt, Draft.generation_params,
                   Draft.processor_params)
            .join(Image, Image.id == Review.image_id)
            .outerjoin(Draft, Draft.id == Review.draft_id).where(Review.state == ReviewState.approved))
    if held:
        stmt = stmt.where(Review.image_id.not_in(sorted(held)))
    records, drafts = [], []
    for row in session.exec(stmt.order_by(Review.image_id)):
        has_draft = row.has_draft is not None
        records.append(SnapshotRecord(
            image_png=row.png, text=row.final_caption or "", label=row.label,
            item_id=str(row.id), teacher_draft=row.text if has_draft else "",
            reviewer=row.reviewer or "",
            extra={
                "image_id": row.id, "draft_id": row.draft_id, "source_key": row.source_key,
                "source_kind": getattr(row.source_kind, "value", row.source_kind),
                "teacher_model": row.model_id if has_draft else None,
                "decided_at": row.decided_at.isoformat() if row.decided_at else None,
            },
        ))
        if has_draft:
            drafts.append({
                "model_id": row.model_id, "model_revision": row.model_revision,
                "prompt": row.prompt, "generation_params": row.generation_params,
                "processor_params": row.processor_params,
            })
    return records, drafts


def weak_records(session: Session) -> list[SnapshotRecord]:
    """Every still-pending item that has a teacher draft, captioned with that unreviewed draft.

    Only `pending` items: a rejected draft is never used, and a skipped one had a reviewer's doubt.
    """
    rows = session.exec(
        select(Review, Image, Draft).join(Image, Image.id == Review.image_id)
        .join(Draft, Draft.id == Review.draft_id)
        .where(Review.state == ReviewState.pending).order_by(Review.image_id)
    ).all()
    return [SnapshotRecord(image_png=image.png, text=draft.text, label=image.label, item_id=str(image.id),
                           teacher_draft=draft.text,
                           extra={"image_id": image.id, "draft_id": draft.id, "source_key": image.source_key,
                                  "teacher_model": draft.model_id, "unreviewed": True})
            for _review, image, draft in rows if draft.text.strip()]


def teacher_provenance(drafts: list[dict]) -> list[dict]:
    """Distinct (model, revision, prompt, params) behind the drafts, with how many items each."""
    counts = Counter(json.dumps(d, sort_keys=True, ensure_ascii=False) for d in drafts)
    return [{**json.loads(k), "n_items": n} for k, n in sorted(counts.items())]


def export_snapshot(
    settings: Settings,
    engine: Engine,
    *,
    override_balance: bool = False,
    val_fraction: float = 0.2,
    seed: int = 0,
    exported_by: str | None = None,
    include_weak: bool = False,
    progress: Progress | None = None,
) -> ExportResult:
    """Write every approved pair as a new snapshot under settings.exports_dir and register it.

    Raises BalanceError (nothing written) when a CIFAR-10 class is below
    settings.target_per_class unless `override_balance`; ExportError when nothing is approved.
    With `include_weak`, pending teacher drafts go into a separate `weak` split (never train/validation).
    """
    config = ExportConfig(override_balance=override_balance, val_fraction=val_fraction, seed=seed,
                          exported_by=exported_by, target_per_class=settings.target_per_class,
                          include_weak=include_weak)
    report = progress or (lambda done, total, message: None)
    report(0, 3, "reading approved pairs")
    with session_scope(engine) as s:
        qc_on = get_policy(s, default=settings.qc_default).enabled
        # QC on: an item routed to a second review goes in only once agreed or adjudicated
        records, drafts = approved_records(s, held=held_image_ids(s) if qc_on else frozenset())
        weak = weak_records(s) if config.include_weak else []
        qc = qc_summary(s) if qc_on else None
    if not records:
        raise ExportError("Nothing is approved yet: approve some captions before exporting.")
    balance = balance_from_counts(Counter(r.label for r in records), target_per_class=config.target_per_class)
    if not balance.ok and not config.override_balance:
        raise BalanceError(balance.message() + " Export anyway with the balance override.")
    root = Path(settings.exports_dir)
    sweep_stale_temps(root)
    chash = content_hash(records, weak)
    snapshot_id = new_snapshot_id(root, chash)
    provenance = export_provenance(config, records=records, drafts=drafts, balance=balance)
    if qc is not None:
        provenance["quality_control"] = qc
    report(1, 3, f"writing {len(records)} pairs")
    path = write_snapshot(records, root, snapshot_id=snapshot_id, val_fraction=val_fraction,
                          seed=seed, provenance=provenance, weak_records=weak)
    report(2, 3, "registering the snapshot")
    manifest = json.loads((path / "manifest.json").read_text())
    try:
        with session_scope(engine) as s:
            register_snapshot(
                s, snapshot_id=snapshot_id, path=str(path), content_hash=chash, n_items=len(records),
                reviewers=provenance["reviewers"], image_ids=[int(r.item_id) for r in records],
            )
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)  # a snapshot the store does not know is not one
        raise
    report(3, 3, f"exported {snapshot_id}")
    return ExportResult(
        snapshot_id=snapshot_id, path=path, content_hash=chash, n_items=len(records),
        counts_per_class=manifest["counts_per_class"], split_counts=manifest["split_counts"],
        balance=balance, n_weak=manifest.get("n_weak", 0),
    )


def qc_summary(session: Session) -> dict:
    """The reviewers' agreement figures, for the manifest and the snapshot's card."""
    return {"second_opinions": state_counts(session), **figures(pairs_of(compared(session))).as_dict()}


def export_provenance(config: ExportConfig, *, records: list[SnapshotRecord], drafts: list[dict],
                      balance: BalanceReport) -> dict:
    """What the manifest says about where the pairs came from and how they were exported."""
    return {
        "app": "capstudio", "app_version": __version__, "exported_by": config.exported_by,
        "exported_at": datetime.now(UTC).isoformat(), "config": asdict(config),
        "teachers": teacher_provenance(drafts),
        "reviewers": sorted({r.reviewer for r in records if r.reviewer}),
        "balance": {"ok": balance.ok, "below_target": balance.below, "overridden": not balance.ok},
    }


def sweep_stale_temps(root: Path, *, older_than_s: float = STALE_TEMP_S) -> list[Path]:
    """Remove temporary folders left by exports that crashed (killed before their cleanup)."""
    root = Path(root)
    if not root.is_dir():
        return []
    cutoff = time.time() - older_than_s
    # temporary folders and id reservations (.snap-<id>.id) of exports that died
    gone = [p for p in root.glob(".snap-*") if p.is_dir() and p.stat().st_mtime < cutoff]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def zip_snapshot(path: Path) -> bytes:
    """The snapshot folder as zip bytes, identical for identical folders (sorted, fixed dates)."""
    path = Path(path)
    if not (path / "manifest.json").is_file():
        raise FileNotFoundError(f"{path} is not a snapshot: no manifest.json")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(f"{path.name}/{f.relative_to(path).as_posix()}", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o444 << 16
            zf.writestr(info, f.read_bytes())
    return buf.getvalue()


def list_exports(settings: Settings, engine: Engine) -> list[ExportSummary]:
    """Every complete snapshot under settings.exports_dir, newest first, with its store lineage."""
    with session_scope(engine) as s:
        rows = {r.id: r for r in list_snapshot_rows(s)}
        students = Counter(st.snapshot_id for st in list_students(s))
    out = []
    for m in list_snapshots(settings.exports_dir):
        sid = m["snapshot_id"]
        row = rows.get(sid)
        prov = m.get("provenance", {})
        out.append(ExportSummary(
            snapshot_id=sid, path=Path(m["path"]), created_at=m.get("created_at", ""),
            n_items=m.get("n_items", 0), content_hash=m.get("content_hash", ""),
            counts_per_class=m.get("counts_per_class", {}),
            reviewers=list(row.reviewers) if row else list(prov.get("reviewers", [])),
            exported_by=prov.get("exported_by"), app_version=prov.get("app_version"),
            n_students=students.get(sid, 0), registered=row is not None,
        ))
    return out
