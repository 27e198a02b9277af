"""Export: only approved pairs, reproducible content hash, atomic writes, balance check, zip, list."""
from __future__ import annotations

import getpass
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from db.engine import session_scope
from db.lineage import list_snapshot_rows, register_student
from db.models import JobKind, JobStatus, RejectReason, ReviewAction
from db.review import decide, get_item
from pipeline.cli import app
from pipeline.data.export import (
    BalanceError,
    ExportError,
    export_snapshot,
    list_exports,
    sweep_stale_temps,
    zip_snapshot,
)
from pipeline.data.snapshot import list_snapshots, read_snapshot
from pipeline.jobs import start_job, wait_for_job
from pipeline.settings import Settings
from tests.conftest import REPO, both_backends, seed_images


def seed(engine, labels: dict[str, int]) -> list[int]:
    """Real bundled images with a teacher draft each; returns image ids in insertion order."""
    return seed_images(engine, labels, text="Draft: a {label} in a photo, number {i}.",
                       model_id="teacher-x", prompt="Describe the image.")


def act(engine, image_id: int, action: ReviewAction, **kw) -> None:
    with session_scope(engine) as s:
        version = get_item(s, image_id=image_id).version
        decide(s, image_id=image_id, reviewer=kw.pop("reviewer", "ann"), action=action,
               expected_version=version, **kw)


def approve_all(engine, ids: list[int]) -> None:
    for i in ids:
        act(engine, i, ReviewAction.approve)


@pytest.fixture
def small(tmp_path, database_url) -> Settings:
    """SQLite in the data folder, or (tests marked both_backends) a fresh PostgreSQL database."""
    return Settings(data_dir=tmp_path / "data", database_url=database_url, target_per_class=2, _env_file=None)


@pytest.fixture
def store(small):
    from db.engine import init_store

    small.data_dir.mkdir(parents=True, exist_ok=True)
    eng = init_store(small.resolved_database_url)
    yield eng
    eng.dispose()


@both_backends
def test_only_approved_pairs_are_exported_with_final_captions(small, store):
    ids = seed(store, {"cat": 4, "dog": 4})
    act(store, ids[0], ReviewAction.approve)
    act(store, ids[1], ReviewAction.edit_approve, caption="A grey cat asleep on a sofa.", reviewer="bob")
    act(store, ids[2], ReviewAction.reject, reason=RejectReason.hallucination)
    act(store, ids[3], ReviewAction.skip)
    for i in ids[4:6]:
        act(store, i, ReviewAction.approve)
    # ids[6], ids[7] stay pending
    result = export_snapshot(small, store, override_balance=True)
    snap = read_snapshot(result.path)
    rows = snap.train + snap.validation
    assert sorted(int(r.item_id) for r in rows) == sorted([ids[0], ids[1], ids[4], ids[5]])
    by_id = {int(r.item_id): r for r in rows}
    assert by_id[ids[1]].text == "A grey cat asleep on a sofa."
    assert by_id[ids[1]].teacher_draft == "Draft: a cat in a photo, number 1."
    assert by_id[ids[1]].reviewer == "bob"
    assert by_id[ids[0]].text == by_id[ids[0]].teacher_draft  # plain approve keeps the draft
    assert snap.manifest["counts_per_class"] == {"cat": 2, "dog": 2}
    assert snap.manifest["provenance"]["app_version"]
    assert snap.manifest["provenance"]["teachers"][0]["model_id"] == "teacher-x"
    assert snap.manifest["provenance"]["teachers"][0]["prompt"] == "Describe the image."
    with session_scope(store) as s:
        (row,) = list_snapshot_rows(s)
    assert row.id == result.snapshot_id and sorted(row.image_ids) == sorted(by_id)
    assert row.reviewers == ["ann", "bob"]


def _hash_from_files(path: Path) -> str:
    """Recompute the content hash from the files on disk alone."""
    snap = read_snapshot(path)
    digests = sorted(hashlib.sha256(r.image_png).hexdigest() + "\t" + r.label + "\t" + r.text
                     for r in snap.train + snap.validation)
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


@both_backends
def test_same_approved_set_gives_same_hash_and_a_new_snapshot(small, store):
    ids = seed(store, {"cat": 3, "ship": 3})
    approve_all(store, ids[:5])
    first = export_snapshot(small, store, override_balance=True)
    second = export_snapshot(small, store, override_balance=True)
    assert first.snapshot_id != second.snapshot_id
    assert first.content_hash == second.content_hash == _hash_from_files(first.path)
    assert (first.path / "data.parquet").read_bytes() == (second.path / "data.parquet").read_bytes()
    for split in ("train", "validation"):
        assert (first.path / split / "metadata.jsonl").read_bytes() == \
            (second.path / split / "metadata.jsonl").read_bytes()
    approve_all(store, ids[5:])
    third = export_snapshot(small, store, override_balance=True)
    assert third.content_hash != first.content_hash
    # the earlier snapshots are untouched and read-only
    assert read_snapshot(first.path).manifest["n_items"] == 5
    assert _writable_files(first.path) == []


def _writable_files(folder: Path) -> list[str]:
    """Files with any write bit set: the mode bits, not os.access (root may write anything)."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files
    return [str(p.relative_to(folder)) for p in files
            if stat.S_IMODE(p.stat().st_mode) & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)]


def test_the_read_only_check_sees_a_writable_file_even_as_root(small, store):
    approve_all(store, seed(store, {"cat": 3}))
    snap = export_snapshot(small, store, override_balance=True)
    assert _writable_files(snap.path) == []
    (snap.path / "manifest.json").chmod(0o644)  # what os.access would wave through for root
    assert _writable_files(snap.path) == ["manifest.json"]


@both_backends
def test_below_target_is_refused_unless_overridden(small, store):
    ids = seed(store, {"cat": 3, "dog": 1})
    approve_all(store, ids)
    with pytest.raises(BalanceError) as err:
        export_snapshot(small, store)
    assert "dog 1/2" in str(err.value) and "airplane 0/2" in str(err.value)
    assert "cat" not in str(err.value).split(":", 1)[1]
    assert list_snapshots(small.exports_dir) == []
    result = export_snapshot(small, store, override_balance=True, exported_by="lead")
    manifest = read_snapshot(result.path).manifest
    assert manifest["provenance"]["balance"]["overridden"] is True
    assert manifest["provenance"]["balance"]["below_target"]["dog"] == 1
    assert manifest["provenance"]["exported_by"] == "lead"


@both_backends
def test_balanced_set_exports_without_override(small, store):
    from pipeline.classes import CLASSES

    approve_all(store, seed(store, {c: 2 for c in CLASSES}))
    result = export_snapshot(small, store)
    assert result.balance.ok and result.n_items == 20
    assert read_snapshot(result.path).manifest["provenance"]["balance"]["overridden"] is False


@both_backends
def test_nothing_approved_is_an_error(small, store):
    seed(store, {"cat": 2})
    with pytest.raises(ExportError, match="Nothing is approved"):
        export_snapshot(small, store, override_balance=True)


@both_backends
def test_crash_midway_leaves_no_partial_snapshot(small, store, monkeypatch):
    ids = seed(store, {"cat": 4, "dog": 4})
    approve_all(store, ids)
    real = Path.write_bytes
    calls = {"n": 0}

    def failing_write(self, data):  # simulates the disk failing on the 4th image
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError("No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", failing_write)
    with pytest.raises(OSError, match="No space"):
        export_snapshot(small, store, override_balance=True)
    monkeypatch.setattr(Path, "write_bytes", real)
    assert calls["n"] == 4
    assert list_snapshots(small.exports_dir) == [] and list_exports(small, store) == []
    assert list(small.exports_dir.iterdir()) == []  # no temporary folder left either
    with session_scope(store) as s:
        assert list_snapshot_rows(s) == []
    assert export_snapshot(small, store, override_balance=True).n_items == 8


KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from db.engine import make_engine
    from pipeline.data.export import export_snapshot
    from pipeline.settings import Settings
    real, n = Path.write_bytes, [0]
    def write(self, data):
        n[0] += 1
        if n[0] == 3:
            os.kill(os.getpid(), signal.SIGKILL)  # the process dies mid-export, no cleanup runs
        return real(self, data)
    Path.write_bytes = write
    s = Settings(data_dir=sys.argv[1], _env_file=None)
    export_snapshot(s, make_engine(s.resolved_database_url), override_balance=True)
""")


@both_backends
def test_killed_export_leaves_nothing_visible(small, store):
    approve_all(store, seed(store, {"cat": 3, "dog": 3}))
    env = {**os.environ, **({"CAPSTUDIO_DATABASE_URL": small.database_url} if small.database_url else {})}
    proc = subprocess.run([sys.executable, "-c", KILLER, str(small.data_dir)], cwd=REPO,
                          capture_output=True, timeout=120, env=env)
    assert proc.returncode == -9, proc.stderr.decode()
    assert list_snapshots(small.exports_dir) == [] and list_exports(small, store) == []
    leftovers = list(small.exports_dir.iterdir())
    assert leftovers and all(p.name.startswith(".snap-") for p in leftovers)
    assert sweep_stale_temps(small.exports_dir, older_than_s=0) == leftovers
    assert list(small.exports_dir.iterdir()) == []


def test_snapshot_loads_with_datasets_imagefolder(small, store, tmp_path):
    import datasets

    ids = seed(store, {"cat": 3, "frog": 3})
    approve_all(store, ids)
    act(store, ids[0], ReviewAction.reopen)
    act(store, ids[0], ReviewAction.edit_approve, caption="A cat with white paws.")
    result = export_snapshot(small, store, override_balance=True)
    ds = datasets.load_dataset("imagefolder", data_dir=str(result.path), cache_dir=str(tmp_path / "hf"))
    assert ds["train"].num_rows + ds["validation"].num_rows == 6
    rows = [*ds["train"], *ds["validation"]]
    texts = {int(r["item_id"]): r["text"] for r in rows}
    assert texts[ids[0]] == "A cat with white paws."
    assert texts[ids[4]] == "Draft: a frog in a photo, number 1."
    assert rows[0]["image"].size == (32, 32)


def test_zip_is_deterministic_and_complete(small, store):
    approve_all(store, seed(store, {"cat": 2, "dog": 2}))
    result = export_snapshot(small, store, override_balance=True)
    blob = zip_snapshot(result.path)
    assert blob == zip_snapshot(result.path)
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        names = set(zf.namelist())
        on_disk = {f"{result.snapshot_id}/{p.relative_to(result.path).as_posix()}"
                   for p in result.path.rglob("*") if p.is_file()}
        assert names == on_disk
        manifest = json.loads(zf.read(f"{result.snapshot_id}/manifest.json"))
    assert manifest["content_hash"] == result.content_hash


@both_backends
def test_list_exports_newest_first_with_lineage(small, store):
    approve_all(store, seed(store, {"cat": 2, "dog": 2}))
    a = export_snapshot(small, store, override_balance=True)
    b = export_snapshot(small, store, override_balance=True, exported_by="lead")
    with session_scope(store) as s:
        register_student(s, path=str(small.students_dir / "s1"), snapshot_id=a.snapshot_id)
    listed = list_exports(small, store)
    assert [e.snapshot_id for e in listed] == [b.snapshot_id, a.snapshot_id]
    assert listed[0].exported_by == "lead" and listed[0].reviewers == ["ann"]
    assert listed[1].n_students == 1 and listed[0].n_students == 0
    assert listed[0].counts_per_class == {"cat": 2, "dog": 2}


@both_backends
def test_cli_export_refuses_then_overrides(small, store, monkeypatch):
    approve_all(store, seed(store, {"cat": 2}))
    monkeypatch.setenv("CAPSTUDIO_DATA_DIR", str(small.data_dir))
    monkeypatch.setenv("CAPSTUDIO_TARGET_PER_CLASS", "2")
    if small.database_url:
        monkeypatch.setenv("CAPSTUDIO_DATABASE_URL", small.database_url)
    runner = CliRunner()
    refused = runner.invoke(app, ["export"])
    assert refused.exit_code == 2 and "below the target" in refused.output
    done = runner.invoke(app, ["export", "--override-balance", "--val-fraction", "0.5"])
    assert done.exit_code == 0, done.output
    out = json.loads(done.output.strip().splitlines()[-1])
    manifest = read_snapshot(Path(out["path"])).manifest
    assert manifest["split_counts"] == {"train": 1, "validation": 1}
    assert manifest["provenance"]["exported_by"] == getpass.getuser()  # the OS user, not a typed name
    assert "--exported-by" not in runner.invoke(app, ["export", "--help"]).output


@both_backends
def test_export_runs_as_a_job(small, store):
    approve_all(store, seed(store, {"cat": 2, "dog": 2}))
    job_id = start_job(small, kind=JobKind.export, argv=["export", "--override-balance"], params={})
    job = wait_for_job(small, job_id, timeout_s=120)
    assert job.status == JobStatus.done, Path(job.log_path).read_text()
    assert job.result["n_items"] == 4
    assert [e.snapshot_id for e in list_exports(small, store)] == [job.result["snapshot_id"]]
