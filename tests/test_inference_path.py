"""The student's inference path, chosen at load time from the CPU, free memory and the model's
size (pipeline/student/inference_path.py): NF4 where AVX512-BF16 runs its kernels, else the
fastest dense path that fits, else NF4 with the reason."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.hardware import parse_cpuinfo
from pipeline.student.inference_path import GB, HEADROOM, InferencePath, ModelSizes, choose_path
from tests.test_hardware import SKYLAKE, ZEN3, ZEN4

NF4, BF16, FP32 = InferencePath.nf4, InferencePath.bf16, InferencePath.fp32


@pytest.fixture(scope="module")
def phi3_mini() -> ModelSizes:
    from transformers import Phi3Config

    return ModelSizes.of_config(Phi3Config())


def test_phi3_mini_sizes_per_format(phi3_mini):
    """3.82 B parameters: 7.6 GB in bf16 (the issue's figure), twice that in fp32, ~2.3 GB in NF4."""
    assert phi3_mini.linear_params + phi3_mini.other_params == pytest.approx(3.821e9, rel=1e-3)
    assert phi3_mini.bytes(BF16) / GB == pytest.approx(7.64, abs=0.01)
    assert phi3_mini.bytes(FP32) == 2 * phi3_mini.bytes(BF16)
    assert 2.2 < phi3_mini.bytes(NF4) / GB < 2.4


def test_avx512_bf16_and_gpus_run_nf4(phi3_mini):
    for caps in (parse_cpuinfo(ZEN4), parse_cpuinfo(SKYLAKE.replace("avx512vl", "avx512vl avx512_bf16 amx_bf16"))):
        choice = choose_path(caps, sizes=phi3_mini, free=64 * GB)
        assert choice.path == NF4 and "native NF4 kernels" in choice.reason
    assert choose_path(parse_cpuinfo(ZEN3), sizes=phi3_mini, free=64 * GB, device="cuda").path == NF4


def test_avx2_runs_the_dequantised_base_that_reads_a_token_soonest(phi3_mini):
    zen3 = parse_cpuinfo(ZEN3)
    plain = choose_path(zen3, sizes=phi3_mini, free=20 * GB)
    assert plain.path == BF16  # no measurement: half the bytes
    assert plain.reason.startswith("AVX2 without AVX512-BF16: NF4 kernels would run at ~0.2 GB/s (11 s per token)")
    assert "dequantised to bf16 with LoRA merged (7.6 GB, 20.0 GB free" in plain.reason
    # the AVX2 box: bf16 9 GB/s, fp32 11 GB/s -> bf16 (0.85 s/token against 1.4)
    assert choose_path(zen3, sizes=phi3_mini, free=20 * GB, speeds={BF16: 9.0, FP32: 11.0}).path == BF16
    # bf16 compute-bound (no native bf16 at all): fp32 reads twice the bytes and is still sooner
    slow_bf16 = choose_path(zen3, sizes=phi3_mini, free=20 * GB, speeds={BF16: 3.0, FP32: 11.0})
    assert slow_bf16.path == FP32 and "measured bf16 3.0 GB/s, fp32 11.0 GB/s" in slow_bf16.reason
    # ...unless fp32 does not fit
    assert choose_path(zen3, sizes=phi3_mini, free=12 * GB, speeds={BF16: 3.0, FP32: 11.0}).path == BF16
    assert choose_path(parse_cpuinfo(SKYLAKE), sizes=phi3_mini, free=20 * GB).path == BF16  # AVX-512, no bf16


def test_without_memory_for_a_dense_base_avx2_falls_back_to_nf4_and_says_so(phi3_mini):
    choice = choose_path(parse_cpuinfo(ZEN3), sizes=phi3_mini, free=8 * GB, speeds={BF16: 9.0, FP32: 11.0})
    assert choice.path == NF4
    assert "the bf16 base needs 8.6 GB and only 8.0 GB is free: NF4 it is (slow on this CPU)" in choice.reason
    need = phi3_mini.bytes(BF16) + HEADROOM
    assert choose_path(parse_cpuinfo(ZEN3), sizes=phi3_mini, free=need - 1).path == NF4
    assert choose_path(parse_cpuinfo(ZEN3), sizes=phi3_mini, free=need).path == BF16


def test_a_forced_or_unknown_path(memorised_student):
    from pipeline.student.config import StudentConfig
    from pipeline.student.loader import pick_path

    base = StudentConfig.from_json(memorised_student / "student.json").base_model
    assert pick_path(base, path="fp32").path == FP32
    auto = pick_path(base, cpu_path="AVX2")  # this machine, as an AVX2 laptop: a measured dense path
    assert auto.path in (BF16, FP32) and "measured bf16" in auto.reason
    with pytest.raises(ValueError, match="unknown inference path"):
        pick_path(base, path="int4")


def test_the_dense_base_frees_each_4bit_layer_as_it_goes(memorised_student, monkeypatch):
    """Layer by layer: when the i-th projection is dequantised, the i-1 before it are gone (their
    4-bit copies freed), so peak memory is about the dense model, not dense + NF4 (or + a whole
    dequantised copy, as `dequantize()` then `merge_and_unload()` held)."""
    import weakref

    import peft.utils.integrations as integrations
    import torch
    from peft import PeftModel

    from pipeline.student.config import StudentConfig
    from pipeline.student.loader import _quantised, dequantise_merged, load_base

    cfg = StudentConfig.from_json(memorised_student / "student.json")
    lm = PeftModel.from_pretrained(load_base(cfg.base_model, quantize_4bit=True, dtype=torch.bfloat16),
                                   memorised_student / "adapter")
    alive = [weakref.ref(layer) for m in lm.modules() if (layer := _quantised(m)) is not None and layer is m]
    assert len(alive) == 4 * lm.config.num_hidden_layers
    seen, real = [], integrations.dequantize_bnb_weight

    def counting(weight, state=None):
        seen.append(sum(r() is not None for r in alive))
        return real(weight, state=state)

    monkeypatch.setattr(integrations, "dequantize_bnb_weight", counting)
    dense = dequantise_merged(lm, torch.float32)
    assert seen == list(range(len(alive), 0, -1))
    assert all(r() is None for r in alive) and next(dense.parameters()).dtype == torch.float32


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="no /proc/self/maps to read the memory maps from")
def test_a_loaded_4bit_base_keeps_no_map_of_its_bf16_checkpoint(tiny_phi3):
    """The embeddings, LM head and norms are copied out of the checkpoint's memory map, so it
    closes: its pages (7.6 GB for Phi-3-mini, all read while quantising) leave this process's RSS."""
    import torch

    from pipeline.student.loader import load_base

    model = load_base(str(tiny_phi3), quantize_4bit=True, dtype=torch.bfloat16)
    mapped = [line for line in open("/proc/self/maps") if str(tiny_phi3) in line and "safetensors" in line]
    assert mapped == [] and model.get_input_embeddings().weight.dtype == torch.bfloat16
