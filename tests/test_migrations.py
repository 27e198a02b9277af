"""Alembic `upgrade head` on an empty database gives exactly the schema the models declare, on
SQLite and on PostgreSQL; and `downgrade base` takes everything away again."""
from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

import db.models  # noqa: F401  (registers the tables the migrations are compared with)
from db.engine import alembic_config, init_store
from tests.conftest import BACKENDS

TABLES = {"image", "draft", "review", "reviewevent", "job", "snapshot", "student"}


@pytest.fixture(params=BACKENDS)
def empty_url(request, tmp_path):
    """An empty database (nothing migrated) on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    server = request.getfixturevalue("pg_server")
    url = server.create_database()
    yield url
    server.drop_database(url)


def test_upgrade_head_matches_models(empty_url):
    engine = init_store(empty_url)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diffs == []
    tables = set(inspect(engine).get_table_names())
    assert TABLES <= tables
    engine.dispose()


def test_upgrade_is_idempotent_and_downgrade_removes_everything(empty_url):
    init_store(empty_url).dispose()
    engine = init_store(empty_url)  # a second upgrade on an up-to-date store changes nothing
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() is not None
    command.downgrade(alembic_config(empty_url), "base")
    assert not TABLES & set(inspect(engine).get_table_names())
    init_store(empty_url).dispose()  # and up again (PostgreSQL: the enum types are no obstacle)
    assert TABLES <= set(inspect(engine).get_table_names())
    engine.dispose()
