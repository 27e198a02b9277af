"""The prompt's bf16 matmuls widened to float32 on CPUs without native bf16 (fp32_prefill.py)."""
from __future__ import annotations

import threading

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.hardware import limit_cpu, parse_cpuinfo
from pipeline.student import fp32_prefill
from pipeline.student.inference_path import InferencePath, PathChoice, choose_prefill
from tests.test_hardware import SKYLAKE, ZEN3, ZEN4


@pytest.fixture()
def linear() -> nn.Linear:
    torch.manual_seed(0)
    layer = nn.Linear(96, 80, bias=True).to(torch.bfloat16).requires_grad_(False)
    assert fp32_prefill.install(layer) == 1
    assert fp32_prefill.install(layer) == 0  # once only
    return layer


def widened(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x.float(), layer.weight.float(), layer.bias.float()).to(torch.bfloat16)


def test_a_long_prompt_is_multiplied_in_float32_and_a_short_one_in_bf16(linear):
    rows = torch.randn(fp32_prefill.MIN_ROWS + 8, 96).to(torch.bfloat16)
    few = rows[:4]
    assert torch.equal(linear(rows), F.linear(rows, linear.weight, linear.bias))  # idle outside `active`
    with fp32_prefill.active():
        assert torch.equal(linear(rows), widened(linear, rows))
        assert torch.equal(linear(few), F.linear(few, linear.weight, linear.bias))
        assert fp32_prefill._local.scratch.numel() >= linear.weight.numel()
    assert fp32_prefill._local.scratch is None  # dropped on leaving


def test_widening_is_per_thread(linear):
    rows = torch.randn(64, 96).to(torch.bfloat16)
    inside, release, seen = threading.Event(), threading.Event(), {}

    def widening_thread():
        with fp32_prefill.active():
            inside.set()
            release.wait(10)
            seen["a"] = linear(rows)

    t = threading.Thread(target=widening_thread)
    t.start()
    assert inside.wait(10)
    seen["b"] = linear(rows)  # this thread never entered `active`
    release.set()
    t.join(10)
    assert torch.equal(seen["a"], widened(linear, rows))
    assert torch.equal(seen["b"], F.linear(rows, linear.weight, linear.bias))


def test_only_the_bf16_path_without_native_bf16_widens_and_only_where_measured_faster():
    zen3, zen4, skylake = parse_cpuinfo(ZEN3), parse_cpuinfo(ZEN4), parse_cpuinfo(SKYLAKE)
    bf16 = PathChoice(InferencePath.bf16, "dense")
    faster, slower = {"bf16": 0.09, "fp32": 0.04}, {"bf16": 0.03, "fp32": 0.05}
    for caps in (zen3, skylake, limit_cpu(zen4, "AVX2")):
        chosen = choose_prefill(bf16, caps, seconds=faster)
        assert chosen.prefill_fp32 and chosen.path == InferencePath.bf16
        assert "prompt computed in float32" in chosen.reason and "bf16 90 ms" in chosen.reason
        kept = choose_prefill(bf16, caps, seconds=slower)
        assert not kept.prefill_fp32 and "prompt in bf16" in kept.reason
    assert not choose_prefill(bf16, zen4, seconds=faster).prefill_fp32  # native bf16
    assert not choose_prefill(bf16, zen3, device="cuda", seconds=faster).prefill_fp32
    for other in (InferencePath.nf4, InferencePath.fp32):
        assert not choose_prefill(PathChoice(other, "x"), zen3, seconds=faster).prefill_fp32
    assert choose_prefill(bf16, zen3, seconds=None) == bf16


def test_probe_times_both_products():
    seconds = fp32_prefill.probe(rows=8, n=64, k=128, reps=1)
    assert set(seconds) == {"bf16", "fp32"} and all(0 < s < 5 for s in seconds.values())
