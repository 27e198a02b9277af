"""Image import: balanced seeded samples, idempotent re-runs, unreadable files skipped and counted."""
from __future__ import annotations

import io
import shutil
from collections import Counter

import pytest
from PIL import Image as PILImage
from sqlmodel import select

from db.catalog import count_images
from db.engine import session_scope
from db.models import Image, Review, ReviewState, SourceKind
from pipeline.data.sources import ImportSource, SourceError, import_images
from tests.conftest import BUNDLED


def _labels(store) -> Counter:
    with session_scope(store) as s:
        return Counter(s.exec(select(Image.label)).all())


def test_bundled_import_is_balanced_and_idempotent(store):
    first = import_images(store, source=ImportSource.bundled, n_per_class=3, seed=0)
    assert (first.added, first.existing, first.corrupt) == (30, 0, 0)
    assert _labels(store) == Counter({c: 3 for c in first.per_class})
    assert len(first.per_class) == 10

    again = import_images(store, source=ImportSource.bundled, n_per_class=3, seed=0)
    assert (again.added, again.existing, again.corrupt) == (0, 30, 0)
    with session_scope(store) as s:
        assert count_images(s) == 30
        # every imported image waits in the review queue
        assert set(s.exec(select(Review.state)).all()) == {ReviewState.pending}


def test_another_seed_picks_other_images_still_balanced(store):
    import_images(store, source=ImportSource.bundled, n_per_class=3, seed=0)
    other = import_images(store, source=ImportSource.bundled, n_per_class=3, seed=1)
    assert other.added > 0  # a different sample (20 per class to choose from)
    assert other.added + other.existing == 30  # still 3 of every class
    assert all(3 <= n <= 6 for n in _labels(store).values())


def test_stored_png_is_the_source_picture(store):
    import_images(store, source=ImportSource.bundled, n_per_class=1, seed=0)
    with session_scope(store) as s:
        img = s.exec(select(Image).where(Image.label == "cat")).one()
    assert img.source_kind == SourceKind.bundled and img.source_key.startswith("bundled:cat/")
    original = PILImage.open(BUNDLED / img.source_key.removeprefix("bundled:")).convert("RGB")
    stored = PILImage.open(io.BytesIO(img.png))
    assert stored.format == "PNG" and (img.width, img.height) == (32, 32)
    assert stored.convert("RGB").tobytes() == original.tobytes()


def test_folder_import_skips_and_counts_corrupt_files(store, tmp_path):
    root = tmp_path / "mine"
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(2):
            shutil.copy(BUNDLED / label / f"{label}_000{i}.png", root / label / f"{i}.png")
    (root / "cat" / "broken.png").write_bytes(b"not an image at all")
    good = (BUNDLED / "dog" / "dog_0005.png").read_bytes()
    (root / "dog" / "truncated.png").write_bytes(good[: len(good) // 3])

    summary = import_images(store, source=ImportSource.folder, n_per_class=10, path=root)
    assert (summary.added, summary.corrupt) == (4, 2)
    assert sorted(k.rsplit("/", 2)[-2] + "/" + k.rsplit("/", 1)[-1] for k in summary.corrupt_keys) == [
        "cat/broken.png", "dog/truncated.png"]
    assert _labels(store) == Counter({"cat": 2, "dog": 2})


def test_corrupt_file_is_replaced_to_keep_the_class_balanced(store, tmp_path):
    root = tmp_path / "mine"
    (root / "cat").mkdir(parents=True)
    for i in range(3):
        shutil.copy(BUNDLED / "cat" / f"cat_000{i}.png", root / "cat" / f"{i}.png")
    for i in range(3):
        (root / "cat" / f"bad{i}.jpg").write_bytes(b"\xff\xd8garbage")
    summary = import_images(store, source=ImportSource.folder, n_per_class=3, path=root)
    assert summary.added == 3  # the bad files never cost a slot


def test_same_picture_from_two_sources_is_one_image(store, tmp_path):
    import_images(store, source=ImportSource.bundled, n_per_class=20, seed=0)
    root = tmp_path / "copy" / "cat"
    root.mkdir(parents=True)
    shutil.copy(BUNDLED / "cat" / "cat_0007.png", root / "renamed.png")
    summary = import_images(store, source=ImportSource.folder, n_per_class=5, path=root.parent)
    assert (summary.added, summary.existing) == (0, 1)


def test_missing_sources_say_what_to_pass(store, tmp_path):
    with pytest.raises(SourceError, match="--cifar-root"):
        import_images(store, source=ImportSource.cifar10, n_per_class=1, path=tmp_path / "nothing")
    with pytest.raises(SourceError, match="does not exist"):
        import_images(store, source=ImportSource.folder, n_per_class=1, path=tmp_path / "nothing")
    with session_scope(store) as s:
        assert count_images(s) == 0


def test_cifar10_in_torchvisions_layout_is_read_by_torchvision(store, tmp_path, monkeypatch):
    """A `cifar-10-batches-py` folder (pickled batches and meta, as in the official archive), read
    by torchvision's own CIFAR10 class. Only its md5 checks are bypassed: these files hold 30 of
    the bundled pictures, not the official archive."""
    import pickle

    import numpy as np
    import torchvision.datasets.cifar as tv_cifar

    from pipeline.classes import CLASSES

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    pictures, labels = [], []
    for label, name in enumerate(CLASSES):
        for f in sorted((BUNDLED / name).glob("*.png"))[:3]:
            pictures.append(PILImage.open(f).convert("RGB"))
            labels.append(label)
    data = np.stack([np.asarray(p).transpose(2, 0, 1).reshape(-1) for p in pictures])  # CHW rows
    (folder / "test_batch").write_bytes(pickle.dumps({"data": data, "labels": labels}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(CLASSES)}))
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)

    summary = import_images(store, source=ImportSource.cifar10, n_per_class=2, path=tmp_path)
    assert (summary.added, summary.corrupt) == (20, 0)
    assert _labels(store) == Counter({c: 2 for c in CLASSES})
    with session_scope(store) as s:
        rows = s.exec(select(Image)).all()
    for row in rows:  # each stored picture is the one at its index in the batch, under its label
        assert row.source_kind == SourceKind.cifar10 and row.source_key.startswith("cifar10:test:")
        i = int(row.source_key.rsplit(":", 1)[1])
        assert CLASSES[labels[i]] == row.label
        assert PILImage.open(io.BytesIO(row.png)).convert("RGB").tobytes() == pictures[i].tobytes()
    again = import_images(store, source=ImportSource.cifar10, n_per_class=2, path=tmp_path)
    assert (again.added, again.existing) == (0, 20)
