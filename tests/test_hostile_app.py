"""A table of hostile inputs (issue 12: items 3, 5, 8, 9) through the CLI, the services and the app:
decompression bombs, 16-bit PNGs, truncated and fake files, symlinks and paths out of the import
folder, names with Markdown/HTML, a damaged store. Each gets its expected message, and the store,
the exports and the guidelines are checked to be unchanged (or changed only as stated)."""
from __future__ import annotations

import io
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image as PILImage
from sqlmodel import select
from typer.testing import CliRunner

from db.catalog import add_draft
from db.engine import session_scope
from db.jobs import create_job, mark_job_running, update_progress
from db.models import (
    Image,
    JobKind,
    Review,
    ReviewAction,
    ReviewState,
)
from db.review import decide, get_item
from pipeline.cli import app as cli_app
from pipeline.data.export import export_snapshot
from pipeline.data.images import decode_png
from pipeline.data.sources import ImportSource, import_images
from pipeline.identity import Actor, PermissionDenied, Role
from pipeline.jobs import HOST
from pipeline.markup import WORD_JOINER
from pipeline.services.guidelines import read_guidelines, write_guidelines
from pipeline.services.jobs import start_caption_job
from pipeline.services.playground import open_playground
from pipeline.settings import Settings
from tests.app_store import BUNDLED, app_for, engine_for, fill_store
from tests.hostile import EVIL, HOSTILE, HOSTILE_FILE, HOSTILE_LABEL, HOSTILE_NAME, store_fingerprint
from tests.test_import_hostile import png_claiming, sixteen_bit_png

CURATOR = Actor("cora", Role.curator)


@dataclass
class World:
    settings: Settings
    engine: object
    tmp: Path
    monkeypatch: object

    def cli(self, *args: str):
        self.monkeypatch.setenv("CAPSTUDIO_DATA_DIR", str(self.settings.data_dir))
        self.monkeypatch.delenv("CAPSTUDIO_DATABASE_URL", raising=False)
        return CliRunner().invoke(cli_app, list(args))

    def class_folder(self, name: str, data: bytes | None = None, *, under_import_root: bool = False) -> Path:
        """A folder import `<root>/cat/<name>` holding one file (`data`; default: a real PNG)."""
        root = (self.settings.import_root if under_import_root else self.tmp) / f"in-{len(list(self.tmp.iterdir()))}"
        (root / "cat").mkdir(parents=True)
        if data is None:
            shutil.copy(BUNDLED / "cat" / "cat_0009.png", root / "cat" / name)
        else:
            (root / "cat" / name).write_bytes(data)
        return root


def fingerprint(w: World) -> tuple:
    """Everything a hostile input must leave alone: the store, exports and the guidelines."""
    return store_fingerprint(w.engine, w.settings.exports_dir), read_guidelines(w.settings)


@pytest.fixture
def world(tmp_path, monkeypatch):
    data = tmp_path / "data"
    ids = fill_store(data, per_class=1)
    settings = Settings(data_dir=data, target_per_class=1, _env_file=None)
    engine = engine_for(data)
    with session_scope(engine) as s:
        image_id = ids["cat"][0]
        decide(s, image_id=image_id, reviewer="ann", action=ReviewAction.approve,
               expected_version=get_item(s, image_id=image_id).version)
    export_snapshot(settings, engine, override_balance=True, exported_by="ann")
    settings.import_root.mkdir(parents=True)
    tmp = tmp_path / "inputs"
    tmp.mkdir()
    yield World(settings, engine, tmp, monkeypatch)
    engine.dispose()


def _truncated_png() -> bytes:
    buf = io.BytesIO()
    PILImage.effect_noise((64, 64), 50).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


# --- the CLI: `python -m pipeline import --source folder` -------------------------------------------
def _cli_import(w: World, path: Path) -> str:
    out = w.cli("import", "--source", "folder", "--path", str(path))
    assert out.exit_code in (0, 2), out.output
    assert "Traceback" not in out.output
    return f"exit {out.exit_code}: {out.output}"


def _import_file(data: bytes, name: str = "x.png"):
    return lambda w: _cli_import(w, w.class_folder(name, data))


def _import_symlink_out(w: World) -> str:
    root = w.class_folder("ok.png")
    secret = w.tmp / "secret.png"
    shutil.copy(BUNDLED / "dog" / "dog_0009.png", secret)
    os.remove(root / "cat" / "ok.png")
    (root / "cat" / "link.png").symlink_to(secret)
    return _cli_import(w, root)


def _import_flat(w: World) -> str:
    flat = w.tmp / "flat"
    flat.mkdir()
    shutil.copy(BUNDLED / "cat" / "cat_0009.png", flat / "a.png")
    return _cli_import(w, flat)


SKIPPED = "added 0, already present 0, unreadable files skipped 1"
CLI_CASES = {
    "bomb-over-pillow-limit": (_import_file(png_claiming(20_000, 20_000), "bomb.png"), SKIPPED),
    "bomb-over-our-limit": (_import_file(png_claiming(6_000, 6_000), "bomb.png"), SKIPPED),
    "truncated-png": (_import_file(_truncated_png()), SKIPPED),
    "text-named-png": (_import_file(b"name,label\ncat,3\n" * 20), SKIPPED),
    "empty-file": (_import_file(b""), SKIPPED),
    "jpeg-garbage": (_import_file(b"\xff\xd8garbage", "x.jpg"), SKIPPED),
    "symlink-out-of-folder": (_import_symlink_out, "skipped unreadable:"),
    "flat-folder": (_import_flat, "Expected the layout <folder>/<class>/<image>"),
    "missing-folder": (lambda w: _cli_import(w, w.tmp / "nowhere"), "does not exist"),
}


# --- the Jobs service: imports only from under the import folder -----------------------------------
def _job_import(path_of):
    def run(w: World) -> str:
        started = start_caption_job(w.settings, w.engine, actor=CURATOR, source="folder", n_per_class=1,
                                    path=path_of(w))
        assert not started.ok and started.job_id is None
        return started.message
    return run


def _symlinked_dir(w: World) -> str:
    (w.settings.import_root / "looks-inside").symlink_to(w.class_folder("ok.png"), target_is_directory=True)
    return "looks-inside"


OUTSIDE = "is not inside the import folder"
SERVICE_CASES = {
    "absolute-path-outside": (_job_import(lambda w: str(w.class_folder("ok.png"))), OUTSIDE),
    "etc": (_job_import(lambda w: "/etc"), OUTSIDE),
    "dotdot-traversal": (_job_import(lambda w: "../../inputs"), OUTSIDE),
    "symlinked-dir-out": (_job_import(_symlinked_dir), OUTSIDE),
    "flat-folder-inside-root": (_job_import(lambda w: (w.settings.import_root / "flat").mkdir() or "flat"),
                                "Expected the layout"),
}


# --- uploads (Playground) ---------------------------------------------------------------------------
def _upload(data: bytes, name: str = HOSTILE_FILE):
    def run(w: World) -> str:
        view = open_playground(w.settings, w.engine, data=data, name=name)
        assert view.input is None
        return view.error
    return run


UPLOAD_CASES = {
    "upload-bomb": (_upload(png_claiming(20_000, 20_000)), "too large to decode safely"),
    "upload-truncated": (_upload(_truncated_png()), "damaged or truncated"),
    "upload-empty": (_upload(b""), "is empty"),
    "upload-not-an-image": (_upload(b"<html><img src=http://evil.example/x></html>"), "not an image"),
}


# --- permissions and the database -------------------------------------------------------------------
def _guidelines_as(role: Role):
    def run(w: World) -> str:
        with pytest.raises(PermissionDenied) as err:
            write_guidelines(w.settings, actor=Actor("mallory", role), text=f"![i](http://{EVIL}/i.png)")
        return str(err.value)
    return run


def _backup_over_existing(w: World) -> str:
    target = w.tmp / "existing.db"
    target.write_bytes(b"keep me")
    out = w.cli("db", "backup", "--to", str(target))
    assert out.exit_code == 2 and target.read_bytes() == b"keep me"
    return out.output


def _backup_postgres(w: World) -> str:
    w.monkeypatch.setenv("CAPSTUDIO_DATA_DIR", str(w.settings.data_dir))
    w.monkeypatch.setenv("CAPSTUDIO_DATABASE_URL", "postgresql+psycopg://u:p@127.0.0.1:1/x")
    out = CliRunner().invoke(cli_app, ["db", "backup"])
    assert out.exit_code == 2
    return out.output


OTHER_CASES = {
    "guidelines-by-viewer": (_guidelines_as(Role.viewer), "edit the guidelines"),
    "guidelines-by-reviewer": (_guidelines_as(Role.reviewer), "edit the guidelines"),
    "backup-over-existing-file": (_backup_over_existing, "already exists"),
    "backup-of-a-server-store": (_backup_postgres, "pg_dump"),
}

CASES = {**CLI_CASES, **SERVICE_CASES, **UPLOAD_CASES, **OTHER_CASES}


@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_input_gets_its_message_and_changes_nothing(world, case):
    action, expected = CASES[case]
    before = fingerprint(world)
    message = action(world)
    assert expected in message, message
    assert fingerprint(world) == before


def test_a_sixteen_bit_png_is_imported_grey_not_white(world):
    out = _cli_import(world, world.class_folder("deep.png", sixteen_bit_png(0x8000)))
    assert "added 1," in out
    with session_scope(world.engine) as s:
        png = s.exec(select(Image).where(Image.source_key.like("%deep.png"))).one().png
    assert decode_png(png).getpixel((0, 0)) == (128, 128, 128)


def test_a_damaged_store_is_refused_by_db_check(world):
    with open(world.settings.data_dir / "studio.db", "r+b") as f:
        f.seek(4096)
        f.write(os.urandom(32 * 1024))
    out = world.cli("db", "check")
    assert out.exit_code == 1 and "The store is damaged" in out.output


# --- the app: names with Markdown/HTML are shown literally ------------------------------------------
def _markdown_of(at) -> list[str]:
    """Every string the page hands to Streamlit's Markdown renderer."""
    out = [e.value for kind in ("markdown", "caption", "success", "error", "info", "warning", "subheader", "title")
           for e in getattr(at, kind)]
    out += [e.proto.text for e in at.get("progress")]
    out += [e.proto.label for e in at.get("expandable")]
    return out


# an unescaped '[' or '<', a bare URL or e-mail address (no invisible word joiner before '://' or '@')
LIVE = re.compile(r"(?<!\\)[\[<]|https?://|\bwww\.|[^\u2060]\\?@")


def _no_live_markup(texts: list[str]) -> None:
    """Every string that carries hostile text (the app's own badges use Markdown directives) is escaped."""
    hostile = [t for t in texts if EVIL in t]
    assert hostile
    for text in hostile:
        assert not LIVE.search(text), text  # escaped text holds "\[", "\<", "http\://"


@pytest.mark.parametrize("page", ["export", "lineage", "jobs", "review"])
def test_hostile_names_reach_the_pages_only_escaped(world, monkeypatch, page):
    settings = world.settings
    folder = settings.import_root / "b" / HOSTILE_LABEL  # a class folder and a file with Markdown names
    folder.mkdir(parents=True)
    shutil.copy(BUNDLED / "cat" / "cat_0005.png", folder / HOSTILE_FILE)
    assert import_images(world.engine, source=ImportSource.folder, n_per_class=1, path=folder.parent).added == 1
    with session_scope(world.engine) as s:
        new = s.exec(select(Image).where(Image.label == HOSTILE_LABEL)).one().id
        add_draft(s, image_id=new, text=HOSTILE[1], model_id="t", prompt="p")
        pending = s.exec(select(Review).where(Review.state == ReviewState.pending, Review.image_id != new)).all()
        for n, r in enumerate(pending):  # a hostile reviewer approves the rest; only the new item is left
            decide(s, image_id=r.image_id, reviewer=HOSTILE_NAME, action=ReviewAction.edit_approve,
                   expected_version=r.version, caption=f"{HOSTILE[0]} {n}")
        job_id = create_job(s, kind=JobKind.caption, params={}).id
        mark_job_running(s, job_id=job_id, pid=os.getpid(), host=HOST)  # alive: this process
        update_progress(s, job_id=job_id, done=1, total=2, message=HOSTILE[4])
    export_snapshot(settings, world.engine, override_balance=True, exported_by=HOSTILE_NAME)
    at = app_for(settings.data_dir, monkeypatch)
    at.run()
    at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, at.exception
    texts = _markdown_of(at)
    _no_live_markup(texts)
    shown = " ".join(texts)
    ann = r"\[ann\](http" + WORD_JOINER + "://evil.example/u)"
    expected = {"export": ann, "lineage": ann, "jobs": r"\<http" + WORD_JOINER + r"://evil.example/auto\>",
                "review": r"Class: \[c\](evil.example)"}[page]
    assert expected in shown, shown
