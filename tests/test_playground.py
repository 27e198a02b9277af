"""Playground services with a tiny real teacher and a tiny trained student: the input as each
model sees it, the store lookup by pixels, streamed captions equal to the batch ones, timings,
models listed with their snapshot, and clear messages for models that cannot be loaded."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from db.engine import session_scope
from db.lineage import list_students
from db.models import ReviewState
from pipeline.services.playground import (
    ModelKind,
    ModelUnavailable,
    list_models,
    load_playground_student,
    load_playground_teacher,
    open_playground,
)
from pipeline.services.streaming import GenerationConfig, stream_student, stream_teacher, teacher_tile
from pipeline.settings import Settings
from pipeline.student.generate import generate_captions
from pipeline.teacher.model import caption_one
from tests.app_store import BUNDLED, engine_for
from tests.playground_models import (
    approved_caption,
    playground_models,
)

GREEDY = GenerationConfig(max_new_tokens=8, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("pg")
    m = playground_models(root)
    data, ids, snapshot_id, teacher_dir, student_dir = m.data, m.ids, m.snapshot_id, m.teacher, m.student
    engine = engine_for(data)
    settings = Settings(data_dir=data, teacher_model=str(teacher_dir), _env_file=None)
    yield {"settings": settings, "engine": engine, "ids": ids, "snapshot_id": snapshot_id,
           "teacher": load_playground_teacher(str(teacher_dir)), "student": load_playground_student(str(student_dir)),
           "student_dir": student_dir}
    engine.dispose()


def test_a_bundled_example_is_found_in_the_store_with_its_approved_caption(world):
    view = open_playground(world["settings"], world["engine"], example="cat/cat_0001.png")
    inp = view.input
    assert inp.match.image_id == world["ids"]["cat"][1]
    assert inp.match.state == ReviewState.approved
    assert inp.match.approved_caption == approved_caption("cat", 1)
    assert Image.open(io.BytesIO(inp.model_png)).size == (32, 32)
    assert len(view.examples) == 20
    assert {e.label for e in view.examples} == {p.name for p in BUNDLED.iterdir() if p.is_dir()}


def test_an_upload_of_the_same_pixels_in_another_format_is_found_too(world):
    buf = io.BytesIO()
    Image.open(BUNDLED / "dog" / "dog_0000.png").convert("RGBA").save(buf, format="WEBP", lossless=True)
    view = open_playground(world["settings"], world["engine"], data=buf.getvalue(), name="dog.webp")
    assert view.input.match.image_id == world["ids"]["dog"][0]


def test_an_image_not_in_the_store_has_no_match(world):
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 200, 10)).save(buf, format="JPEG")
    view = open_playground(world["settings"], world["engine"], data=buf.getvalue(), name="green.jpg")
    assert view.input.match is None and view.input.size == (300, 200)
    assert Image.open(io.BytesIO(view.input.model_png)).size == (32, 32)


def test_a_bad_upload_becomes_a_message_not_an_exception(world):
    view = open_playground(world["settings"], world["engine"], data=b"\x89PNG\r\n\x1a\n broken", name="x.png")
    assert view.input is None and "x.png" in view.error


def test_the_teacher_stream_equals_its_batch_caption_and_is_timed(world):
    teacher = world["teacher"]
    image = Image.open(BUNDLED / "ship" / "ship_0000.png").convert("RGB")
    stream = stream_teacher(teacher, image, GREEDY)
    text = stream.run()
    assert text == caption_one(teacher, image, params=GREEDY).text
    t = stream.timings
    assert t.new_tokens > 0 and t.total_s > 0 and t.tokens_per_s > 0
    assert t.ttft_s is None or 0 < t.ttft_s <= t.total_s


def test_the_student_stream_equals_its_batch_caption(world):
    student = world["student"]
    image = Image.open(BUNDLED / "cat" / "cat_0000.png").convert("RGB")
    stream = stream_student(student, image, GREEDY)
    assert stream.run() == generate_captions(student, [image], config=GREEDY)[0]
    assert stream.timings.total_s > 0


def test_the_teacher_tile_is_the_512px_picture_it_is_given(world):
    image = Image.open(BUNDLED / "ship" / "ship_0000.png").convert("RGB")
    tile = teacher_tile(world["teacher"], image)
    assert tile.size == (512, 512)
    small = tile.resize((32, 32), Image.Resampling.BOX)
    diff = sum(abs(a - b) for p, q in zip(small.getdata(), image.getdata()) for a, b in zip(p, q))
    assert diff / (32 * 32 * 3) < 12  # the same picture, upscaled


def test_models_list_the_teacher_and_the_student_with_its_snapshot(world):
    models = list_models(world["settings"], world["engine"])
    assert models[0].kind == ModelKind.teacher
    [student] = [m for m in models if m.kind == ModelKind.student]
    assert student.snapshot_id == world["snapshot_id"]
    assert world["snapshot_id"] in student.label
    assert "final_train_loss" in student.metrics
    with session_scope(world["engine"]) as s:  # registered for lineage
        assert [r.snapshot_id for r in list_students(s)] == [world["snapshot_id"]]


def test_models_that_cannot_load_give_the_next_step(tmp_path):
    with pytest.raises(ModelUnavailable, match="build-tiny"):
        load_playground_teacher(str(tmp_path / "no-such-teacher"))
    with pytest.raises(ModelUnavailable, match="Train page"):
        load_playground_student(str(tmp_path / "no-such-student"))
