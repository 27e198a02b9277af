"""Tiny random models: real architectures, real token ids, marked as test models everywhere."""
from __future__ import annotations

import json
from dataclasses import replace

from PIL import Image as PILImage

from pipeline.teacher.model import TEACHER_GENERATION, caption_one, load_teacher
from pipeline.tiny import (
    build_tiny_student,
    build_tiny_teacher,
    find_smolvlm_processor_dir,
    is_tiny_model,
)
from tests.conftest import BUNDLED, REPO

ASSETS = REPO / "tests" / "assets" / "smolvlm_processor"


def test_tiny_teacher_matches_the_real_smolvlm_ids(tmp_path):
    out = build_tiny_teacher(tmp_path / "teacher", processor_dir=ASSETS)
    cfg = json.loads((out / "config.json").read_text())
    real = json.loads((ASSETS / "config.json").read_text())
    assert cfg["architectures"] == ["Idefics3ForConditionalGeneration"]
    assert cfg["image_token_id"] == real["image_token_id"] == 49190
    assert cfg["text_config"]["vocab_size"] == real["vocab_size"] == 49280
    assert (out / "tokenizer.json").read_bytes() == (ASSETS / "tokenizer.json").read_bytes()
    assert is_tiny_model(out) and "tiny random test model" in (out / "README.md").read_text()
    assert sum(f.stat().st_size for f in out.iterdir()) < 40e6  # small enough for any test


def test_tiny_teacher_with_its_own_tokenizer_captions_offline(tmp_path):
    out = build_tiny_teacher(tmp_path / "teacher", processor_dir=None)
    teacher = load_teacher(str(out), dtype="float32")
    image = PILImage.open(BUNDLED / "ship" / "ship_0000.png")
    result = caption_one(teacher, image, params=replace(TEACHER_GENERATION, max_new_tokens=6))
    assert teacher.tiny and result.image_tokens == 64
    assert isinstance(result.text, str) and result.new_tokens <= 6 and result.seconds > 0


def test_tiny_student_is_a_phi3_with_the_phi3_tokenizer(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = build_tiny_student(tmp_path / "student")
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "Phi3ForCausalLM" and model.config.vocab_size == 32064
    assert tok.convert_tokens_to_ids("<|end|>") == 32007
    assert is_tiny_model(out) and "tiny random test model" in (out / "README.md").read_text()


def test_real_model_folders_are_not_called_tiny(tmp_path):
    assert find_smolvlm_processor_dir() is not None
    assert not is_tiny_model(ASSETS)
    assert not is_tiny_model("HuggingFaceTB/SmolVLM-256M-Instruct")
    assert not is_tiny_model(tmp_path / "missing")
