"""One GenerationConfig for teacher, student, playground and compare: validated once, and the
teacher's drafts keep the provenance keys and values stores already hold."""
from __future__ import annotations

from dataclasses import replace

import pytest

from pipeline.generation import GenerationConfig
from pipeline.teacher.model import TEACHER_GENERATION, Teacher, provenance

OLD_DRAFT_KEYS = {"max_new_tokens", "do_sample", "temperature", "top_p", "repetition_penalty", "seed", "dtype",
                  "device", "attn_implementation", "batch_size"}


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(max_new_tokens=1025), dict(temperature=0),
                                 dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1), dict(repetition_penalty=0)])
def test_out_of_range_settings_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        GenerationConfig(**bad)


def test_teacher_drafts_store_the_same_generation_params_as_before():
    teacher = Teacher(model=None, processor=None, model_id="m", revision="r", device="cpu", dtype="float32")
    prov = provenance(teacher, prompt="p", params=TEACHER_GENERATION, processor_params={}, batch_size=8)
    assert prov["generation_params"] == {
        "max_new_tokens": 60, "do_sample": False, "temperature": 1.0, "top_p": 1.0, "repetition_penalty": 1.1,
        "seed": 0, "dtype": "float32", "device": "cpu", "attn_implementation": "sdpa", "batch_size": 8}
    sampled = provenance(teacher, prompt="p", params=replace(TEACHER_GENERATION, do_sample=True, top_k=20),
                         processor_params={}, batch_size=8)["generation_params"]
    assert set(sampled) == OLD_DRAFT_KEYS | {"top_k"} and sampled["top_k"] == 20  # recorded only when used


def test_generate_kwargs_pass_sampling_knobs_only_when_sampling():
    greedy = GenerationConfig(temperature=0.5, top_p=0.9, top_k=5)
    assert greedy.generate_kwargs() == {"max_new_tokens": 40, "do_sample": False, "repetition_penalty": 1.0}
    assert replace(greedy, do_sample=True).generate_kwargs() == {
        "max_new_tokens": 40, "do_sample": True, "repetition_penalty": 1.0, "temperature": 0.5, "top_p": 0.9,
        "top_k": 5}
