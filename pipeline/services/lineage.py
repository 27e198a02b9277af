"""Trained students in the store (lineage): registering finished student folders against the
snapshot they were trained on, the lineage view of students and snapshots, and deleting a
snapshot (refused while a student was trained on it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sqlalchemy.engine import Engine

from db.engine import session_scope
from db.errors import StoreError
from db.lineage import get_snapshot_row, list_students, register_student
from db.models import Student
from pipeline.identity import Actor, Role, require
from pipeline.settings import Settings

HEADLINE = ("optimizer_steps", "final_val_loss", "real_class_mention", "blank_class_mention", "bleu",
            "rouge_l")
"""The metrics the lineage table shows for each student."""


def read_report(student_dir: Path) -> dict:
    """The newest evaluation report under <student>/evaluations/ ({} when there is none)."""
    reports = sorted(Path(student_dir).glob("evaluations/*/evaluation.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(reports[-1].read_text()) if reports else {}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def sync_students(settings: Settings, engine: Engine) -> list[Student]:
    """Register every finished student folder whose snapshot the store knows; list all students.

    A folder is finished when training wrote metrics.json; its snapshot comes from snapshot.json.
    Registering is idempotent (the metrics are refreshed), so any page may call this.
    """
    root = Path(settings.students_dir)
    folders = sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    with session_scope(engine) as s:
        for folder in folders:
            metrics, ident = read_json(folder / "metrics.json"), read_json(folder / "snapshot.json")
            snapshot_id = ident.get("snapshot_id")
            if not metrics or not snapshot_id or get_snapshot_row(s, snapshot_id=snapshot_id) is None:
                continue
            summary = {**metrics, **_report_summary(read_report(folder))}
            register_student(s, path=str(folder.resolve()), snapshot_id=snapshot_id,
                             metrics=json.loads(json.dumps(summary, default=str)))
        s.flush()
        return list_students(s)


def _report_summary(report: dict) -> dict:
    """Headline numbers of an evaluation: real-image scores and the blank-image control."""
    conds = report.get("conditions") or {}
    out = {}
    for cond, m in conds.items():
        out[f"{cond}_class_mention"] = m.get("class_mention", {}).get("accuracy")
        if cond == "real":
            out.update({k: m.get(k) for k in ("bleu", "rouge_l", "cider")})
    return {k: round(v, 4) for k, v in out.items() if isinstance(v, (int, float))}


@dataclass(frozen=True)
class SnapshotLineage:
    """A snapshot, the reviewed items and reviewers it holds, and the students trained on it."""

    snapshot_id: str
    path: str
    created_at: str
    n_items: int
    reviewers: list[str]
    students: list[str]
    items: pd.DataFrame  # item_id, label, split, reviewer, caption


@dataclass(frozen=True)
class LineageView:
    students: pd.DataFrame  # student, snapshot_id, created_at, on_disk, HEADLINE metrics, path
    snapshots: list[SnapshotLineage]


def lineage_view(settings: Settings, engine: Engine) -> LineageView:
    """Every student with its snapshot, every snapshot with its items, reviewers and students."""
    from db.lineage import list_snapshot_rows

    students = sync_students(settings, engine)
    with session_scope(engine) as s:
        snaps = list_snapshot_rows(s)
    by_snap: dict[str, list[str]] = {}
    for st_row in students:
        by_snap.setdefault(st_row.snapshot_id, []).append(Path(st_row.path).name)
    table = pd.DataFrame(
        [{"student": Path(r.path).name, "snapshot_id": r.snapshot_id, "created_at": str(r.created_at)[:19],
          "on_disk": Path(r.path).is_dir(), **{k: r.metrics.get(k) for k in HEADLINE}, "path": r.path}
         for r in students], columns=["student", "snapshot_id", "created_at", "on_disk", *HEADLINE, "path"])
    return LineageView(students=table, snapshots=[
        SnapshotLineage(snapshot_id=r.id, path=r.path, created_at=str(r.created_at)[:19], n_items=r.n_items,
                        reviewers=list(r.reviewers), students=by_snap.get(r.id, []), items=_items(Path(r.path)))
        for r in snaps])


def _items(folder: Path) -> pd.DataFrame:
    cols = ["item_id", "label", "split", "reviewer", "caption"]
    parquet = folder / "data.parquet"
    if not parquet.is_file():
        return pd.DataFrame(columns=cols)
    df = pd.read_parquet(parquet, columns=["item_id", "label", "split", "reviewer", "text"])
    return df.rename(columns={"text": "caption"})[cols]


def delete_snapshot(settings: Settings, engine: Engine, *, actor: Actor, snapshot_id: str) -> tuple[bool, str]:
    """Forget a snapshot and remove its folder; refused while a student was trained on it."""
    require(actor, Role.admin, "delete snapshots")
    import shutil

    from db.lineage import delete_snapshot_row

    try:
        with session_scope(engine) as s:
            row = delete_snapshot_row(s, snapshot_id=snapshot_id)
            path = Path(row.path)
    except StoreError as err:
        return False, f"Not deleted: {err}"
    if path.is_dir() and Path(settings.exports_dir).resolve() in path.resolve().parents:
        for p in [path, *path.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        shutil.rmtree(path)
    return True, f"Deleted snapshot {snapshot_id}."
