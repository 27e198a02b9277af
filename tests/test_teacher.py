"""The teacher through the real SmolVLM-256M processor files, and resumable drafting into the store."""
from __future__ import annotations

import time
from dataclasses import replace

import pytest
from PIL import Image as PILImage
from sqlmodel import select

from db.catalog import add_draft, drafts_for_image, images_without_draft
from db.engine import session_scope
from db.models import Draft, Review
from pipeline.data.sources import ImportSource, import_images
from pipeline.teacher.drafting import CaptionRequest, run_captioning, write_drafts
from pipeline.teacher.model import (
    DEFAULT_PROMPT,
    TEACHER_GENERATION,
    ModelLoadError,
    caption_images,
    chat_prompt,
    load_teacher,
    processor_params_for,
)
from pipeline.tiny import build_tiny_teacher
from tests.conftest import BUNDLED, REPO

ASSETS = REPO / "tests" / "assets" / "smolvlm_processor"
FAST = replace(TEACHER_GENERATION, max_new_tokens=5)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_teacher(tmp_path_factory.mktemp("tiny") / "teacher", processor_dir=ASSETS)


@pytest.fixture(scope="module")
def teacher(tiny_dir):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model is faster on one thread (no hand-offs)
    yield load_teacher(str(tiny_dir), dtype="float32")
    torch.set_num_threads(before)


def _images(n: int) -> list[PILImage.Image]:
    labels = ["cat", "ship", "frog", "truck", "bird"]
    return [PILImage.open(BUNDLED / labels[i % 5] / f"{labels[i % 5]}_000{i // 5}.png").convert("RGB")
            for i in range(n)]


def test_real_processor_gives_one_tile_of_64_tokens_for_a_32px_image():
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(ASSETS)
    image = _images(1)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": DEFAULT_PROMPT}]}],
        add_generation_prompt=True)
    fast = processor(text=[text], images=[image], return_tensors="pt", **processor_params_for(image))
    slow = processor(text=[text], images=[image], return_tensors="pt")  # the processor's defaults
    assert int((fast["input_ids"] == 49190).sum()) == 64
    assert tuple(fast["pixel_values"].shape) == (1, 1, 3, 512, 512)
    assert int((slow["input_ids"] == 49190).sum()) == 17 * 64  # 16 tiles + a global view


def test_large_images_keep_the_processor_defaults():
    assert processor_params_for([PILImage.new("RGB", (1024, 768))]) == {}


def test_tiny_teacher_loads_through_the_real_processor(teacher):
    assert teacher.tiny and teacher.revision.startswith("tiny-random-sha256:")
    inputs = teacher.processor(text=[chat_prompt(teacher, DEFAULT_PROMPT)] * 2, images=[[i] for i in _images(2)],
                               return_tensors="pt", padding=True, **processor_params_for(_images(2)))
    assert (inputs["input_ids"] == teacher.model.config.image_token_id).sum(dim=1).tolist() == [64, 64]
    assert teacher.processor.tokenizer.padding_side == "left"


def test_batching_does_not_change_the_captions(teacher):
    images = _images(5)
    batched = caption_images(teacher, images, params=FAST, batch_size=4)
    single = caption_images(teacher, images, params=FAST, batch_size=1)
    assert len(batched) == 5 and batched == single


def test_a_missing_model_names_the_setting_and_the_tiny_command(tmp_path):
    with pytest.raises(ModelLoadError) as info:
        load_teacher(str(tmp_path / "no-such-model"))
    msg = str(info.value)
    assert "CAPSTUDIO_TEACHER_MODEL" in msg and "--teacher-model" in msg and "build-tiny" in msg


def test_an_unreachable_hub_model_fails_at_once_with_a_hint(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as on a machine with no network
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError, match="CAPSTUDIO_TEACHER_MODEL"):
        load_teacher("capstudio-tests/no-such-smolvlm")
    assert time.monotonic() - t0 < 30  # no minutes of download retries


def test_drafts_carry_provenance_and_a_rerun_writes_nothing(store, teacher):
    import_images(store, source=ImportSource.bundled, n_per_class=1)
    first = run_captioning(store, teacher, CaptionRequest(params=FAST, batch_size=4, limit=6))
    assert (first.written, first.total) == (6, 6)
    rest = run_captioning(store, teacher, CaptionRequest(params=FAST, batch_size=4))
    assert (rest.written, rest.total) == (4, 4)
    assert run_captioning(store, teacher, CaptionRequest(params=FAST)).written == 0
    with session_scope(store) as s:
        drafts = s.exec(select(Draft)).all()
        reviews = s.exec(select(Review)).all()
    assert len(drafts) == 10 and len({d.image_id for d in drafts}) == 10
    d = drafts[0]
    assert d.model_id == teacher.model_id and d.model_revision == teacher.revision
    assert d.prompt == DEFAULT_PROMPT
    assert d.generation_params["max_new_tokens"] == 5 and d.generation_params["tiny_random_model"]
    assert d.generation_params["dtype"] == "float32"
    assert d.processor_params == {"do_image_splitting": False, "size": {"longest_edge": 512}}
    assert all(r.draft_id is not None for r in reviews)  # every item shows its draft to reviewers


def test_a_new_prompt_redrafts_the_chosen_images_only(store, teacher):
    import_images(store, source=ImportSource.bundled, n_per_class=1)
    run_captioning(store, teacher, CaptionRequest(params=FAST))
    request = CaptionRequest(prompt="Describe the main object.", params=FAST, image_ids=(1, 2),
                             per_prompt=True)
    assert run_captioning(store, teacher, request).written == 2
    assert run_captioning(store, teacher, request).written == 0
    with session_scope(store) as s:
        assert [d.prompt for d in drafts_for_image(s, image_id=1)][-1] == "Describe the main object."
        assert len(drafts_for_image(s, image_id=3)) == 1
        assert s.get(Review, 1).draft_id == drafts_for_image(s, image_id=1)[-1].id


def test_write_drafts_skips_images_another_run_already_drafted(store, teacher):
    import_images(store, source=ImportSource.bundled, n_per_class=1)
    with session_scope(store) as s:
        add_draft(s, image_id=1, text="a cat", model_id="other", prompt="p")
    prov = {"model_id": "m", "model_revision": None, "prompt": "p",
            "generation_params": {}, "processor_params": {}}
    with session_scope(store) as s:
        assert write_drafts(s, texts={1: "x", 2: "a small red truck on a road"}, provenance=prov) == 1
    with session_scope(store) as s:
        assert len(drafts_for_image(s, image_id=1)) == 1
        assert images_without_draft(s, image_ids=[1, 2]) == []
        drafted = drafts_for_image(s, image_id=2)[0]  # an automobile image, captioned "truck"
        assert drafted.flags == ["no_class_mention", "other_class"]
        assert s.get(Review, 2).flag_count == 2
