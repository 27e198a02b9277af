"""The content hash the store registered for a snapshot at export, so training, evaluation and compare
also refuse a snapshot whose manifest was rewritten to match edited files."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.settings import Settings


def registered_hash(settings: Settings, folder: Path) -> str | None:
    """The store's content hash for the snapshot in `folder`; None when the store does not know it
    (a snapshot from elsewhere, no store yet, or a manifest without an id: verify_snapshot refuses that)."""
    from sqlalchemy.exc import SQLAlchemyError

    from db.engine import make_engine, session_scope
    from db.lineage import get_snapshot_row

    url = settings.resolved_database_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return None  # no store: nothing registered (and nothing to create here)
    try:
        snapshot_id = json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))["snapshot_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    engine = make_engine(url)
    try:
        with session_scope(engine) as s:
            row = get_snapshot_row(s, snapshot_id=str(snapshot_id))
            return row.content_hash if row is not None else None
    except SQLAlchemyError:
        return None  # an unmigrated or unreachable store: the manifest's own hashes still apply
    finally:
        engine.dispose()
