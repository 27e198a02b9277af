"""Training, compare and evaluation read a snapshot only after checking it is what was exported
(issue 12, item 2): every file's sha256 and the content hash, and every file_name inside the
snapshot. A refusal names the first file that differs; nothing is trained or scored."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.data.snapshot import (
    SnapshotIntegrityError,
    read_snapshot,
    verify_snapshot,
    write_snapshot,
)
from pipeline.settings import Settings
from pipeline.student.config import StudentConfig, TrainConfig
from tests.conftest_student import cifar20_records

REPO = Path(__file__).resolve().parent.parent


def fresh_snapshot(root: Path, name: str = "snap") -> Path:
    return write_snapshot(cifar20_records()[:6], root, snapshot_id=name, val_fraction=0.34)


def writable(path: Path) -> Path:
    path.chmod(0o644)  # snapshots are written read-only
    return path


def rewrite_rows(snap: Path, split: str, change) -> None:
    meta = writable(snap / split / "metadata.jsonl")
    rows = [json.loads(x) for x in meta.read_text().splitlines()]
    change(rows)
    meta.write_text("".join(json.dumps(r) + "\n" for r in rows))


def edit_caption(snap: Path) -> str:
    rewrite_rows(snap, "train", lambda rows: rows[0].update(text="an edited caption."))
    return "train/metadata.jsonl"


def swap_image(snap: Path) -> str:
    first = sorted((snap / "train").glob("*.png"))[0]
    other = cifar20_records()[10].image_png
    writable(first).write_bytes(other)
    return f"train/{first.name}"


def escape_path(snap: Path) -> str:
    rewrite_rows(snap, "train", lambda rows: rows[0].update(file_name="../../../../etc/passwd"))
    return "train/metadata.jsonl"


def absolute_path(snap: Path) -> str:
    rewrite_rows(snap, "validation", lambda rows: rows[0].update(file_name="/etc/passwd"))
    return "validation/metadata.jsonl"


TAMPERING = [edit_caption, swap_image, escape_path, absolute_path]


@pytest.mark.parametrize("tamper", TAMPERING, ids=lambda f: f.__name__)
def test_a_tampered_snapshot_is_refused_naming_the_file(tmp_path, tamper):
    snap = fresh_snapshot(tmp_path)
    assert verify_snapshot(snap).content_hash == json.loads((snap / "manifest.json").read_text())["content_hash"]
    first = tamper(snap)
    with pytest.raises(SnapshotIntegrityError, match=first.replace(".", r"\.")):
        verify_snapshot(snap)


def test_an_escaping_file_name_is_never_read_even_without_hashes(tmp_path):
    """An older snapshot (no per-file hashes in its manifest): the name check alone refuses."""
    for i, tamper in enumerate((escape_path, absolute_path)):
        snap = fresh_snapshot(tmp_path, f"old{i}")
        manifest = writable(snap / "manifest.json")
        m = json.loads(manifest.read_text())
        del m["files"]
        manifest.write_text(json.dumps(m))
        tamper(snap)
        with pytest.raises(SnapshotIntegrityError, match="passwd"):
            read_snapshot(snap)


def test_an_old_snapshot_without_file_hashes_still_detects_an_edit(tmp_path):
    snap = fresh_snapshot(tmp_path)
    manifest = writable(snap / "manifest.json")
    m = json.loads(manifest.read_text())
    del m["files"]
    manifest.write_text(json.dumps(m))
    assert verify_snapshot(snap).snapshot_id == "snap"  # untouched: accepted
    swapped = swap_image(snap)
    with pytest.raises(SnapshotIntegrityError, match=swapped.replace(".", r"\.")):
        verify_snapshot(snap)


def test_train_compare_and_evaluate_refuse_a_tampered_snapshot(tmp_path):
    from pipeline.student.compare import run_compare
    from pipeline.student.evaluate import items_from_snapshot
    from pipeline.student.train import train

    snap = fresh_snapshot(tmp_path)
    edit_caption(snap)
    out = tmp_path / "student"
    with pytest.raises(SnapshotIntegrityError, match="train/metadata.jsonl"):
        train(snapshot_dir=snap, out_dir=out, student_config=StudentConfig(base_model="never-loaded"),
              train_config=TrainConfig(max_steps=1), device="cpu", show_progress=False)
    assert not out.exists()  # nothing trained, no student recorded with the original hash
    settings = Settings(data_dir=tmp_path / "data", _env_file=None)
    with pytest.raises(SnapshotIntegrityError, match="train/metadata.jsonl"):
        run_compare(settings, student_dir=tmp_path / "no-student", snapshot=str(snap))
    with pytest.raises(SnapshotIntegrityError, match="train/metadata.jsonl"):
        items_from_snapshot(snap)


def test_the_train_command_says_one_line_and_exits_2(tmp_path):
    snap = fresh_snapshot(tmp_path)
    swapped = swap_image(snap)
    env = {**os.environ, "CAPSTUDIO_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, "-m", "pipeline", "train", "--snapshot", str(snap), "--out",
                           str(tmp_path / "out"), "--base-model", "never-loaded", "--device", "cpu"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: snapshot") and swapped in lines[0], proc.stderr
    assert "re-export" in lines[0] and "Traceback" not in proc.stderr


def test_a_manifest_rewritten_to_match_is_refused_against_the_store(tmp_path):
    """Edited caption, manifest hashes recomputed to match: the snapshot is self-consistent, but the
    store registered another content hash at export, so train, evaluate and compare refuse it."""
    from pipeline.data.snapshot import _file_hashes, content_hash
    from tests.playground_models import store_with_snapshot

    data = tmp_path / "data"
    _, snapshot_id = store_with_snapshot(data)
    snap = data / "exports" / snapshot_id
    for p in snap.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    edit_caption(snap)
    manifest = json.loads((snap / "manifest.json").read_text())
    s = read_snapshot(snap)
    manifest["content_hash"] = content_hash([*s.train, *s.validation], s.weak)
    manifest["files"] = _file_hashes(snap)
    (snap / "manifest.json").write_text(json.dumps(manifest))
    assert verify_snapshot(snap).content_hash == manifest["content_hash"]  # consistent on its own
    env = {**os.environ, "CAPSTUDIO_DATA_DIR": str(data)}
    env.pop("CAPSTUDIO_DATABASE_URL", None)
    for args in (["train", "--snapshot", str(snap), "--out", str(tmp_path / "out"), "--base-model", "never-loaded",
                  "--device", "cpu"],
                 ["evaluate", "--student", str(tmp_path / "none"), "--snapshot", str(snap)],
                 ["compare", "--student", str(tmp_path / "none"), "--snapshot", snapshot_id]):
        proc = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 2, (args[0], proc.stderr[-2000:])
        line = proc.stderr.strip().splitlines()[-1]
        assert "is not the store's" in line and "Traceback" not in proc.stderr, (args[0], proc.stderr[-2000:])
    assert not (tmp_path / "out").exists()
