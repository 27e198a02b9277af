"""Shared fixtures: a fresh settings object and a migrated store per test.

The store is SQLite unless a test runs with `backend` = "postgresql" (use `both_backends`, or
`pytestmark = both_backends` for a whole module): then it is a fresh database on the session's
real PostgreSQL server (tests/pg.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from db.engine import init_store
from pipeline.settings import Settings

# Session fixtures of the student tests, registered here once so every module shares one
# tiny base and one memorised student.
from tests.conftest_student import cifar20_snapshot, memorised_student, tiny_phi3  # noqa: F401  (shared fixtures)
from tests.pg import pg_server  # noqa: F401  (the session's PostgreSQL server)

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
BUNDLED = REPO / "pipeline" / "assets" / "cifar10"


BACKENDS = ("sqlite", "postgresql")
both_backends = pytest.mark.parametrize("backend", BACKENDS, indirect=True)
"""Run a store-level test on SQLite and on the real PostgreSQL server."""


@pytest.fixture
def backend(request) -> str:
    """Which database the test's store lives in: "sqlite" unless parametrized (both_backends)."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def database_url(backend: str, request) -> str | None:
    """None for SQLite (the store goes in the data folder); a fresh, migrated PostgreSQL database otherwise."""
    if backend == "sqlite":
        yield None
        return
    server = request.getfixturevalue("pg_server")
    url = server.migrated_database()
    yield url
    server.drop_database(url)


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, _env_file=None)


@pytest.fixture
def engine(settings: Settings):
    """A migrated, empty store (SQLite in the test's data folder, or a PostgreSQL database)."""
    eng = init_store(settings.resolved_database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def store(engine):
    """The same migrated store, under the name the store-level tests use."""
    return engine


def seed_images(engine, labels: dict[str, int], *, text: str = "A {label} photo {i}.",
                model_id: str = "t", prompt: str = "p") -> list[int]:
    """Add the first n bundled images of each class, each with one teacher draft (`text` is a
    template over label and i); returns the image ids in insertion order."""
    import hashlib

    from db.catalog import add_draft, add_image
    from db.engine import session_scope
    from db.models import SourceKind

    ids = []
    with session_scope(engine) as s:
        for label, n in labels.items():
            for i in range(n):
                png = (BUNDLED / label / f"{label}_{i:04d}.png").read_bytes()
                image, _ = add_image(s, source_kind=SourceKind.bundled, source_key=f"bundled:{label}/{i}",
                                     label=label, png=png, content_hash=hashlib.sha256(png).hexdigest(),
                                     width=32, height=32)
                add_draft(s, image_id=image.id, text=text.format(label=label, i=i), model_id=model_id,
                          prompt=prompt)
                ids.append(image.id)
    return ids
