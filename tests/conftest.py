"""Shared fixtures: a fresh settings object and a migrated SQLite store per test."""
from __future__ import annotations

from pathlib import Path

import pytest

from db.engine import init_store
from pipeline.settings import Settings

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
BUNDLED = REPO / "pipeline" / "assets" / "cifar10"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", _env_file=None)


@pytest.fixture
def engine(settings: Settings):
    """A migrated, empty SQLite store in the test's data folder."""
    eng = init_store(settings.resolved_database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def store(engine):
    """The same migrated store, under the name the store-level tests use."""
    return engine
