"""Hostile folder imports (issue 12, item 5): a decompression bomb is skipped and counted instead of
aborting the folder; a 16-bit PNG is converted exactly as an upload is; a folder without class
sub-folders says which layout is expected; the app imports only from under the import folder."""
from __future__ import annotations

import io
import shutil
import struct
import zlib

import pytest
from PIL import Image as PILImage

from db.catalog import count_images
from db.engine import session_scope
from db.models import Image
from pipeline.data.images import decode_png, decode_upload
from pipeline.data.sources import ImportSource, SourceError, import_images
from pipeline.identity import Actor, Role
from pipeline.services.jobs import inside_import_root, start_caption_job
from tests.conftest import BUNDLED

CURATOR = Actor("cora", Role.curator)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels: a decompression bomb's header
    (above Pillow's own limit it raises DecompressionBombError when opened)."""
    buf = io.BytesIO()
    PILImage.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def sixteen_bit_png(value: int = 0x8000) -> bytes:
    buf = io.BytesIO()
    PILImage.new("I;16", (8, 8), value).save(buf, format="PNG")
    return buf.getvalue()


def class_folder(root, label: str = "cat", n: int = 2):
    (root / label).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        shutil.copy(BUNDLED / label / f"{label}_000{i}.png", root / label / f"{i}.png")
    return root


@pytest.mark.parametrize("edge", [6_000, 20_000])  # above our 25 MP limit; above Pillow's bomb error
def test_a_decompression_bomb_is_skipped_and_counted_not_fatal(store, tmp_path, edge):
    root = class_folder(tmp_path / "mine")
    (root / "cat" / "bomb.png").write_bytes(png_claiming(edge, edge))
    summary = import_images(store, source=ImportSource.folder, n_per_class=10, path=root)
    assert (summary.added, summary.corrupt) == (2, 1)
    assert summary.corrupt_keys[0].endswith("cat/bomb.png")


def test_a_sixteen_bit_png_is_imported_as_the_upload_path_converts_it(store, tmp_path):
    root = tmp_path / "mine"
    (root / "cat").mkdir(parents=True)
    data = sixteen_bit_png(0x8000)
    (root / "cat" / "deep.png").write_bytes(data)
    summary = import_images(store, source=ImportSource.folder, n_per_class=10, path=root)
    assert summary.added == 1
    with session_scope(store) as s:
        stored = decode_png(s.query(Image).one().png)
    assert stored.getpixel((0, 0)) == decode_upload(data, "deep.png").getpixel((0, 0)) == (128, 128, 128)


def test_a_folder_without_class_sub_folders_names_the_expected_layout(store, tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    for i in range(3):
        shutil.copy(BUNDLED / "cat" / f"cat_000{i}.png", root / f"{i}.png")
    with pytest.raises(SourceError, match=r"no class sub-folders.*holds 3 image\(s\) directly.*cat/0001.png"):
        import_images(store, source=ImportSource.folder, n_per_class=10, path=root)
    with session_scope(store) as s:
        assert count_images(s) == 0


def test_a_symlink_out_of_the_folder_is_not_read(store, tmp_path):
    root = class_folder(tmp_path / "mine")
    secret = tmp_path / "outside.png"
    shutil.copy(BUNDLED / "dog" / "dog_0000.png", secret)
    (root / "cat" / "link.png").symlink_to(secret)
    summary = import_images(store, source=ImportSource.folder, n_per_class=10, path=root)
    assert (summary.added, summary.corrupt) == (2, 1) and summary.corrupt_keys[0].endswith("cat/link.png")


@pytest.mark.parametrize("where", ["absolute", "dotdot", "symlink"])
def test_the_jobs_service_imports_only_under_the_import_folder(settings, store, tmp_path, where):
    outside = class_folder(tmp_path / "elsewhere")
    settings.import_root.mkdir(parents=True)
    path = {"absolute": str(outside), "dotdot": "../../elsewhere", "symlink": "inside"}[where]
    if where == "symlink":
        (settings.import_root / "inside").symlink_to(outside)
    started = start_caption_job(settings, store, actor=CURATOR, source="folder", n_per_class=2, path=path)
    assert not started.ok and started.job_id is None
    assert "is not inside the import folder" in started.message
    assert str(settings.import_root.resolve()) in started.message
    with session_scope(store) as s:
        assert count_images(s) == 0


def test_a_folder_under_the_import_root_is_accepted(settings, tmp_path):
    inside = class_folder(settings.import_root / "batch1")
    assert inside_import_root(settings, "batch1") == inside.resolve()
    assert inside_import_root(settings, str(inside)) == inside.resolve()
    assert inside_import_root(settings, "/etc") is None
