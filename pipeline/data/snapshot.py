"""Export snapshots on disk: the one format the exporter writes and the student reads.

A snapshot is an immutable folder in the Hugging Face `imagefolder` layout:

    <root>/<snapshot_id>/
        manifest.json            counts, content hash, provenance, split, config
        README.md                dataset card
        data.parquet             every row (image bytes + text + ids + split)
        train/metadata.jsonl     one JSON object per image in train/
        train/<file>.png
        validation/metadata.jsonl
        validation/<file>.png
        weak/metadata.jsonl      optional: unreviewed teacher drafts, never mixed into train/validation
        weak/<file>.png

`datasets.load_dataset("imagefolder", data_dir=<snapshot>)` loads it with a train and a
validation split (and a `weak` split when the export added unreviewed drafts); the `text` column holds the
approved caption (in `weak`: the teacher's unreviewed draft).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image

SPLITS = ("train", "validation")
WEAK_SPLIT = "weak"  # unreviewed teacher drafts: a separate, clearly marked split, never train/validation
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SnapshotRecord:
    """One approved pair as it goes into (and comes out of) a snapshot."""

    image_png: bytes  # the 32x32 RGB image, PNG-encoded
    text: str  # the approved (final) caption
    label: str  # CIFAR-10 class name
    item_id: str = ""  # id in the store (image id), or any stable key
    teacher_draft: str = ""
    reviewer: str = ""
    extra: dict = field(default_factory=dict)

    def image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.image_png)).convert("RGB")


@dataclass(frozen=True)
class Snapshot:
    """A snapshot read back from disk."""

    path: Path
    manifest: dict
    train: list[SnapshotRecord]
    validation: list[SnapshotRecord]
    weak: list[SnapshotRecord] = field(default_factory=list)

    @property
    def snapshot_id(self) -> str:
        return self.manifest["snapshot_id"]

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]


class SnapshotExistsError(FileExistsError):
    """A snapshot with that id is already on disk: snapshots are never overwritten."""


class SnapshotMissingError(FileNotFoundError):
    """No snapshot at that path (no manifest.json)."""

    def __init__(self, path: Path):
        super().__init__(f"{path} is not a snapshot: no manifest.json. Give a folder made by "
                         "`python -m pipeline export` (under <data_dir>/exports/)")


class SnapshotIntegrityError(ValueError):
    """A snapshot on disk is not what was exported (an edited, swapped or escaping file)."""


def content_hash(records: Iterable[SnapshotRecord], weak: Iterable[SnapshotRecord] = ()) -> str:
    """sha256 over (image bytes, caption, label) of every record, in a canonical order; weak records
    (unreviewed drafts) are marked as such, and a snapshot without them hashes as it always did."""
    digests = sorted(
        hashlib.sha256(r.image_png).hexdigest() + "\t" + r.label + "\t" + r.text for r in records
    )
    digests += sorted(
        "weak\t" + hashlib.sha256(r.image_png).hexdigest() + "\t" + r.label + "\t" + r.text for r in weak
    )
    return hashlib.sha256("\n".join(digests).encode("utf-8")).hexdigest()


def assign_splits(records: list[SnapshotRecord], *, val_fraction: float, seed: int) -> dict[str, str]:
    """Stratified split by class: {item_key: "train" | "validation"}, stable for a seed.

    Each class with at least 2 items keeps at least one in each split when val_fraction > 0.
    """
    by_class: dict[str, list[SnapshotRecord]] = defaultdict(list)
    for r in records:
        by_class[r.label].append(r)
    out: dict[str, str] = {}
    for label, items in sorted(by_class.items()):
        items = sorted(items, key=_record_key)
        random.Random(f"{seed}:{label}").shuffle(items)
        n_val = round(len(items) * val_fraction)
        if val_fraction > 0 and len(items) >= 2:
            n_val = min(max(n_val, 1), len(items) - 1)
        for i, r in enumerate(items):
            out[_record_key(r)] = "validation" if i < n_val else "train"
    return out


def _record_key(r: SnapshotRecord) -> str:
    return hashlib.sha256(r.image_png).hexdigest()[:16] + ":" + r.item_id


def new_snapshot_id(root: Path, chash: str) -> str:
    """`snap-<UTC time>-<hash prefix>`, with a suffix when that id is taken.

    The id is reserved with an atomic mkdir of a hidden `.<id>.id` folder, so concurrent exports
    in the same second never pick the same id; write_snapshot removes the reservation.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    base = f"snap-{stamp}-{chash[:8]}"
    candidate, n = base, 1
    while True:
        try:
            _reservation(root, candidate).mkdir()
        except FileExistsError:
            pass
        else:
            if not (root / candidate).exists():
                return candidate
            _reservation(root, candidate).rmdir()  # a finished snapshot already has this id
        n += 1
        candidate = f"{base}-{n}"


def _reservation(root: Path, snapshot_id: str) -> Path:
    return Path(root) / f".{snapshot_id}.id"


def write_snapshot(
    records: list[SnapshotRecord],
    root: Path,
    *,
    snapshot_id: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    provenance: dict | None = None,
    card_text: str = "",
    weak_records: list[SnapshotRecord] = (),
) -> Path:
    """Write records as a new snapshot under root, atomically; returns its folder.

    Everything is written to a temporary folder beside the target and renamed into place,
    so a crash leaves no partial snapshot. The files are made read-only afterwards.
    """
    if not records:
        raise ValueError("a snapshot needs at least one record")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    gold_keys = {_record_key(r) for r in records}
    weak_records = [r for r in weak_records if _record_key(r) not in gold_keys]  # approved wins
    chash = content_hash(records, weak_records)
    if snapshot_id is None:
        snapshot_id = new_snapshot_id(root, chash)
    final = root / snapshot_id
    if final.exists():
        raise SnapshotExistsError(f"snapshot {snapshot_id} already exists at {final}")
    splits = assign_splits(records, val_fraction=val_fraction, seed=seed)
    splits |= {_record_key(r): WEAK_SPLIT for r in weak_records}
    tmp = Path(tempfile.mkdtemp(prefix=f".{snapshot_id}.", dir=root))
    try:
        written = _write_files(tmp, [*records, *weak_records], splits)
        manifest = {
            "format_version": FORMAT_VERSION,
            "snapshot_id": snapshot_id,
            "created_at": datetime.now(UTC).isoformat(),
            "content_hash": chash,
            "n_items": len(records),
            "counts_per_class": dict(sorted(Counter(r.label for r in records).items())),
            "split_counts": dict(Counter(splits.values())),
            "n_weak": len(weak_records),
            "weak_counts_per_class": dict(sorted(Counter(r.label for r in weak_records).items())),
            "split": {"val_fraction": val_fraction, "seed": seed},
            "provenance": provenance or {},
        }
        (tmp / "README.md").write_text(card_text or _default_card(manifest))
        manifest["files"] = _file_hashes(tmp, known=written)  # every file but the manifest itself
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
        _fsync_tree(tmp)
        os.rename(tmp, final)  # atomic on one filesystem; refuses a non-empty target
        _fsync_dir(root)  # the rename itself survives a power cut
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(_reservation(root, snapshot_id), ignore_errors=True)  # the id is taken, or given back
    _make_read_only(final)
    return final


def _write_files(folder: Path, records: list[SnapshotRecord], splits: dict[str, str]) -> dict[str, str]:
    """Write the image files, metadata and parquet; returns {relative path: sha256} of the images
    (hashed from the bytes in hand, so the manifest need not read 100,000 files back)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows, written = [], {}
    meta: dict[str, list[dict]] = {s: [] for s in (*SPLITS, WEAK_SPLIT)}
    for r in sorted(records, key=_record_key):
        split = splits[_record_key(r)]
        sha = hashlib.sha256(r.image_png).hexdigest()
        file_name = f"{r.label}_{sha[:12]}.png"
        (folder / split).mkdir(exist_ok=True)
        (folder / split / file_name).write_bytes(r.image_png)
        written[f"{split}/{file_name}"] = sha
        row = {
            "file_name": file_name,
            "text": r.text,
            "label": r.label,
            "teacher_draft": r.teacher_draft,
            "reviewer": r.reviewer,
            "item_id": r.item_id,
            "extra": json.dumps(r.extra, sort_keys=True, ensure_ascii=False),
        }
        meta[split].append(row)
        rows.append({**row, "split": split, "image": r.image_png})
    for split, lines in meta.items():
        if lines:
            body = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines)
            (folder / split / "metadata.jsonl").write_text(body, encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows), folder / "data.parquet")
    return written


def _file_hashes(folder: Path, *, known: dict[str, str] | None = None) -> dict[str, str]:
    """{relative posix path: sha256} of every file under folder except manifest.json, sorted; a file
    in `known` (just written from those bytes) is not read again."""
    known = known or {}
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != "manifest.json":
            rel = p.relative_to(folder).as_posix()
            out[rel] = known[rel] if rel in known else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def contained_file(folder: Path, file_name: str, *, where: str) -> Path:
    """folder/file_name, refused unless it is a plain relative name that stays inside folder
    (no absolute path, no `..`, no link out): metadata files name images, and a name is data."""
    name = str(file_name)
    rel = Path(name)
    if not name or rel.is_absolute() or ".." in rel.parts or "\\" in name or "\x00" in name:
        raise SnapshotIntegrityError(f"{where}: file_name {name!r} is not a file inside {folder}; "
                                     "re-export the snapshot instead of editing it")
    target = folder / rel
    if not target.resolve().is_relative_to(folder.resolve()):
        raise SnapshotIntegrityError(f"{where}: file_name {name!r} leads outside {folder}; "
                                     "re-export the snapshot instead of editing it")
    return target


def verify_snapshot(path: Path, *, expected_hash: str | None = None) -> Snapshot:
    """Read a snapshot and refuse it unless it is exactly what was exported: every file's sha256
    (manifest "files"), then the content hash over images, labels and captions (and, if given, the
    hash the store registered). Training, compare and evaluation read snapshots only this way.

    Raises SnapshotIntegrityError naming the first file that differs.
    """
    path = Path(path)
    fix = f"re-export it (python -m pipeline export) or restore {path} from a backup"
    manifest_file = path / "manifest.json"
    if not manifest_file.is_file():
        raise SnapshotMissingError(path)
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotIntegrityError(f"snapshot {path}: manifest.json is not valid JSON ({exc}); {fix}") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("content_hash"), str):
        raise SnapshotIntegrityError(f"snapshot {path}: manifest.json has no content hash; {fix}")
    recorded = manifest.get("files")
    if recorded is not None:
        found = _file_hashes(path)
        for rel in sorted(set(recorded) | set(found)):
            if rel not in found:
                raise SnapshotIntegrityError(f"snapshot {path}: {rel} is missing; {fix}")
            if rel not in recorded:
                raise SnapshotIntegrityError(f"snapshot {path}: {rel} was added after the export; {fix}")
            if found[rel] != recorded[rel]:
                raise SnapshotIntegrityError(f"snapshot {path}: {rel} was changed after the export "
                                             f"(sha256 differs); {fix}")
    snap = read_snapshot(path)
    if recorded is None:  # older snapshots have no "files": each image's name carries its hash
        for split in (*SPLITS, WEAK_SPLIT):
            meta = path / split / "metadata.jsonl"
            for row in _rows(meta) if meta.exists() else []:
                name = str(row["file_name"])
                digest = hashlib.sha256((path / split / name).read_bytes()).hexdigest()[:12]
                if name.endswith(".png") and not name.endswith(f"_{digest}.png"):
                    raise SnapshotIntegrityError(f"snapshot {path}: {split}/{name} is not the exported "
                                                 f"image (sha256 differs); {fix}")
    actual = content_hash([*snap.train, *snap.validation], snap.weak)
    for what, want in (("manifest", manifest["content_hash"]), ("store", expected_hash)):
        if want is not None and actual != want:
            raise SnapshotIntegrityError(
                f"snapshot {path}: its content hash {actual[:12]}… is not the {what}'s {want[:12]}… "
                f"(a caption, label or image in a metadata.jsonl was changed); {fix}")
    return snap


def _rows(meta: Path) -> list[dict]:
    """The JSON rows of a metadata.jsonl, refused (naming the line) unless each has a file_name."""
    rows = []
    for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
                raise ValueError("no file_name")
        except ValueError as exc:
            raise SnapshotIntegrityError(f"{meta}, line {n}: not a snapshot row ({exc}); "
                                         "re-export the snapshot instead of editing it") from exc
        rows.append(row)
    return rows


def read_snapshot(path: Path) -> Snapshot:
    """Read a snapshot folder back into records (images as PNG bytes). It checks only that every
    file_name stays inside the snapshot; `verify_snapshot` also checks every hash."""
    path = Path(path)
    manifest_file = path / "manifest.json"
    if not manifest_file.is_file():
        raise SnapshotMissingError(path)
    manifest = json.loads(manifest_file.read_text())
    parts: dict[str, list[SnapshotRecord]] = {s: [] for s in (*SPLITS, WEAK_SPLIT)}
    for split in parts:
        meta = path / split / "metadata.jsonl"
        if not meta.exists():
            continue
        for n, row in enumerate(_rows(meta), 1):
            image = contained_file(path / split, row["file_name"], where=f"{meta}, line {n}")
            parts[split].append(
                SnapshotRecord(
                    image_png=image.read_bytes(),
                    text=row["text"],
                    label=row["label"],
                    item_id=row.get("item_id", ""),
                    teacher_draft=row.get("teacher_draft", ""),
                    reviewer=row.get("reviewer", ""),
                    extra=json.loads(row.get("extra") or "{}"),
                )
            )
    return Snapshot(path=path, manifest=manifest, train=parts["train"], validation=parts["validation"],
                    weak=parts[WEAK_SPLIT])


def list_snapshots(root: Path) -> list[dict]:
    """Manifests of every complete snapshot under root, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        if d.name.startswith(".") or not (d / "manifest.json").is_file():
            continue
        m = json.loads((d / "manifest.json").read_text())
        m["path"] = str(d)
        out.append(m)
    return sorted(out, key=lambda m: m.get("created_at", ""), reverse=True)


def _default_card(manifest: dict) -> str:
    counts = "\n".join(f"| {k} | {v} |" for k, v in manifest["counts_per_class"].items())
    prov = json.dumps(manifest["provenance"], indent=2, ensure_ascii=False)
    qc = manifest["provenance"].get("quality_control")
    qc_line = "" if qc is None else (
        f"- reviewer agreement (blind second review of {qc['n_items']} items): rate {_fmt(qc['agreement_rate'])}, "
        f"Cohen's kappa {_fmt(qc['kappa'])}, mean caption similarity (ROUGE-L) {_fmt(qc['mean_similarity'])}; "
        "only agreed or adjudicated items of those reviewed twice are included\n")
    return f"""---
task_categories: [image-to-text]
---
# Caption snapshot `{manifest['snapshot_id']}`

Reviewed image-caption pairs: CIFAR-10 images (32x32 RGB) with captions drafted by a
teacher vision-language model and approved or edited by human reviewers.

- approved items: {manifest['n_items']} ({manifest['split_counts']})
- unreviewed teacher drafts (split `weak`, not reviewed by anyone): {manifest.get('n_weak', 0)}
- content hash (sha256 over images, labels and captions): `{manifest['content_hash']}`
- created: {manifest['created_at']}
{qc_line}
Load with `datasets.load_dataset("imagefolder", data_dir="<this folder>")`.

| class | items |
|---|---:|
{counts}

## Provenance

```json
{prov}
```

## Source images

CIFAR-10: Alex Krizhevsky, *Learning Multiple Layers of Features from Tiny Images*,
Technical Report, University of Toronto, 2009.
"""


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _fsync_tree(folder: Path) -> None:
    """Everything written under `folder` reaches the disk before the rename: one syncfs(2) of its
    filesystem on Linux (an export of 100,000 pairs would otherwise wait on 100,000 fsyncs), else
    an fsync of every file and folder."""
    if _syncfs(folder):
        return
    for p in sorted(folder.rglob("*"), reverse=True):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        elif p.is_dir():
            _fsync_dir(p)
    _fsync_dir(folder)


def _syncfs(folder: Path) -> bool:
    """syncfs(2) on the filesystem holding `folder`; False where there is none (not Linux)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return False
    fd = os.open(folder, os.O_RDONLY)
    try:
        return syncfs(fd) == 0
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_read_only(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            p.chmod(0o444)


__all__ = [
    "Snapshot", "SnapshotRecord", "SnapshotExistsError", "SnapshotIntegrityError", "SnapshotMissingError",
    "write_snapshot",
    "read_snapshot", "verify_snapshot", "contained_file",
    "list_snapshots", "content_hash", "assign_splits", "asdict",
]
