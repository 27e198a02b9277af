"""A table of hostile inputs (issue 12): invisible and control-character captions, hostile names,
broken settings, tampered snapshots and planted checkpoints, each sent through the CLI or the
service a user reaches, each with the message the user must see, and each leaving the store and
the exports exactly as they were."""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from db.engine import session_scope
from db.models import ReviewAction
from db.review import get_item
from pipeline.data.export import export_snapshot
from pipeline.identity import Actor, Role
from pipeline.services import review
from pipeline.settings import Settings
from tests.app_store import engine_for, fill_store
from tests.hostile import store_fingerprint
from tests.playground_models import approve_all


@dataclass
class World:
    data: Path
    engine: object
    snapshot: Path  # the one export under data/exports
    pending: int  # an image id still pending review
    scratch: Path  # outside the data folder: copies to tamper with


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, str, int]:
    data = tmp_path_factory.mktemp("hostile") / "data"
    ids = fill_store(data, per_class=3)
    engine = engine_for(data)
    approve_all(engine, {label: image_ids[:2] for label, image_ids in ids.items()})
    result = export_snapshot(Settings(data_dir=data, _env_file=None), engine, override_balance=True,
                             val_fraction=0.34, seed=0, exported_by="ann")
    engine.dispose()
    return data, result.snapshot_id, ids["cat"][2]


@pytest.fixture
def world(template, tmp_path) -> World:
    data, snapshot_id, pending = template
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    engine = engine_for(copy)
    yield World(copy, engine, copy / "exports" / snapshot_id, pending, tmp_path / "scratch")
    engine.dispose()


def fingerprint(w: World) -> tuple:
    """Every decision, event, job, registered snapshot and student, and every byte under exports/."""
    return store_fingerprint(w.engine, w.data / "exports")


# --- the ways in -------------------------------------------------------------------------------

def caption(text: str) -> Callable[[World], str]:
    """A reviewer edits and approves a pending item with `text` (the Review page's call)."""
    def run(w: World) -> str:
        with session_scope(w.engine) as s:
            version = get_item(s, image_id=w.pending).version
        view = review.submit_decision(w.engine, actor=Actor("ann", Role.reviewer), spec=review.QueueSpec(),
                                      image_id=w.pending, expected_version=version,
                                      action=ReviewAction.edit_approve, caption=text)
        assert not view.ok
        return view.message
    return run


def setting(name: str, value: str, command: tuple[str, ...] = ("status",)) -> Callable[[World], str]:
    """`python -m pipeline <command>` with one bad setting in the environment."""
    def run(w: World) -> str:
        from pipeline.cli import app

        env = {k: None for k in os.environ if k.startswith("CAPSTUDIO_")}
        result = CliRunner().invoke(app, list(command), env={**env, "CAPSTUDIO_DATA_DIR": str(w.data), name: value})
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        return lines[0]
    return run


def snapshot_read(tamper: Callable[[Path], None], via: str = "train") -> Callable[[World], str]:
    """Tamper with a copy of the export, then train / compare / evaluate on it."""
    def run(w: World) -> str:
        from pipeline.student.compare import run_compare
        from pipeline.student.config import StudentConfig, TrainConfig
        from pipeline.student.evaluate import items_from_snapshot
        from pipeline.student.train import train

        snap = w.scratch / w.snapshot.name
        shutil.copytree(w.snapshot, snap)
        for p in snap.rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        tamper(snap)
        with pytest.raises((ValueError, FileNotFoundError)) as refused:
            if via == "train":
                train(snapshot_dir=snap, out_dir=w.scratch / "student", student_config=StudentConfig(base_model="x"),
                      train_config=TrainConfig(max_steps=1), device="cpu", show_progress=False)
            elif via == "compare":
                run_compare(Settings(data_dir=w.data, _env_file=None), student_dir=w.scratch / "none",
                            snapshot=str(snap))
            else:
                items_from_snapshot(snap, split="train")
        assert not (w.scratch / "student").exists()
        return str(refused.value)
    return run


def compare_id(snapshot_id: str) -> Callable[[World], str]:
    """`compare --snapshot <id>` with a hostile id."""
    def run(w: World) -> str:
        from pipeline.student.compare import run_compare

        with pytest.raises((ValueError, FileNotFoundError)) as refused:
            run_compare(Settings(data_dir=w.data, _env_file=None), student_dir=w.scratch / "none",
                        snapshot=snapshot_id)
        return str(refused.value)
    return run


def image_folder(file_name: str) -> Callable[[World], str]:
    """`evaluate --images <folder>` whose metadata.jsonl names `file_name`."""
    def run(w: World) -> str:
        from pipeline.student.evaluate import items_from_folder

        folder = w.scratch / "images"
        folder.mkdir(parents=True)
        (folder / "metadata.jsonl").write_text(json.dumps({"file_name": file_name, "text": "t", "label": "cat"}))
        with pytest.raises(ValueError) as refused:
            items_from_folder(folder)
        return str(refused.value)
    return run


def checkpoint(write: Callable[[Path], None]) -> Callable[[World], str]:
    """Resume from a checkpoint whose optimizer.pt was written by `write`."""
    def run(w: World) -> str:
        from pipeline.student.checkpoint import UnsafeCheckpointError, load_optimizer_state

        path = w.scratch / "ckpt" / "optimizer.pt"
        path.parent.mkdir(parents=True)
        write(path)
        with pytest.raises(UnsafeCheckpointError) as refused:
            load_optimizer_state(path)
        assert not (w.scratch / "ran").exists()
        return str(refused.value)
    return run


# --- tampering and planted files ----------------------------------------------------------------

def _rows(snap: Path, split: str, change: Callable[[list[dict]], None]) -> None:
    meta = snap / split / "metadata.jsonl"
    rows = [json.loads(x) for x in meta.read_text().splitlines()]
    change(rows)
    meta.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def edit_text(snap: Path) -> None:
    _rows(snap, "train", lambda rows: rows[0].update(text="an injected caption."))


def relabel(snap: Path) -> None:
    _rows(snap, "train", lambda rows: rows[0].update(label="truck"))


def swap_image(snap: Path) -> None:
    a, b = sorted((snap / "train").glob("*.png"))[:2]
    a.write_bytes(b.read_bytes())


def escape(snap: Path) -> None:
    _rows(snap, "train", lambda rows: rows[0].update(file_name="../../../../etc/passwd"))


def absolute(snap: Path) -> None:
    _rows(snap, "train", lambda rows: rows[0].update(file_name="/etc/passwd"))


def add_row(snap: Path) -> None:
    _rows(snap, "train", lambda rows: rows.append({**rows[0], "item_id": "extra"}))


def delete_image(snap: Path) -> None:
    sorted((snap / "train").glob("*.png"))[0].unlink()


def garbage_manifest(snap: Path) -> None:
    (snap / "manifest.json").write_text("{ not json")


def no_manifest(snap: Path) -> None:
    (snap / "manifest.json").unlink()


def symlink_out(snap: Path) -> None:
    png = sorted((snap / "train").glob("*.png"))[0]
    png.unlink()
    png.symlink_to("/etc/hostname")


def planted_pickle(path: Path) -> None:
    class Plant:
        def __reduce__(self):
            return os.system, (f"touch {path.parent.parent / 'ran'}",)
    torch.save({"optimizer": Plant(), "scheduler": {}, "torch_rng": torch.get_rng_state()}, path)


def garbage_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(512))


def not_a_checkpoint(path: Path) -> None:
    torch.save([1, 2, 3], path)


ZW = "\u200b\u200c\u200d\ufeff"
CASES: dict[str, tuple[Callable[[World], str], str]] = {
    # captions
    "caption: empty": (caption(""), "The caption is empty"),
    "caption: spaces and tabs": (caption(" \t  "), "The caption is empty"),
    "caption: zero-width space": (caption("\u200b"), "no visible characters (only U+200B)"),
    "caption: zero-width non-joiner": (caption("\u200c"), "no visible characters (only U+200C)"),
    "caption: zero-width joiner": (caption("\u200d\u200d"), "no visible characters (only U+200D)"),
    "caption: byte-order mark": (caption("\ufeff"), "no visible characters (only U+FEFF)"),
    "caption: all zero-width, spaced": (caption(f" {ZW} {ZW} "), "no visible characters"),
    "caption: bidi override": (caption("\u202e\u202d"), "no visible characters"),
    "caption: LRM/RLM only": (caption("\u200e\u200f"), "no visible characters"),
    "caption: word joiner, soft hyphen": (caption("\u2060\u00ad"), "no visible characters"),
    "caption: no-break and ideographic spaces": (caption("\u00a0\u3000\u2007"), "The caption is empty"),
    "caption: combining marks alone": (caption("\u0301\u0308"), "no visible characters"),
    "caption: terminal escape": (caption("a cat \x1b]8;;http://x\x07link"), "control character U+001B"),
    "caption: NUL byte": (caption("a cat\x00"), "control character U+0000"),
    "caption: lone surrogate": (caption("a cat \ud800"), "control character U+D800"),
    "caption: too long": (caption("a" * 2001), "the limit is 2000"),
    # settings
    "setting: batch size abc": (setting("CAPSTUDIO_BATCH_SIZE", "abc"), "CAPSTUDIO_BATCH_SIZE='abc' is invalid"),
    "setting: database url garbage": (setting("CAPSTUDIO_DATABASE_URL", "garbage"), "not a database URL"),
    "setting: device tpu": (setting("CAPSTUDIO_DEVICE", "tpu"), "CAPSTUDIO_DEVICE='tpu' is invalid"),
    "setting: native kernels maybe": (setting("CAPSTUDIO_NATIVE_KERNELS", "maybe"), "CAPSTUDIO_NATIVE_KERNELS"),
    "setting: auth mode root": (setting("CAPSTUDIO_AUTH_MODE", "root"), "CAPSTUDIO_AUTH_MODE='root' is invalid"),
    # snapshot tampering and names
    "snapshot: edited caption (train)": (snapshot_read(edit_text), "train/metadata.jsonl was changed"),
    "snapshot: edited caption (compare)": (snapshot_read(edit_text, "compare"), "train/metadata.jsonl was changed"),
    "snapshot: edited caption (evaluate)": (snapshot_read(edit_text, "evaluate"), "train/metadata.jsonl was changed"),
    "snapshot: relabelled": (snapshot_read(relabel), "train/metadata.jsonl was changed"),
    "snapshot: swapped image": (snapshot_read(swap_image), ".png was changed"),
    "snapshot: ../ file_name": (snapshot_read(escape), "train/metadata.jsonl was changed"),
    "snapshot: absolute file_name": (snapshot_read(absolute, "compare"), "train/metadata.jsonl was changed"),
    "snapshot: extra row": (snapshot_read(add_row), "train/metadata.jsonl was changed"),
    "snapshot: deleted image": (snapshot_read(delete_image), ".png is missing"),
    "snapshot: image linked out": (snapshot_read(symlink_out), ".png was changed"),
    "snapshot: garbage manifest": (snapshot_read(garbage_manifest), "manifest.json is not valid JSON"),
    "snapshot: no manifest": (snapshot_read(no_manifest, "compare"), "is not a snapshot: no manifest.json"),
    "name: snapshot id ../../etc": (compare_id("../../etc"), "is not a snapshot: no manifest.json"),
    "name: snapshot id /etc": (compare_id("/etc"), "is not a snapshot: no manifest.json"),
    "name: snapshot id ..": (compare_id(".."), "is not a file inside"),
    "name: image folder ../ file_name": (image_folder("../../etc/passwd"), "is not a file inside"),
    "name: image folder absolute file_name": (image_folder("/etc/passwd"), "is not a file inside"),
    # checkpoints
    "checkpoint: planted pickle": (checkpoint(planted_pickle), "does not load as plain tensors"),
    "checkpoint: garbage bytes": (checkpoint(garbage_bytes), "does not load as plain tensors"),
    "checkpoint: not a checkpoint": (checkpoint(not_a_checkpoint), "not a training checkpoint"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_hostile_input_is_refused_with_its_message_and_changes_nothing(world, case):
    run, expected = CASES[case]
    before = fingerprint(world)
    said = run(world)
    assert expected in said, said
    assert fingerprint(world) == before
