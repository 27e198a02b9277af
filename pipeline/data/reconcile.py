"""Snapshots on disk the store does not know: an export killed between its folder's rename and the
store registration leaves a complete snapshot behind. `reconcile_snapshots` runs on start and
registers such a folder (written by this studio, intact, every image in this store) or moves a
damaged one aside to <exports>/.unregistered/; a folder copied in by hand from another store is left as it is.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine

from db.catalog import get_images
from db.engine import session_scope
from db.lineage import list_snapshot_rows, register_snapshot
from pipeline.data.snapshot import content_hash, read_snapshot

ASIDE = ".unregistered"


@dataclass(frozen=True)
class Reconciled:
    """What happened to one unregistered snapshot folder: registered, moved_aside or left."""

    snapshot_id: str
    action: str
    message: str


def reconcile_snapshots(exports_dir: Path, engine: Engine) -> list[Reconciled]:
    """Register or move aside every complete snapshot folder under `exports_dir` the store lacks."""
    root = Path(exports_dir)
    if not root.is_dir():
        return []
    with session_scope(engine) as s:
        known = {r.id for r in list_snapshot_rows(s)}
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.name in known or not (folder / "manifest.json").is_file():
            continue
        out.append(_reconcile_one(folder, engine))
    return out


def _reconcile_one(folder: Path, engine: Engine) -> Reconciled:
    sid = folder.name
    try:
        snap = read_snapshot(folder)
        manifest = snap.manifest
        records = [*snap.train, *snap.validation]
        damaged = None
        if manifest.get("snapshot_id") != sid:
            damaged = f"its manifest names {manifest.get('snapshot_id')!r}"
        elif content_hash(records, snap.weak) != manifest.get("content_hash"):
            damaged = "its files do not match the manifest's content hash"
    except (OSError, ValueError, KeyError, TypeError) as exc:  # json errors are ValueErrors
        damaged = f"it cannot be read ({exc})"
    if damaged:
        return _move_aside(folder, f"Snapshot folder {sid} is not registered and {damaged}")
    provenance = manifest.get("provenance") or {}
    ids = [int(r.item_id) for r in records if str(r.item_id).isdigit()]
    with session_scope(engine) as s:
        present = {im.id for im in get_images(s, ids=ids)} if ids else set()
    if provenance.get("app") != "capstudio" or len(ids) != len(records) or set(ids) - present:
        return Reconciled(sid, "left", f"Snapshot folder {sid} comes from another store: left as it is, "
                                       "not registered (it is listed as copied in by hand).")
    with session_scope(engine) as s:
        register_snapshot(s, snapshot_id=sid, path=str(folder), content_hash=manifest["content_hash"],
                          n_items=len(records), reviewers=list(provenance.get("reviewers", [])), image_ids=ids)
    return Reconciled(sid, "registered", f"Snapshot {sid} was on disk but not in the store (an export "
                                         "was interrupted): registered it.")


def _move_aside(folder: Path, why: str) -> Reconciled:
    aside = folder.parent / ASIDE
    aside.mkdir(exist_ok=True)
    target = aside / folder.name
    n = 1
    while target.exists():
        n += 1
        target = aside / f"{folder.name}-{n}"
    shutil.move(str(folder), str(target))
    return Reconciled(folder.name, "moved_aside", f"{why}: moved it aside to {target}.")
