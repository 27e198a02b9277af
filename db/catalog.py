"""Images and teacher drafts: adding them (idempotently) and reading them back."""
from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import func
from sqlmodel import Session, select

from db.models import Draft, Image, Review, ReviewState, SourceKind, utcnow

IN_BATCH = 500
"""Values per `IN (...)` list (well under SQLite's and PostgreSQL's limits on bound parameters)."""


class NewImage(NamedTuple):  # a tuple: a bulk import makes a million of them
    """One image to add in bulk (see add_images)."""

    source_key: str
    label: str
    png: bytes
    content_hash: str
    width: int
    height: int


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


def add_images(session: Session, *, source_kind: SourceKind, images: list[NewImage]) -> list[bool]:
    """Add many images at once, each with its pending review row, skipping any whose content hash
    is already stored (or came earlier in `images`): what add_image does, in a few statements.

    Returns, per image, whether it was added. The caller commits (one transaction per batch).
    """
    conn = session.connection()
    stored = _stored_hashes(conn, [im.content_hash for im in images])
    created, rows = [], []
    for im in images:
        new = im.content_hash not in stored
        created.append(new)
        if new:
            stored.add(im.content_hash)
            rows.append(im)
    if rows:
        if conn.dialect.name == "sqlite":
            _insert_sqlite(conn, source_kind=source_kind, images=rows, now=utcnow())
        else:
            _insert_portable(conn, source_kind=source_kind, images=rows, now=utcnow())
    return created


def _stored_hashes(conn, hashes: list[str]) -> set[str]:
    """Those of `hashes` already stored (on SQLite as plain SQL: no per-value bind processing)."""
    stored: set[str] = set()
    for i in range(0, len(hashes), IN_BATCH):
        chunk = hashes[i:i + IN_BATCH]
        if conn.dialect.name == "sqlite":
            sql = f"SELECT content_hash FROM image WHERE content_hash IN ({','.join('?' * len(chunk))})"
            stored.update(h for (h,) in conn.exec_driver_sql(sql, tuple(chunk)))
        else:
            stored.update(conn.execute(select(Image.content_hash).where(Image.content_hash.in_(chunk))).scalars())
    return stored


def _insert_sqlite(conn, *, source_kind: SourceKind, images: list[NewImage], now) -> None:
    """SQLite: two statements, no per-row work but building the image tuples. The transaction began
    with BEGIN IMMEDIATE (db/engine.py), so no other writer can come between reading the largest id
    and inserting: the new ids are max + 1, max + 2, ..., the ones SQLite itself would give (the table
    has no AUTOINCREMENT), and the review rows are made from them by an INSERT ... SELECT. Values are
    stored as SQLAlchemy stores them (enum by name, naive ISO datetime)."""
    stamp = now.strftime("%Y-%m-%d %H:%M:%S.%f")
    first = conn.exec_driver_sql("SELECT coalesce(max(id), 0) + 1 FROM image").scalar_one()
    kind = source_kind.name
    conn.exec_driver_sql(
        "INSERT INTO image (id, source_kind, source_key, label, content_hash, width, height, png, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(first + i, kind, im.source_key, im.label, im.content_hash, im.width, im.height, im.png, stamp)
         for i, im in enumerate(images)])
    conn.exec_driver_sql(
        "INSERT INTO review (image_id, label, state, flag_count, updated_at, version) "
        "SELECT id, label, ?, 0, ?, 1 FROM image WHERE id >= ? ORDER BY id",
        (ReviewState.pending.name, stamp, first))


def _insert_portable(conn, *, source_kind: SourceKind, images: list[NewImage], now) -> None:
    """Any other database (PostgreSQL): one executemany for the images, their new ids read back by
    hash (no RETURNING: portable), one executemany for the review rows."""
    conn.execute(Image.__table__.insert(), [
        {"source_kind": source_kind, "source_key": im.source_key, "label": im.label, "png": im.png,
         "content_hash": im.content_hash, "width": im.width, "height": im.height, "created_at": now}
        for im in images])
    ids: dict[str, int] = {}
    for i in range(0, len(images), IN_BATCH):
        chunk = [im.content_hash for im in images[i:i + IN_BATCH]]
        ids.update(conn.execute(select(Image.content_hash, Image.id).where(Image.content_hash.in_(chunk))).all())
    conn.execute(Review.__table__.insert(), [
        {"image_id": ids[im.content_hash], "label": im.label, "state": ReviewState.pending, "flag_count": 0,
         "updated_at": now, "version": 1} for im in images])


def stored_source_keys(session: Session, *, keys: list[str]) -> set[str]:
    """Those of `keys` some stored image already has as its source key (a resumed import skips them)."""
    found: set[str] = set()
    for i in range(0, len(keys), IN_BATCH):
        chunk = keys[i:i + IN_BATCH]
        found.update(session.exec(select(Image.source_key).where(Image.source_key.in_(chunk))).all())
    return found


def stored_source_keys_under(session: Session, *, prefix: str) -> set[str]:
    """Every stored source key starting with `prefix` (perhaps a few more on PostgreSQL's LIKE path),
    for a large import to check its files against without a query per batch.

    On SQLite a key range (prefix <= key < the prefix with its last character one higher), which the
    source-key index answers directly: a LIKE there ignores ASCII case, so it cannot use the index and
    scanned every stored key, for every class of an import."""
    last = ord(prefix[-1]) if prefix else 0
    if session.get_bind().dialect.name == "sqlite" and 0 < last < 0xD7FF:
        upper = prefix[:-1] + chr(last + 1)
        return set(session.exec(select(Image.source_key).where(Image.source_key >= prefix,
                                                                 Image.source_key < upper)).all())
    return set(session.exec(select(Image.source_key).where(Image.source_key.startswith(prefix, autoescape=True))).all())


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
