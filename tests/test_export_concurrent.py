"""Concurrent exports and interrupted ones (issue 12, item 8): four exports at once each get their
own snapshot id (no `OSError [Errno 39]` from a same-second clash), and a snapshot folder left by an
export killed between its rename and its registration is registered on start (a damaged one is
moved aside), saying which."""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading

from db.engine import init_store, session_scope
from db.lineage import list_snapshot_rows
from db.models import ReviewAction
from db.review import decide, get_item
from pipeline.data.export import export_snapshot
from pipeline.data.reconcile import ASIDE, reconcile_snapshots
from pipeline.data.snapshot import list_snapshots, read_snapshot
from pipeline.settings import Settings
from tests.app_store import app_for
from tests.conftest import REPO, seed_images

N = 4


def approved_store(tmp_path) -> tuple[Settings, object]:
    settings = Settings(data_dir=tmp_path / "data", target_per_class=1, _env_file=None)
    engine = init_store(settings.resolved_database_url)
    for i in seed_images(engine, {"cat": 2, "dog": 2}):
        with session_scope(engine) as s:
            decide(s, image_id=i, reviewer="ann", action=ReviewAction.approve,
                   expected_version=get_item(s, image_id=i).version)
    return settings, engine


def _assert_n_distinct_snapshots(settings, engine, ids) -> None:
    assert len(set(ids)) == N, ids
    on_disk = {m["snapshot_id"] for m in list_snapshots(settings.exports_dir)}
    with session_scope(engine) as s:
        registered = {r.id for r in list_snapshot_rows(s)}
    assert on_disk == registered == set(ids)
    for sid in ids:  # each folder is complete and its manifest names itself
        snap = read_snapshot(settings.exports_dir / sid)
        assert snap.snapshot_id == sid and len(snap.train) + len(snap.validation) == 4
    assert not [p for p in settings.exports_dir.iterdir() if p.name.startswith(".")]  # no temp left


def test_four_exports_in_threads_at_once_get_four_snapshots(tmp_path):
    settings, engine = approved_store(tmp_path)
    barrier, ids, errors = threading.Barrier(N), [], []

    def one() -> None:
        barrier.wait()
        try:
            ids.append(export_snapshot(settings, engine, override_balance=True).snapshot_id)
        except Exception as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=one) for _ in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    _assert_n_distinct_snapshots(settings, engine, ids)
    engine.dispose()


def _export_in_process(data_dir, barrier, queue) -> None:
    settings = Settings(data_dir=data_dir, target_per_class=1, _env_file=None)
    engine = init_store(settings.resolved_database_url)
    barrier.wait()
    try:
        queue.put(("ok", export_snapshot(settings, engine, override_balance=True).snapshot_id))
    except Exception as exc:
        queue.put(("error", repr(exc)))
    engine.dispose()


def test_four_exports_in_processes_at_once_get_four_snapshots(tmp_path):
    settings, engine = approved_store(tmp_path)
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(N), ctx.Queue()
    procs = [ctx.Process(target=_export_in_process, args=(settings.data_dir, barrier, queue)) for _ in range(N)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=180) for _ in range(N)]
    for p in procs:
        p.join(60)
    assert [r for r in results if r[0] == "error"] == []
    _assert_n_distinct_snapshots(settings, engine, [sid for _, sid in results])
    engine.dispose()


KILLED_EXPORT = textwrap.dedent("""
    import os, sys
    import pipeline.data.export as export
    from db.engine import init_store
    from pipeline.settings import Settings

    def killed(*args, **kwargs):  # the process dies right after the rename, before registering
        os._exit(9)

    export.register_snapshot = killed
    settings = Settings(target_per_class=1)
    export.export_snapshot(settings, init_store(settings.resolved_database_url), override_balance=True)
""")


def _killed_export(settings) -> str:
    env = {**os.environ, "CAPSTUDIO_DATA_DIR": str(settings.data_dir)}
    env.pop("CAPSTUDIO_DATABASE_URL", None)
    proc = subprocess.run([sys.executable, "-c", KILLED_EXPORT], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr
    [manifest] = list_snapshots(settings.exports_dir)
    return manifest["snapshot_id"]


def test_a_snapshot_left_by_a_killed_export_is_registered_on_start(tmp_path):
    settings, engine = approved_store(tmp_path)
    sid = _killed_export(settings)
    with session_scope(engine) as s:
        assert list_snapshot_rows(s) == []  # the state the kill left: on disk, unknown to the store
    [done] = reconcile_snapshots(settings.exports_dir, engine)
    assert (done.snapshot_id, done.action) == (sid, "registered") and "registered it" in done.message
    with session_scope(engine) as s:
        [row] = list_snapshot_rows(s)
        assert (row.id, row.n_items, row.reviewers) == (sid, 4, ["ann"]) and len(row.image_ids) == 4
    assert reconcile_snapshots(settings.exports_dir, engine) == []  # nothing left to do
    engine.dispose()


def test_a_damaged_unregistered_snapshot_is_moved_aside(tmp_path):
    settings, engine = approved_store(tmp_path)
    sid = _killed_export(settings)
    meta = settings.exports_dir / sid / "train" / "metadata.jsonl"
    rows = [json.loads(x) for x in meta.read_text().splitlines()]
    rows[0]["text"] = "tampered"
    meta.chmod(0o644)
    meta.write_text("".join(json.dumps(r) + "\n" for r in rows))
    [done] = reconcile_snapshots(settings.exports_dir, engine)
    assert done.action == "moved_aside" and "content hash" in done.message
    assert not (settings.exports_dir / sid).exists()
    assert (settings.exports_dir / ASIDE / sid / "manifest.json").is_file()
    with session_scope(engine) as s:
        assert list_snapshot_rows(s) == []
    engine.dispose()


def test_the_app_reconciles_on_start_and_tells_the_curator(tmp_path, monkeypatch):
    settings, engine = approved_store(tmp_path)
    sid = _killed_export(settings)
    engine.dispose()
    at = app_for(settings.data_dir, monkeypatch)
    at.run()
    assert not at.exception, at.exception
    assert any(sid in t.value and "registered it" in t.value for t in at.toast), [t.value for t in at.toast]
    engine = init_store(settings.resolved_database_url)
    with session_scope(engine) as s:
        assert [r.id for r in list_snapshot_rows(s)] == [sid]
    engine.dispose()
