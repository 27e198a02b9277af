"""The playground page (AppTest) with a tiny teacher and a tiny trained student: a bundled
example and an uploaded file each get both captions, the approved one and timings; bad uploads
and missing models give a message and the page keeps working."""
from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from tests.app_store import BUNDLED, app_for
from tests.playground_models import (
    approved_caption,
    playground_models,
)

PAGE = "app_pages/playground.py"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("pgapp")
    m = playground_models(root)
    return {"data": m.data, "teacher": m.teacher, "ids": m.ids, "snapshot_id": m.snapshot_id, "root": root}


def _open(world, monkeypatch, *, teacher=None, data=None):
    monkeypatch.setenv("CAPSTUDIO_TEACHER_MODEL", str(teacher or world["teacher"]))
    at = app_for(data or world["data"], monkeypatch)
    at.run()
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    return at


def _set_small_generation(at):
    at.number_input(key="pg_max_new").set_value(6)
    at.number_input(key="pg_rep").set_value(1.0)


def _run(at):
    _set_small_generation(at)
    at.button(key="pg_run").click().run(timeout=120)
    assert not at.exception, at.exception
    return at.session_state["pg_result"]


def _timings(at) -> list[str]:
    return [c.value for c in at.caption if "tokens/s" in c.value]


def test_a_bundled_example_shows_teacher_student_and_approved_captions(world, monkeypatch):
    at = _open(world, monkeypatch)
    at.button(key="ex-cat/cat_0001.png").click().run()
    assert any("In the store as item" in i.value for i in at.info)
    result = _run(at)
    texts = [t.value for t in at.text]
    assert approved_caption("cat", 1) in texts
    assert result["teacher"]["text"] in texts and result["student"]["text"] in texts
    assert len(_timings(at)) == 2  # one line of timings under each model
    assert result["teacher"]["tile"].size == (512, 512)
    assert at.code, "a word diff is shown"


def test_student_choice_lists_its_snapshot(world, monkeypatch):
    at = _open(world, monkeypatch)
    [option] = at.selectbox(key="pg_student").options
    assert world["snapshot_id"] in option


def test_an_uploaded_file_runs_both_models(world, monkeypatch):
    at = _open(world, monkeypatch)
    at.radio(key="pg_source").set_value("Upload").run()
    buf = io.BytesIO()
    Image.open(BUNDLED / "ship" / "ship_0003.png").convert("RGB").resize((96, 96)).save(buf, format="JPEG")
    at.file_uploader(key="pg_upload").set_value(("ship.jpg", buf.getvalue(), "image/jpeg")).run()
    assert not at.error
    assert any("not in the store" in c.value for c in at.caption)
    result = _run(at)
    assert result["teacher"]["text"] is not None and result["student"]["text"] is not None
    assert len(_timings(at)) == 2


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", 30_000, 30_000) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def _half_png() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()[:300]


@pytest.mark.parametrize("name,data,message", [
    ("empty.png", b"", "empty"),
    ("notes.txt", b"these are not pixels\n" * 10, "not an image"),
    ("half.png", _half_png(), "truncated"),
    ("bomb.png", _bomb(), "too large to decode safely"),
], ids=["zero-bytes", "not-an-image", "truncated", "decompression-bomb"])
def test_a_bad_upload_shows_a_message_and_the_page_keeps_working(world, monkeypatch, name, data, message):
    at = _open(world, monkeypatch)
    at.radio(key="pg_source").set_value("Upload").run()
    at.file_uploader(key="pg_upload").set_value((name, data, "application/octet-stream")).run()
    assert not at.exception
    assert message in at.error[0].value and name in at.error[0].value
    good = (BUNDLED / "dog" / "dog_0001.png").read_bytes()
    at.file_uploader(key="pg_upload").set_value(("dog.png", good, "image/png")).run()
    assert not at.error and any("In the store as item" in i.value for i in at.info)


def test_without_a_student_or_a_teacher_the_page_says_what_to_do(world, monkeypatch, tmp_path):
    empty = tmp_path / "empty-data"
    empty.mkdir()
    at = _open(world, monkeypatch, teacher=tmp_path / "missing-teacher", data=empty)
    assert any("No student has been trained yet" in i.value for i in at.info)
    result = _run(at)
    assert "error" in result["teacher"] and result["student"] is None
    assert "build-tiny" in at.error[0].value  # the next step, not a traceback


@pytest.mark.parametrize("cpu_path", [None, "AVX2"])
def test_the_student_says_which_inference_path_runs_and_why(world, monkeypatch, cpu_path):
    """Under the student's timings: the path its base runs on and why (inference_path.py); with
    CAPSTUDIO_CPU_PATH=AVX2 this machine takes the path an AVX2-only CPU would."""
    from pipeline.hardware import cpu, limit_cpu
    from pipeline.markup import md_escape

    if cpu_path:
        monkeypatch.setenv("CAPSTUDIO_CPU_PATH", cpu_path)
    at = _open(world, monkeypatch)
    result = _run(at)
    assert md_escape(result["student"]["path"]) in [c.value for c in at.caption]
    caps = limit_cpu(cpu(), cpu_path)
    if caps.has_bf16:
        assert result["student"]["path"].startswith("nf4 · ") and "native NF4 kernels" in result["student"]["path"]
    else:
        assert result["student"]["path"].split(" · ")[0] in ("bf16", "fp32")
        assert "AVX2 without AVX512-BF16: NF4 kernels would run at ~0.2 GB/s" in result["student"]["path"]
