"""The store's files deleted under a running studio (issue 12, item 9): a deleted `-wal` file is
noticed, its committed decisions are checkpointed into the database before a crash can lose them, and
the app says so; a deleted database file is copied out through the open connection (damage page).

Each writer runs in a child process that ends with `os._exit` (a crash: no connection is closed, so
SQLite's own close-time checkpoint cannot save anything), and a separate process reads the store."""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest
from sqlalchemy import event
from sqlmodel import select

from db.engine import init_store, session_scope
from db.models import Image, ReviewAction
from db.review import decide
from db.storefiles import StoreFilesChange, guard_store_files
from tests.app_store import app_for, engine_for, fill_store
from tests.conftest import REPO

WRITER = textwrap.dedent("""
    import json, os, sys
    from db.engine import init_store, session_scope
    from db.models import ReviewAction
    from db.review import decide
    url, ids, later, delete = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
    check = sys.argv[5] == "check"
    engine = init_store(url)

    def approve(ids):
        with session_scope(engine) as s:
            for i in ids:
                decide(s, image_id=i, reviewer="ann", action=ReviewAction.approve, expected_version=1)

    approve(ids)
    db = url.split("///", 1)[1]
    os.unlink(db + "-wal")
    if delete == "db":
        os.unlink(db)
    if check:
        from db.storefiles import guard_store_files
        found = guard_store_files(engine)
        print(json.dumps({"change": found.change.value, "message": found.message,
                          "rescue": str(found.rescue) if found.rescue else None}))
    approve(later)  # the work goes on (without an explicit check: the pool checks on checkout)
    sys.stdout.flush()
    os._exit(0)  # a crash: nothing is closed
""")


def approved(db_file) -> int:
    """The approved items a fresh process reads from `db_file`."""
    code = ("import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\n"
            "print(c.execute(\"SELECT count(*) FROM review WHERE state = 'approved'\").fetchone()[0])")
    proc = subprocess.run([sys.executable, "-c", code, str(db_file)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout)


def write_and_crash(db_file, ids: list[int], *, delete: str, check: bool, later: list[int] = ()) -> dict | None:
    """Approve `ids`, delete the -wal (and with delete="db" the database file), run the check or not,
    approve `later`, crash."""
    proc = subprocess.run([sys.executable, "-c", WRITER, f"sqlite:///{db_file}", json.dumps(ids),
                           json.dumps(list(later)), delete, "check" if check else "none"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout) if check else None


@pytest.fixture
def store(tmp_path):
    ids = fill_store(tmp_path / "data", per_class=2)
    return tmp_path / "data" / "studio.db", [i for group in ids.values() for i in group]


def test_without_the_check_a_deleted_wal_loses_the_decisions_at_the_next_crash(store):
    """The failure the check exists for (today's behaviour when nothing notices)."""
    db_file, ids = store
    write_and_crash(db_file, ids, delete="wal", check=False)
    assert approved(db_file) == 0


def test_the_check_rescues_decisions_of_a_deleted_wal_before_a_crash(store):
    db_file, ids = store
    found = write_and_crash(db_file, ids[:4], delete="wal", check=True, later=ids[4:])
    assert found["change"] == "wal_rescued"
    assert "was deleted while the studio ran" in found["message"] and str(db_file) in found["message"]
    assert approved(db_file) == len(ids) == 6  # those before the check and those after it


def test_a_job_that_only_opens_sessions_rescues_a_deleted_wal_on_checkout(store):
    """No explicit check (a CLI job): the pool's checkout notices the replaced WAL, checkpoints it through
    the connection that still holds it and retires the pool, so later work lands in the new WAL."""
    db_file, ids = store
    write_and_crash(db_file, ids[:3], delete="wal", check=False, later=ids[3:])
    assert approved(db_file) == len(ids)


def test_a_deleted_database_file_is_copied_out_through_the_open_connection(store):
    db_file, ids = store
    found = write_and_crash(db_file, ids, delete="db", check=True)
    assert found["change"] == "db_gone" and found["rescue"], found
    assert found["rescue"].startswith(str(db_file.parent / "backups"))
    assert approved(found["rescue"]) == len(ids)
    with sqlite3.connect(found["rescue"]) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_the_app_warns_once_after_the_wal_was_deleted_and_keeps_the_decisions(tmp_path, monkeypatch):
    data = tmp_path / "data"
    ids = [i for group in fill_store(data).values() for i in group]
    at = app_for(data, monkeypatch)
    at.run()  # the app's engine now holds the store and its -wal open
    assert not at.exception and not at.warning
    engine = engine_for(data)  # another engine of this process: its commits sit in the shared WAL
    with session_scope(engine) as s:
        for i in ids:
            decide(s, image_id=i, reviewer="ann", action=ReviewAction.approve, expected_version=1)
    os.unlink(data / "studio.db-wal")
    at.run()
    assert not at.exception, at.exception
    [warning] = [w.value for w in at.warning]
    assert "write-ahead log" in warning and "was deleted while the studio ran" in warning
    assert "Nothing was lost" in warning
    assert approved(data / "studio.db") == len(ids)  # in the database file, whatever crashes next
    at.run()
    assert not at.warning  # said once
    engine.dispose()


def test_the_app_shows_the_damage_page_with_the_rescued_copy_after_the_database_was_deleted(
        tmp_path, monkeypatch):
    data = tmp_path / "data"
    fill_store(data)
    at = app_for(data, monkeypatch)
    at.run()
    assert not at.exception
    os.unlink(data / "studio.db")
    at.run()
    assert [t.value for t in at.title] == ["The store is damaged"], [e.value for e in at.exception]
    assert "was deleted or replaced while the studio ran" in at.error[0].value
    [rescue] = (data / "backups").glob("rescued-*.db")
    texts = [t.value for t in at.text]
    assert str(rescue) in texts and any(f"cp {rescue} {data / 'studio.db'}" in t for t in texts)
    assert not at.dataframe
    at.run()  # the page stays until the store is restored; no second copy
    assert [t.value for t in at.title] == ["The store is damaged"]
    assert len(list((data / "backups").glob("rescued-*.db"))) == 1


def read_twice(engine) -> None:
    """Two short sessions: the second checkout compares the files the first one read through."""
    for _ in range(2):
        with session_scope(engine) as s:
            s.exec(select(Image.id)).all()


def test_a_new_store_is_not_taken_for_one_whose_log_was_replaced(tmp_path, caplog):
    """A new store's first connection switches it to WAL, and SQLite creates the -wal only at that
    connection's next read: that file is not a replaced log (the false alarm `bench/store.py`'s import
    printed on every new store), while deleting it afterwards is still caught."""
    engine = init_store(f"sqlite:///{tmp_path / 'studio.db'}")
    with caplog.at_level(logging.WARNING, logger="db.storefiles"):
        read_twice(engine)
        assert guard_store_files(engine) is None
    assert not caplog.records, caplog.text
    os.unlink(tmp_path / "studio.db-wal")
    found = guard_store_files(engine)
    assert found is not None and found.change == StoreFilesChange.wal_rescued
    assert "was deleted while the studio ran" in found.message
    engine.dispose()


def test_importing_into_a_new_store_raises_no_alarm(tmp_path):
    """The user's path: `python -m pipeline import` into a data folder with no store yet."""
    env = {**os.environ, "CAPSTUDIO_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(REPO)}
    env.pop("CAPSTUDIO_DATABASE_URL", None)
    proc = subprocess.run([sys.executable, "-m", "pipeline", "import", "--n-per-class", "2"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "added 20," in proc.stdout
    assert "write-ahead log" not in proc.stderr and "while the studio ran" not in proc.stderr, proc.stderr


def test_a_connection_closed_without_a_pool_event_is_not_taken_for_one_holding_an_old_log(tmp_path, caplog):
    """A connect listener that fails after the files were recorded: SQLAlchemy closes that connection
    without a "close" event. It holds nothing any more; the -wal that SQLite deleted when it closed (the
    last connection) and the next connection's new one are not a replaced log."""
    url = f"sqlite:///{tmp_path / 'studio.db'}"
    init_store(url).dispose()  # a store already in WAL mode, no connection open, so no -wal on disk
    engine = init_store(url)
    failures = [RuntimeError("a later connect listener failed")]

    @event.listens_for(engine, "connect")
    def _fails_once(_dbapi, _record):
        if failures:
            raise failures.pop()

    with pytest.raises(RuntimeError, match="later connect listener"):
        engine.connect()
    assert not (tmp_path / "studio.db-wal").exists()  # closed, and it was the last connection
    with caplog.at_level(logging.WARNING, logger="db.storefiles"):
        read_twice(engine)
        assert guard_store_files(engine) is None
    assert not caplog.records, caplog.text
    engine.dispose()
