"""Alembic `upgrade head` on an empty database gives exactly the schema the models declare."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

import db.models  # noqa: F401
from db.engine import init_store


def test_upgrade_head_matches_models(tmp_path):
    engine = init_store(f"sqlite:///{tmp_path / 'm.db'}")
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diffs == []
    tables = set(inspect(engine).get_table_names())
    assert {"image", "draft", "review", "reviewevent", "job", "snapshot", "student"} <= tables
    engine.dispose()


def test_upgrade_is_idempotent(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    init_store(url).dispose()
    engine = init_store(url)  # a second upgrade on an up-to-date store changes nothing
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() is not None
    engine.dispose()
