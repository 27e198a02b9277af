"""The default captioning path (issue 16): one chooser of dtype, batch size and processor overrides
(`job_plan`) for the drafting job and the bench's "default" row, and greedy captions that stay
those of the plain exact path (processor, `generate()`, one image at a time) on the bundled images."""
from __future__ import annotations

import importlib.util

import pytest
from PIL import Image as PILImage

from pipeline import hardware
from pipeline.settings import Settings
from pipeline.teacher.drafting import job_plan
from pipeline.teacher.model import (
    DEFAULT_PROMPT,
    TEACHER_GENERATION,
    CaptionPlan,
    caption_images,
    load_teacher,
)
from pipeline.tiny import build_tiny_teacher
from tests.conftest import BUNDLED, REPO

ASSETS = REPO / "tests" / "assets" / "smolvlm_processor"
NO_BF16 = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx avx2 fma\n"
WITH_BF16 = "processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: avx2 avx512f avx512bw avx512vl avx512_bf16\n"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_teacher", REPO / "bench" / "teacher.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cpu(monkeypatch, text: str) -> None:
    monkeypatch.setattr(hardware, "cpu", lambda: hardware.parse_cpuinfo(text))


@pytest.mark.parametrize(("cpuinfo", "dtype"), [(NO_BF16, "float32"), (WITH_BF16, "bfloat16")])
def test_the_bench_default_row_runs_the_jobs_own_choices(monkeypatch, cpuinfo, dtype):
    _cpu(monkeypatch, cpuinfo)
    bench = _bench()
    assert bench.default_plan() == job_plan(Settings(), device="cpu") == CaptionPlan("cpu", dtype, 16)
    monkeypatch.setenv("CAPSTUDIO_BATCH_SIZE", "3")  # the job's setting moves the bench's row with it
    assert bench.default_plan() == job_plan(Settings(), device="cpu") == CaptionPlan("cpu", dtype, 3)
    assert bench.naive_plan() == CaptionPlan("cpu", "float32", 1)


def test_the_bench_prints_its_target_beside_the_figure(monkeypatch):
    bench = _bench()
    _cpu(monkeypatch, WITH_BF16)
    assert bench.ratio_line(51.04) == "ratio: 51.0 (target ≥ 50 on CPUs with native bf16; this CPU: AVX512-BF16)"
    _cpu(monkeypatch, NO_BF16)
    assert bench.ratio_line(25.0).startswith("ratio: 25.0 (target ≥ 50 on CPUs with native bf16; this CPU: AVX2, ")


def test_job_options_override_the_plan():
    plan = job_plan(Settings(), device="cpu", dtype="float32", batch_size=5)
    assert plan == CaptionPlan("cpu", "float32", 5)
    with pytest.raises(ValueError):
        job_plan(Settings(), device="cpu", dtype="fp8")


def _exact_captions(folder, dtype: str, images: list[PILImage.Image]) -> list[str]:
    """The reference, loaded and run apart from pipeline/teacher/model.py: the processor and
    `generate()` as documented (sdpa, one 512-px tile, greedy), one image at a time."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=getattr(torch, dtype),
                                                        attn_implementation="sdpa").eval()
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": DEFAULT_PROMPT}]}],
        add_generation_prompt=True)
    texts = []
    for image in images:
        inputs = processor(text=[prompt], images=[[image]], return_tensors="pt",
                           do_image_splitting=False, size={"longest_edge": 512})
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=TEACHER_GENERATION.max_new_tokens, do_sample=False,
                                 repetition_penalty=TEACHER_GENERATION.repetition_penalty,
                                 pad_token_id=processor.tokenizer.pad_token_id)
        texts.append(processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return texts


def test_the_default_path_writes_the_exact_paths_greedy_captions(tmp_path):
    import torch

    folder = build_tiny_teacher(tmp_path / "teacher", processor_dir=ASSETS)
    plan = job_plan(Settings(), device="cpu")
    labels = sorted(p.name for p in BUNDLED.iterdir() if p.is_dir())
    images = [PILImage.open(BUNDLED / lab / f"{lab}_0000.png").convert("RGB") for lab in labels]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        teacher = load_teacher(str(folder), device=plan.device, dtype=plan.dtype)
        default = caption_images(teacher, images, batch_size=plan.batch_size)
        exact = _exact_captions(folder, plan.dtype, images)
    finally:
        torch.set_num_threads(before)
    assert len(default) == len(images) == 10 and len(set(default)) > 1
    assert default == exact
