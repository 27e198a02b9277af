"""Images and teacher drafts: adding them (idempotently) and reading them back."""
from __future__ import annotations

from sqlalchemy import func
from sqlmodel import Session, select

from db.models import Draft, Image, Review, ReviewState, SourceKind


def add_image(
    session: Session,
    *,
    source_kind: SourceKind,
    source_key: str,
    label: str,
    png: bytes,
    content_hash: str,
    width: int,
    height: int,
) -> tuple[Image, bool]:
    """Add an image unless one with the same content hash exists; returns (image, created)."""
    existing = session.exec(select(Image).where(Image.content_hash == content_hash)).first()
    if existing is not None:
        return existing, False
    image = Image(
        source_kind=source_kind, source_key=source_key, label=label, png=png,
        content_hash=content_hash, width=width, height=height,
    )
    session.add(image)
    session.flush()
    session.add(Review(image_id=image.id, label=label))
    return image, True


def add_draft(
    session: Session,
    *,
    image_id: int,
    text: str,
    model_id: str,
    prompt: str,
    model_revision: str | None = None,
    generation_params: dict | None = None,
    processor_params: dict | None = None,
    flags: list[str] | None = None,
) -> Draft:
    """Record a new teacher draft; a pending item starts showing the newest draft."""
    draft = Draft(
        image_id=image_id, text=text, model_id=model_id, prompt=prompt,
        model_revision=model_revision, generation_params=generation_params or {},
        processor_params=processor_params or {}, flags=list(flags or []),
    )
    session.add(draft)
    session.flush()
    review = session.get(Review, image_id)
    if review is None:
        image = session.get(Image, image_id)
        review = Review(image_id=image_id, label=image.label)
        session.add(review)
    if review.state == ReviewState.pending:
        review.draft_id = draft.id
        review.flag_count = len(draft.flags)
    return draft


def images_without_draft(
    session: Session, *, prompt: str | None = None, model_id: str | None = None,
    image_ids: list[int] | None = None, limit: int | None = None,
) -> list[int]:
    """Ids of images with no draft (or none for this prompt and model), oldest first."""
    cond = Draft.image_id == Image.id
    if prompt is not None:
        cond = cond & (Draft.prompt == prompt)
    if model_id is not None:
        cond = cond & (Draft.model_id == model_id)
    stmt = select(Image.id).where(~select(Draft.id).where(cond).exists()).order_by(Image.id)
    if image_ids is not None:
        stmt = stmt.where(Image.id.in_(image_ids))
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.exec(stmt).all())


def get_images(session: Session, *, ids: list[int]) -> list[Image]:
    rows = session.exec(select(Image).where(Image.id.in_(ids))).all()
    by_id = {r.id: r for r in rows}
    return [by_id[i] for i in ids if i in by_id]


def drafts_for_image(session: Session, *, image_id: int) -> list[Draft]:
    return list(session.exec(select(Draft).where(Draft.image_id == image_id).order_by(Draft.id)).all())


def count_images(session: Session) -> int:
    return session.exec(select(func.count()).select_from(Image)).one()


def count_drafts(session: Session) -> int:
    return session.exec(select(func.count()).select_from(Draft)).one()


def find_image_by_hash(session: Session, *, content_hash: str) -> Image | None:
    return session.exec(select(Image).where(Image.content_hash == content_hash)).first()
