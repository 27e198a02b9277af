"""`python -m pipeline db copy --to URL`: a SQLite store moved into an empty PostgreSQL database."""
from __future__ import annotations

import pytest
from sqlalchemy import MetaData, select, text
from typer.testing import CliRunner

from db import qc
from db.catalog import add_image
from db.copy import DERIVED_TABLES
from db.engine import make_engine, session_scope
from db.jobs import create_job, finish_job
from db.lineage import register_snapshot, register_student
from db.models import Image, JobKind, JobStatus, RejectReason, ReviewAction, ReviewEvent, SourceKind
from db.review import claim_next, decide, get_item
from db.users import add_user
from pipeline.cli import app
from tests.conftest import BUNDLED, seed_images


@pytest.fixture
def empty_pg(pg_server):
    url = pg_server.create_database()
    yield url
    pg_server.drop_database(url)


def fill(engine) -> None:
    """Rows in every table: images, drafts, reviews, events, a job, a snapshot, a student, users, QC."""
    ids = seed_images(engine, {"cat": 3, "dog": 2, "ship": 2})
    for k, i in enumerate(ids[:4]):
        with session_scope(engine) as s:
            version = get_item(s, image_id=i).version
            if k % 2:
                decide(s, image_id=i, reviewer="ann", action=ReviewAction.reject, expected_version=version,
                       reason=RejectReason.hallucination, note="not a cat")
            else:
                decide(s, image_id=i, reviewer="bob", action=ReviewAction.edit_approve, expected_version=version,
                       caption=f"An edited caption {k} with ünïcode.")
    with session_scope(engine) as s:
        claim_next(s, reviewer="cy")
        job = create_job(s, kind=JobKind.export, params={"override_balance": True})
        finish_job(s, job_id=job.id, status=JobStatus.done, result={"n_items": 2})
        register_snapshot(s, snapshot_id="snap-1", path="/x/snap-1", content_hash="abc", n_items=2,
                          reviewers=["bob"], image_ids=[ids[0], ids[2]])
        register_student(s, path="/x/student-1", snapshot_id="snap-1", metrics={"loss": 0.5})
        add_user(s, name="ann", role="reviewer", password_hash="$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA")
        add_user(s, name="lead", role=None)
        # quality control: a policy and one item routed to a blind second review
        policy = qc.QcPolicy(enabled=True, sample_fraction=1.0, route_edited=True)
        qc.set_policy(s, policy=policy, curator="lead")
        assert qc.route_decision(s, image_id=ids[0], policy=policy) is not None


def table_rows(url: str) -> dict[str, list[tuple]]:
    """Every row of every table (as the models read them), sorted, for comparing two databases."""
    from sqlmodel import SQLModel

    engine = make_engine(url)
    meta = MetaData()
    meta.reflect(engine)
    out = {}
    with engine.connect() as conn:
        for t in meta.sorted_tables:
            if t.name == "alembic_version" or t.name in DERIVED_TABLES:  # the tally: compared as sums below
                continue
            table = SQLModel.metadata.tables.get(t.name, t)
            out[t.name] = sorted((tuple(r) for r in conn.execute(select(table))), key=repr)
    engine.dispose()
    return out


def _tally(url: str) -> dict:
    from db.tally import recount, tally

    engine = make_engine(url)
    with session_scope(engine) as s:
        kept, counted = tally(s), recount(s)
    engine.dispose()
    assert kept == counted and kept
    return kept


def test_copy_moves_every_table_and_refuses_a_full_database(engine, settings, empty_pg, monkeypatch):
    fill(engine)
    with engine.begin() as conn:  # a table added by a later migration (e.g. users) is copied too
        conn.exec_driver_sql("CREATE TABLE futureuser (id INTEGER PRIMARY KEY, name VARCHAR NOT NULL)")
        conn.exec_driver_sql("INSERT INTO futureuser (id, name) VALUES (1, 'ann'), (7, 'bob')")
    pg = make_engine(empty_pg)
    with pg.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE futureuser (id SERIAL PRIMARY KEY, name VARCHAR NOT NULL)")
    monkeypatch.setenv("CAPSTUDIO_DATA_DIR", str(settings.data_dir))
    monkeypatch.delenv("CAPSTUDIO_DATABASE_URL", raising=False)

    result = CliRunner().invoke(app, ["db", "copy", "--to", empty_pg])
    assert result.exit_code == 0, result.output
    source = table_rows(settings.resolved_database_url)
    copied = table_rows(empty_pg)
    assert {"image", "draft", "review", "reviewevent", "job", "snapshot", "student", "user_account",
            "futureuser"} <= set(source)
    assert copied == source  # every row, every value (bytes, JSON, enums, aware datetimes)
    assert _tally(settings.resolved_database_url) == _tally(empty_pg)  # rebuilt by the triggers, not doubled
    assert all(rows for rows in source.values())
    for name, rows in source.items():
        assert f"{len(rows)} copied  ok" in next(line for line in result.output.splitlines()
                                                 if line.startswith(name + " "))

    # the studio works on the copy: new rows get fresh ids (sequences moved past the copied ones)
    with session_scope(pg) as s:
        png = (BUNDLED / "frog" / "frog_0000.png").read_bytes()
        image, _ = add_image(s, source_kind=SourceKind.bundled, source_key="new", label="frog", png=png,
                             content_hash="new-frog", width=32, height=32)
        item = claim_next(s, reviewer="dee", label="ship")
        decide(s, image_id=item.image_id, reviewer="dee", action=ReviewAction.approve,
               expected_version=item.version)
        newest_event = s.exec(select(ReviewEvent.id).order_by(ReviewEvent.id.desc())).first()[0]
        user_id = s.connection().execute(text("INSERT INTO futureuser (name) VALUES ('cy') RETURNING id")).scalar()
    assert image.id == max(r[0] for r in source["image"]) + 1
    assert newest_event == len(source["reviewevent"]) + 1
    assert user_id == 8
    with session_scope(pg) as s:
        assert s.get(Image, image.id).label == "frog"
    pg.dispose()

    again = CliRunner().invoke(app, ["db", "copy", "--to", empty_pg])
    assert again.exit_code == 2 and "not empty" in again.output and "image (8 rows)" in again.output


def test_copy_into_postgres_then_migrations_and_counts_agree(engine, settings, empty_pg):
    from db.copy import copy_store

    fill(engine)
    counts = {c.table: (c.source, c.copied) for c in copy_store(settings.resolved_database_url, empty_pg)}
    assert counts["image"] == (7, 7) and counts["reviewevent"] == (4, 4) and counts["student"] == (1, 1)
    pg = make_engine(empty_pg)
    with pg.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    pg.dispose()
