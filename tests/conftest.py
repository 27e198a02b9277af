"""Shared fixtures: a fresh settings object and a migrated SQLite store per test."""
from __future__ import annotations

from pathlib import Path

import pytest

from db.engine import init_store
from pipeline.settings import Settings

# Session fixtures of the student tests, registered here once so every module shares one
# tiny base and one memorised student.
from tests.conftest_student import cifar20_snapshot, memorised_student, tiny_phi3  # noqa: F401

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
