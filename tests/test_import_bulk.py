"""The bulk folder import (issue 16): the batched, parallel import stores exactly what the one-by-one
import stored; a re-run skips stored paths unread (the writer processes: test_import_writers.py);
the fast PNG path hashes and stores what the upload decoder would; the bulk insert stores what
adding images one by one stores."""
from __future__ import annotations

import io
import os
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image as PILImage
from PIL import PngImagePlugin
from sqlalchemy import create_engine, inspect
from sqlmodel import select

from db.catalog import NewImage, add_image, add_images, stored_source_keys_under
from db.engine import (
    BULK_CACHE_KIB,
    BULK_CHECKPOINT_BYTES,
    BULK_MMAP_BYTES,
    PAGE_SIZE,
    alembic_config,
    bulk_writes,
    init_store,
    session_scope,
)
from db.models import Image, Review, ReviewState, SourceKind
from pipeline.data.images import MAX_UPLOAD_BYTES, decode_file, pixel_hash, plain_png, to_png
from pipeline.data.ingest import READ_SIZE, prepare_file, read_file
from pipeline.data.sources import ImportSource, balanced_order, candidates_for, import_images
from tests.conftest import BACKENDS, BUNDLED, both_backends

REPO = Path(__file__).resolve().parent.parent


def mixed_folder(root: Path) -> Path:
    """Bundled pictures plus what a real folder holds: a nested sub-folder, a duplicate, RGBA,
    palette, JPEG, 16-bit, text chunks, an EXIF rotation, and unreadable files."""
    for label in ("cat", "dog", "bird"):
        shutil.copytree(BUNDLED / label, root / label)
    (root / "cat" / "nested").mkdir()
    shutil.copy(BUNDLED / "cat" / "cat_0001.png", root / "cat" / "nested" / "again.png")  # same pixels
    bird = PILImage.open(BUNDLED / "bird" / "bird_0002.png").convert("RGB")
    bird.convert("RGBA").save(root / "bird" / "rgba.png")
    bird.convert("P").save(root / "bird" / "palette.png")
    bird.save(root / "bird" / "photo.jpg", quality=90)
    bird.rotate(90).save(root / "bird" / "turned.png")
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "made by a camera app")
    bird.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT).save(root / "bird" / "texted.png", pnginfo=info)
    exif = PILImage.Exif()
    exif[0x0112] = 6  # orientation: rotate on display
    bird.transpose(PILImage.Transpose.FLIP_TOP_BOTTOM).save(root / "bird" / "rotated.png", exif=exif)
    PILImage.new("I;16", (8, 8), 0x8000).save(root / "dog" / "sixteen.png")
    (root / "cat" / "zz_broken.png").write_bytes(b"not an image at all")
    good = (BUNDLED / "dog" / "dog_0005.png").read_bytes()
    (root / "dog" / "aa_truncated.png").write_bytes(good[: len(good) // 3])
    flipped = bytearray(good)
    flipped[60] ^= 0xFF  # a byte of the compressed pixels: the chunk's CRC no longer matches
    (root / "dog" / "bad_crc.png").write_bytes(bytes(flipped))
    return root


def one_by_one(engine, *, root: Path, n_per_class: int, seed: int) -> None:
    """The import as it was before issue 16: per class, in sampled order, decode, re-encode, add."""
    for label, items in balanced_order(candidates_for(ImportSource.folder, path=root), seed=seed).items():
        taken = 0
        with session_scope(engine) as session:
            for cand in items:
                if taken == n_per_class:
                    break
                try:
                    image = decode_file(Path(cand.path)) if cand.path else cand.load()
                except (OSError, ValueError, SyntaxError, PILImage.DecompressionBombError):
                    continue
                taken += 1
                add_image(session, source_kind=ImportSource.folder.kind, source_key=cand.key, label=label,
                          png=to_png(image), content_hash=pixel_hash(image), width=image.width, height=image.height)


def stored(engine) -> list[tuple]:
    """Every image row (decoded pixels instead of PNG bytes) with its review row."""
    with session_scope(engine) as s:
        rows = s.exec(select(Image, Review).join(Review, Review.image_id == Image.id).order_by(Image.id)).all()
    return [(im.id, im.source_key, im.label, im.content_hash, im.width, im.height, im.source_kind,
             PILImage.open(io.BytesIO(im.png)).convert("RGB").tobytes(), rv.label, rv.state, rv.version)
            for im, rv in rows]


@pytest.mark.parametrize("workers", [0, 2])
def test_batched_import_stores_what_the_one_by_one_import_stored(tmp_path, workers):
    root = mixed_folder(tmp_path / "src")
    old, new = (init_store(f"sqlite:///{tmp_path / name}") for name in ("old.db", "new.db"))
    one_by_one(old, root=root, n_per_class=15, seed=3)
    summary = import_images(new, source=ImportSource.folder, path=root, n_per_class=15, seed=3,
                            workers=workers, batch_size=7)
    assert stored(new) == stored(old)  # same ids, keys, labels, hashes, sizes, pixels, review rows
    assert summary.added == len(stored(new)) and summary.added + summary.existing == 45  # 15 per class
    every = import_images(new, source=ImportSource.folder, path=root, n_per_class=None, workers=workers,
                          batch_size=7)
    assert sorted(k.rsplit("/", 1)[1] for k in every.corrupt_keys) == ["aa_truncated.png", "bad_crc.png",
                                                                       "zz_broken.png"]
    one_by_one(old, root=root, n_per_class=10**6, seed=0)
    assert sorted(r[1:] for r in stored(new)) == sorted(r[1:] for r in stored(old))  # the same set of images
    assert every.added + every.existing == len(stored(new)) + 2  # again.png and rgba.png repeat pictures
    old.dispose()
    new.dispose()


def test_fast_png_path_equals_the_upload_decoder(tmp_path):
    root = mixed_folder(tmp_path / "src")
    fast = 0
    for path in sorted(root.rglob("*.*")):
        result = plain_png(path.read_bytes())
        if result is None:
            continue
        fast += 1
        png, width, height, content_hash = result
        image = decode_file(path)
        assert content_hash == pixel_hash(image) and (width, height) == image.size
        assert PILImage.open(io.BytesIO(png)).convert("RGB").tobytes() == image.tobytes()
        assert b"tEXt" not in png  # metadata is not carried into the store
    assert fast >= 60  # the bundled pictures and texted.png take the fast path
    for name in ("rgba.png", "palette.png", "rotated.png"):  # transparency, palette, EXIF
        assert plain_png((root / "bird" / name).read_bytes()) is None, name
    for name in ("sixteen.png", "aa_truncated.png", "bad_crc.png"):
        assert plain_png((root / "dog" / name).read_bytes()) is None, name


def write_pngs(root: Path, n: int) -> None:
    base = [PILImage.open(p).convert("RGB") for p in sorted((BUNDLED / "cat").glob("*.png"))]
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
    for i in range(n):
        image = base[i % len(base)].copy()
        image.putpixel((0, 0), (i & 255, (i >> 8) & 255, 7))  # every file a different picture
        image.save(root / ("cat", "dog")[i % 2] / f"{i:05d}.png")


def test_a_rerun_skips_stored_paths_without_reading_them(store, tmp_path):
    root = tmp_path / "src"
    write_pngs(root, 40)
    first = import_images(store, source=ImportSource.folder, path=root, n_per_class=None)
    assert (first.added, first.existing, first.corrupt) == (40, 0, 0)
    for f in root.rglob("*.png"):  # were they read again, every one would be unreadable now
        f.write_bytes(b"overwritten")
    (root / "cat" / "new.png").write_bytes((BUNDLED / "dog" / "dog_0001.png").read_bytes())
    again = import_images(store, source=ImportSource.folder, path=root, n_per_class=None)
    assert (again.added, again.existing, again.corrupt) == (1, 40, 0)


@both_backends
def test_bulk_import_on_each_backend(store, tmp_path, backend):
    root = mixed_folder(tmp_path / "src")
    summary = import_images(store, source=ImportSource.folder, path=root, n_per_class=None, batch_size=9)
    with session_scope(store) as s:
        rows = s.exec(select(Image.id, Image.content_hash)).all()
        reviews = s.exec(select(Review.image_id)).all()
        image, review = s.exec(select(Image, Review).join(Review, Review.image_id == Image.id)).first()
    assert summary.added == len(rows) == len({h for _, h in rows}) == len(reviews)
    assert sorted(i for i, _ in rows) == sorted(reviews)
    # the rows read back as the ORM wrote them (SQLite's bulk path formats them itself)
    assert image.source_kind == SourceKind.folder and review.state == ReviewState.pending
    assert abs(image.created_at.replace(tzinfo=None) - datetime.now(UTC).replace(tzinfo=None)) < timedelta(hours=1)
    assert review.updated_at.replace(tzinfo=None) == image.created_at.replace(tzinfo=None) and review.version == 1
    assert summary.corrupt == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_migration_0007_adds_and_drops_the_source_key_index(tmp_path, backend, request):
    from alembic import command

    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'm.db'}"
    else:
        server = request.getfixturevalue("pg_server")
        url = server.create_database()
        request.addfinalizer(lambda: server.drop_database(url))
    command.upgrade(alembic_config(url), "0006")
    engine = create_engine(url)
    assert "ix_image_source_key" not in {ix["name"] for ix in inspect(engine).get_indexes("image")}
    init_store(url).dispose()
    assert "ix_image_source_key" in {ix["name"] for ix in inspect(engine).get_indexes("image")}
    command.downgrade(alembic_config(url), "0006")
    assert "ix_image_source_key" not in {ix["name"] for ix in inspect(engine).get_indexes("image")}
    engine.dispose()


def _new_image(i: int, label: str, pixels: int) -> NewImage:
    """Image number i (its own key) showing picture `pixels`: two numbers with one picture are duplicates."""
    picture = PILImage.new("RGB", (4 + pixels % 3, 5), (pixels, 2 * pixels % 256, 7))
    return NewImage(source_key=f"k/{i}", label=label, png=to_png(picture), content_hash=pixel_hash(picture),
                    width=picture.width, height=picture.height)


def _rows(engine) -> list[tuple]:
    with session_scope(engine) as s:
        rows = s.exec(select(Image, Review).join(Review, Review.image_id == Image.id).order_by(Image.id)).all()
    return [(im.id, im.source_kind, im.source_key, im.label, im.content_hash, im.width, im.height, im.png,
             rv.label, rv.state, rv.draft_id, rv.flag_count, rv.version, rv.reviewer, rv.claimed_by,
             rv.updated_at.replace(tzinfo=None) - im.created_at.replace(tzinfo=None)) for im, rv in rows]


@both_backends
def test_add_images_stores_what_add_image_stores(store, backend, request, tmp_path):
    """The bulk insert (SQLite: explicit ids and an INSERT ... SELECT for the reviews) gives the rows,
    ids included, that adding the same images one by one gives: duplicates within a batch, across
    batches and of images already stored are skipped, the first one kept."""
    if backend == "sqlite":
        other = init_store(f"sqlite:///{tmp_path / 'one_by_one.db'}")
    else:
        server = request.getfixturevalue("pg_server")
        url = server.migrated_database()
        other = init_store(url)
        request.addfinalizer(lambda: server.drop_database(url))
    request.addfinalizer(other.dispose)
    stored_first = [_new_image(0, "cat", 1), _new_image(1, "dog", 2)]
    batches = [
        [_new_image(2, "cat", 3), _new_image(3, "cat", 1), _new_image(4, "dog", 4), _new_image(5, "bird", 3),
         _new_image(6, "dog", 5)],  # 3: already stored; 5: repeats 2 (same batch)
        [_new_image(7, "bird", 4), _new_image(8, "bird", 6), _new_image(9, "cat", 6), _new_image(10, "dog", 2)],
        [_new_image(11, "cat", 1)],  # nothing new: no insert at all
        [_new_image(12, "frog", 7)],
    ]
    for engine in (store, other):
        with session_scope(engine) as s:
            for im in stored_first:
                add_image(s, source_kind=SourceKind.upload, **im._asdict())
    bulk = []
    for batch in batches:
        with session_scope(store) as s:
            bulk.append(add_images(s, source_kind=SourceKind.folder, images=batch))
    single = []
    for batch in batches:
        with session_scope(other) as s:
            single.append([add_image(s, source_kind=SourceKind.folder, **im._asdict())[1] for im in batch])
    assert bulk == single == [[True, False, True, False, True], [False, True, False, False], [False], [True]]
    assert [r[:-1] for r in _rows(store)] == [r[:-1] for r in _rows(other)]
    assert [r[0] for r in _rows(store)] == [1, 2, 3, 4, 5, 6, 7]
    assert all(r[-1] == timedelta(0) for r in _rows(store)[2:])  # a new review's updated_at: its image's created_at


def test_bulk_writes_checkpoint_less_often_and_give_the_defaults_back(store):
    def pragmas() -> tuple[int, int, int]:
        with store.connect() as conn:
            return (conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one(),
                    conn.exec_driver_sql("PRAGMA cache_size").scalar_one(),
                    conn.exec_driver_sql("PRAGMA mmap_size").scalar_one())

    with bulk_writes(store) as conn:
        page = conn.exec_driver_sql("PRAGMA page_size").scalar_one()
        assert (conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one(),
                conn.exec_driver_sql("PRAGMA cache_size").scalar_one(),
                conn.exec_driver_sql("PRAGMA mmap_size").scalar_one()) == (BULK_CHECKPOINT_BYTES // page,
                                                                           -BULK_CACHE_KIB, BULK_MMAP_BYTES)
        conn.commit()
    assert pragmas() == (1000, -2000, 0)  # SQLite's defaults: the app's pooled connection keeps none of it


def test_a_file_larger_than_the_first_read_is_read_whole(tmp_path):
    noise = PILImage.frombytes("RGB", (200, 200), os.urandom(200 * 200 * 3))
    noise.save(tmp_path / "noise.png")
    data = (tmp_path / "noise.png").read_bytes()
    assert len(data) > READ_SIZE
    assert read_file(str(tmp_path / "noise.png")) == data
    png, width, height, content_hash = prepare_file(str(tmp_path / "noise.png"))
    assert (width, height, content_hash) == (200, 200, pixel_hash(noise))
    assert PILImage.open(io.BytesIO(png)).convert("RGB").tobytes() == noise.tobytes()
    (tmp_path / "huge.png").write_bytes(data + b"\0" * (MAX_UPLOAD_BYTES + 10 - len(data)))
    assert len(read_file(str(tmp_path / "huge.png"))) == MAX_UPLOAD_BYTES + 1  # enough to refuse it
    assert prepare_file(str(tmp_path / "huge.png")).png is None


@both_backends
def test_stored_source_keys_under_a_prefix(store, backend):
    """A large class checks its files against the keys under its folder: all of them, and on SQLite (a key
    range the source-key index answers, not a LIKE that scans every key) exactly them."""
    keys = ["/d/a_b%/x.png", "/d/a_b%/y/z.png", "/d/a_b%", "/d/a_b%0.png", "/D/A_B%/x.png", "/d/axb%/x.png",
            "/d/a_b%/é.png", "/d/a_b&/x.png"]
    with session_scope(store) as s:
        add_images(s, source_kind=SourceKind.folder, images=[_new_image(i, "cat", i) for i in range(len(keys))])
        for i, key in enumerate(keys):
            s.exec(select(Image).where(Image.source_key == f"k/{i}")).one().source_key = key
    with session_scope(store) as s:
        found = stored_source_keys_under(s, prefix="/d/a_b%/")
    expected = {"/d/a_b%/x.png", "/d/a_b%/y/z.png", "/d/a_b%/é.png"}
    assert found >= expected
    if backend == "sqlite":
        assert found == expected


def test_a_new_sqlite_store_has_8_kib_pages_and_an_old_one_keeps_its_own(tmp_path):
    """Three ~2.5 KB image rows share an 8 KiB page (a 4 KiB page held one, the rest slack). A store
    made before keeps its 4 KiB pages and imports into them as before."""
    new = init_store(f"sqlite:///{tmp_path / 'new.db'}")
    old_path = tmp_path / "old.db"
    conn = sqlite3.connect(old_path)
    conn.execute("PRAGMA page_size=4096")
    conn.execute("CREATE TABLE made_before (x)")  # the file now has pages of 4 KiB
    conn.commit()
    conn.close()
    old = init_store(f"sqlite:///{old_path}")
    for engine, page in ((new, PAGE_SIZE), (old, 4096)):
        with engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA page_size").scalar_one() == page
            assert c.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        summary = import_images(engine, source=ImportSource.bundled, n_per_class=2, workers=0)
        assert summary.added == 20
    assert PAGE_SIZE == 8192


