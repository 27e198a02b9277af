"""Snapshots and students in the store: which reviewed items a snapshot holds, which snapshot
a student was trained on, and the rule that a snapshot a student uses cannot be deleted."""
from __future__ import annotations

from sqlmodel import Session, select

from db.errors import InUseError, InvalidActionError
from db.models import SnapshotRecordRow, Student


def register_snapshot(
    session: Session, *, snapshot_id: str, path: str, content_hash: str, n_items: int,
    reviewers: list[str], image_ids: list[int],
) -> SnapshotRecordRow:
    row = SnapshotRecordRow(
        id=snapshot_id, path=path, content_hash=content_hash, n_items=n_items,
        reviewers=sorted(set(reviewers)), image_ids=sorted(image_ids),
    )
    session.add(row)
    session.flush()
    return row


def list_snapshot_rows(session: Session) -> list[SnapshotRecordRow]:
    return list(session.exec(select(SnapshotRecordRow).order_by(SnapshotRecordRow.created_at.desc())).all())


def get_snapshot_row(session: Session, *, snapshot_id: str) -> SnapshotRecordRow | None:
    return session.get(SnapshotRecordRow, snapshot_id)


def delete_snapshot_row(session: Session, *, snapshot_id: str) -> SnapshotRecordRow:
    """Forget a snapshot; refused while any student references it."""
    row = session.get(SnapshotRecordRow, snapshot_id)
    if row is None:
        raise InvalidActionError(f"No snapshot {snapshot_id}.")
    users = session.exec(select(Student).where(Student.snapshot_id == snapshot_id)).all()
    if users:
        names = ", ".join(u.path for u in users)
        raise InUseError(f"Snapshot {snapshot_id} is used by {len(users)} student(s): {names}.")
    session.delete(row)
    return row


def register_student(session: Session, *, path: str, snapshot_id: str, metrics: dict | None = None) -> Student:
    existing = session.exec(select(Student).where(Student.path == path)).first()
    if existing is not None:
        existing.metrics = metrics or existing.metrics
        session.add(existing)
        return existing
    student = Student(path=path, snapshot_id=snapshot_id, metrics=metrics or {})
    session.add(student)
    session.flush()
    return student


def list_students(session: Session, *, snapshot_id: str | None = None) -> list[Student]:
    stmt = select(Student).order_by(Student.created_at.desc())
    if snapshot_id is not None:
        stmt = stmt.where(Student.snapshot_id == snapshot_id)
    return list(session.exec(stmt).all())
