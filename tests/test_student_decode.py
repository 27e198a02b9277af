"""The lean decoding loop (pipeline/student/decode.py) and the native NF4 kernel compute what
Hugging Face generate() and bitsandbytes compute: bit for bit where the arithmetic is the same.
The CPU attention (attention.py and its native one-token kernel) matches float32 math."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.student.config import GenerationConfig
from pipeline.student.generate import generate_ids, hf_generate
from pipeline.student.kernels import unavailable_reason
from pipeline.student.loader import load_student
from tests.conftest_student import cifar20_records

REPO = Path(__file__).resolve().parent.parent
SETTINGS = [
    GenerationConfig(max_new_tokens=20),
    GenerationConfig(max_new_tokens=20, repetition_penalty=1.3),
    GenerationConfig(max_new_tokens=20, do_sample=True, temperature=0.9, top_k=40, top_p=0.9,
                     repetition_penalty=1.1, seed=3),
]


def _packed(n: int, k: int, seed: int):
    import bitsandbytes.functional as bf

    torch.manual_seed(seed)
    q, qs = bf.quantize_4bit(torch.randn(n, k, dtype=torch.bfloat16), quant_type="nf4",
                             compress_statistics=True)
    return bf._convert_weight_packed_for_cpu(q, qs)


NATIVE_UNAVAILABLE = unavailable_reason()
needs_native_kernels = pytest.mark.skipif(  # another CPU, or not built: decoding falls back (tested below)
    NATIVE_UNAVAILABLE is not None, reason=f"native kernels not available: {NATIVE_UNAVAILABLE}")


def _native():
    from pipeline.student.kernels import load_kernels

    ext = load_kernels()
    assert ext is not None, "built for this machine, so it must load"
    return ext


@needs_native_kernels
def test_native_nf4_kernel_equals_bitsandbytes_bit_for_bit():
    from pipeline.student.kernels import nf4_gemv_agrees, nf4_lut

    ext = _native()
    for n, k in ((96, 128), (3072, 3072), (224, 8192)):  # 96 and 224: odd tile counts
        w, qs = _packed(n, k, seed=n)
        lut = nf4_lut(qs.code)
        for m in (1, 3):
            x = torch.randn(m, k, dtype=torch.bfloat16)
            ref = torch.ops.bitsandbytes.gemv_4bit.default(x, w, qs.shape, qs.absmax, qs.code, qs.blocksize)
            assert torch.equal(ext.nf4_gemv(x, w, qs.absmax, lut, qs.blocksize), ref), (n, k, m)
        assert nf4_gemv_agrees(ext.nf4_gemv, w, qs)  # the check a decoder runs at start
    with pytest.raises(RuntimeError, match="bf16"):
        ext.nf4_gemv(torch.randn(1, 128), w, qs.absmax, lut, qs.blocksize)


def _bnb_gemv(shift: float = 0.0):
    """A stand-in for the native kernel (its signature) that calls bitsandbytes' op, plus `shift`
    (a kernel that is wrong by that much); counts its calls."""
    import bitsandbytes.functional as bf

    nf4 = bf.get_4bit_type("nf4", device="cpu")

    def gemv(x, w, absmax, lut, bs):
        gemv.calls += 1
        return torch.ops.bitsandbytes.gemv_4bit.default(x, w, (absmax.shape[-1], x.shape[1]), absmax, nf4, bs) + shift

    gemv.calls = 0
    return gemv


def test_nf4_check_accepts_bitsandbytes_result_and_rejects_any_other():
    """The start-up check: equal to bitsandbytes bit for bit, or the kernel is not used."""
    from pipeline.student.kernels import nf4_gemv_agrees

    w, qs = _packed(96, 256, seed=5)
    assert nf4_gemv_agrees(_bnb_gemv(), w, qs)
    assert not nf4_gemv_agrees(_bnb_gemv(shift=1.0), w, qs)

    def one_ulp_off(x, w, absmax, lut, bs):
        out = _bnb_gemv()(x, w, absmax, lut, bs)
        out.view(torch.int16)[0, 7] += 1  # the next bf16 value
        return out

    def raises(*args):
        raise RuntimeError("illegal instruction")

    assert not nf4_gemv_agrees(one_ulp_off, w, qs)
    assert not nf4_gemv_agrees(raises, w, qs)
    assert not nf4_gemv_agrees(lambda *a: _bnb_gemv()(*a).float(), w, qs)  # right numbers, wrong dtype


@pytest.mark.parametrize("wrong", [False, True])
def test_decoder_uses_the_native_kernel_only_if_it_matches_bitsandbytes(memorised_student, caplog, wrong):
    """A decoder start checks the model's native NF4 kernel against bitsandbytes: a kernel that
    disagrees is dropped with a log line (and decoding still equals generate()); one that agrees
    is used. Kernels injected here (bitsandbytes' op, or it plus 1), since this runs on any CPU;
    the 4-bit layers are packed as bitsandbytes packs them on AVX512-BF16 CPUs."""
    import logging
    import types

    import torch.nn as nn

    from pipeline.student.attention import cpu_attention
    from pipeline.student.generate import decoder
    from pipeline.student.kernels import attach_kernels, kernels_of

    student = load_student(memorised_student, path="nf4")
    for m in student.lm.modules():
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = True  # pack on the first forward, as bitsandbytes does there
    gemv = _bnb_gemv(shift=1.0 if wrong else 0.0)
    attend = lambda q, k, v, scale: cpu_attention(nn.Module(), q, k, v, None, scaling=scale)[0]
    lm = student.lm.get_base_model()
    attach_kernels(lm, types.SimpleNamespace(nf4_gemv=gemv, attend_one=attend))
    with caplog.at_level(logging.WARNING, logger="pipeline.student.kernels"):
        dec = decoder(student)
    assert gemv.calls == 1  # the check
    assert dec.native_kernels is not wrong and (kernels_of(lm) is None) is wrong
    assert ("disagrees with bitsandbytes" in caplog.text) is wrong
    images = [r.image() for r in cifar20_records()][:6]
    for batch in (images[:1], images[:6]):
        assert torch.equal(generate_ids(student, batch, config=SETTINGS[0]),
                           hf_generate(student, batch, config=SETTINGS[0]))
    assert (gemv.calls == 1) is wrong  # used for decoding only when it agreed


def _reference_attention(q, k, v, scale, mask=None):
    g = q.shape[1] // k.shape[1]
    k, v = (t.float().repeat_interleave(g, dim=1) for t in (k, v))
    s = torch.matmul(q.float(), k.transpose(-1, -2)) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(s, dim=-1), v).transpose(1, 2)


ATTENTION_SHAPES = ((1, 32, 32, 110, 96), (3, 8, 2, 17, 64), (2, 4, 4, 1, 16), (2, 6, 3, 40, 128))


def _attention_case(b, h, hkv, t, d):
    q = torch.randn(b, 1, h, d, dtype=torch.bfloat16).transpose(1, 2)  # a view, as in decode.py
    kb, vb = (torch.randn(b, hkv, t + 30, d, dtype=torch.bfloat16) * 3 for _ in range(2))
    return q, kb[:, :, :t], vb[:, :, :t]  # cache views, strided like decode.py's buffers


def _close_to_float32_math(out, q, k, v, d):
    ref = _reference_attention(q, k, v, d ** -0.5)
    assert out.shape == ref.shape and out.dtype == torch.bfloat16
    return bool(((out.float() - ref).abs() <= ref.abs() * 2 ** -8 + 1e-5).all())


def test_decode_attention_matches_float32_math():
    """One query over a cache view, with GQA and lengths that are not multiples of 16: float32
    math, rounded to bf16 once (attention.py's torch ops: a model given no native kernels)."""
    import torch.nn as nn

    from pipeline.student.attention import cpu_attention

    torch.manual_seed(0)
    for b, h, hkv, t, d in ATTENTION_SHAPES:
        q, k, v = _attention_case(b, h, hkv, t, d)
        out, _ = cpu_attention(nn.Module(), q, k, v, None, scaling=d ** -0.5)
        assert _close_to_float32_math(out, q, k, v, d), (b, h, hkv, t, d)


@needs_native_kernels
def test_native_attention_kernel_matches_float32_math():
    """The same with the native one-token kernel (csrc/attention.cpp), as a loaded model runs it."""
    import torch.nn as nn

    from pipeline.student.attention import cpu_attention
    from pipeline.student.kernels import ATTR

    ext = _native()
    module = nn.Module()
    setattr(module, ATTR, ext)
    torch.manual_seed(0)
    for b, h, hkv, t, d in ATTENTION_SHAPES:
        q, k, v = _attention_case(b, h, hkv, t, d)
        out, _ = cpu_attention(module, q, k, v, None, scaling=d ** -0.5)
        assert torch.equal(out, ext.attend_one(q, k, v, d ** -0.5))
        assert _close_to_float32_math(out, q, k, v, d), (b, h, hkv, t, d)
    with pytest.raises(RuntimeError, match="bf16"):
        ext.attend_one(q.float(), k, v, 0.1)


def test_cpu_attention_masks_like_sdpa():
    """Prompts (causal, bool and additive masks, GQA) and one-token steps give sdpa's result up to
    bf16 rounding, in Hugging Face's output layout."""
    import torch.nn as nn
    import torch.nn.functional as F

    from pipeline.student.attention import cpu_attention

    torch.manual_seed(1)
    module = nn.Module()
    q = torch.randn(2, 8, 9, 32, dtype=torch.bfloat16)
    k, v = (torch.randn(2, 4, 9, 32, dtype=torch.bfloat16) for _ in range(2))
    causal = torch.ones(9, 9, dtype=torch.bool).tril()[None, None].expand(2, 1, 9, 9).clone()
    causal[1, :, :, :2] = False  # row 1: two padded positions
    causal[1, :, :2, 0] = True  # ...but every query sees something
    additive = torch.zeros(2, 1, 9, 9).masked_fill(~causal, torch.finfo(torch.float32).min)
    for mask, kwargs in ((None, {"is_causal": True}), (causal, {}), (additive, {})):
        ours, _ = cpu_attention(module, q, k, v, mask, scaling=0.2, **kwargs)
        ref_mask = causal if mask is not None else causal[:1].clone().fill_(True).tril()
        ref = F.scaled_dot_product_attention(q.float(), k.float().repeat_interleave(2, 1),
                                             v.float().repeat_interleave(2, 1), attn_mask=ref_mask,
                                             scale=0.2).transpose(1, 2)
        assert ours.shape == (2, 9, 8, 32)
        torch.testing.assert_close(ours.float(), ref, atol=2e-2, rtol=2e-2)
    one, _ = cpu_attention(module, q[:, :, -1:], k, v, None, scaling=0.2)  # a decoding step
    torch.testing.assert_close(one.float(), _reference_attention(q[:, :, -1:], k, v, 0.2), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("path,attention", [("nf4", "capstudio_cpu"), ("bf16", "capstudio_cpu"),
                                            ("fp32", "capstudio_cpu"), ("nf4", "sdpa")])
def test_lean_loop_is_bit_identical_to_generate(memorised_student, path, attention):
    """Every token equals generate()'s: greedy, with repetition penalty and seeded sampling;
    batches of 1 and 6 (native kernel) and 12 (bitsandbytes' tiled kernel); with the loader's
    float32 CPU attention and with sdpa (what a model fresh from training runs)."""
    student = load_student(memorised_student, path=path)
    assert student.lm.config._attn_implementation == "capstudio_cpu"  # the loader's CPU default
    student.lm.set_attn_implementation(attention)
    images = [r.image() for r in cifar20_records()]
    for gc in SETTINGS:
        for batch in (images[:1], images[:6], images[:12]):
            ours = generate_ids(student, batch, config=gc)
            ref = hf_generate(student, batch, config=gc)
            assert torch.equal(ours, ref), (path, gc, len(batch))


def test_student_bench_measures_every_path_on_a_tiny_student(tmp_path, tiny_phi3):
    from pipeline.student.config import StudentConfig
    from pipeline.student.loader import build_student, save_student

    save_student(build_student(StudentConfig(base_model=str(tiny_phi3)), dtype=torch.bfloat16),
                 tmp_path / "student")
    import importlib.util

    from pipeline.hardware import cpu
    from pipeline.student.kernels import unavailable_reason

    spec = importlib.util.spec_from_file_location("bench_student", REPO / "bench" / "student.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    native = unavailable_reason() is None
    for path, cpu_path in (("nf4", None), ("nf4-torch", None), ("nf4-sdpa", None), ("nf4-hf", None),
                           ("fp32", None), ("auto", None), ("auto", "AVX2")):
        env = {**os.environ, **bench.TORCH_AS.get(cpu_path or "", {})}
        proc = subprocess.run([sys.executable, "bench/student.py", "--phase", "infer", "--work",
                               str(tmp_path), "--path", path, "--new-tokens", "6", "--reps", "1",
                               *(["--cpu-path", cpu_path] if cpu_path else [])],
                              cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        assert r["path"] == path and r["new_tokens"] == 6 and r["cpu_path"] == (cpu_path or cpu().path)
        if cpu_path:  # this machine as an AVX2-only one: a dense path, torch's AVX2 kernels, no native ones
            assert r["inference_path"] in ("bf16", "fp32") and r["why"].startswith("AVX2 without AVX512-BF16")
            assert r["torch_cpu_capability"] == "AVX2" and r["native_kernels"] is False
        else:
            expected = ("nf4" if cpu().has_bf16 else r["inference_path"]) if path == "auto" else path.split("-")[0]
            assert r["inference_path"] == expected
            assert r["native_kernels"] is (path != "nf4-torch" and native)
        assert r["attention"] == ("sdpa" if path == "nf4-sdpa" else "capstudio_cpu")
        assert r["decode_tok_s"] > 0 and r["ttft_s"] > 0 and r["bandwidth_gbs"] > 1
        assert r["fraction_of_bound"] == pytest.approx(r["decode_tok_s"] / r["bound_tok_s"], abs=2e-3)
        assert r["targets"] == {"fraction_of_bound": 0.5, "ttft_s": 3.0}
        assert r["meets_targets"] is (r["fraction_of_bound"] >= 0.5 and r["ttft_s"] <= 3.0)


def test_gpu_check_runs_its_phases_on_a_cpu_with_a_tiny_model(tmp_path):
    """bench/gpu_check.py (run on a lent GPU) keeps working: its full-size phases on a tiny Phi-3."""
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--device", "cpu", "--skip-memorise",
                           "--full-config", "tiny", "--work", str(tmp_path), "--steps", "1", "--reps", "1",
                           "--new-tokens", "4"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["phase"]: r for r in map(json.loads, (x for x in proc.stdout.splitlines() if x.startswith("{")))}
    assert all(rows[p]["ok"] for p in ("env", "full-build", "full-train", "full-infer")), rows
    assert rows["full-train"]["step_s"] > 0 and rows["full-infer"]["lean_equals_hf"] is True
    assert rows["full-infer"]["lean_decode_tok_s"] > 0 and rows["full-infer"]["hf_decode_tok_s"] > 0


def test_without_native_kernels_both_loops_still_agree(memorised_student):
    """Settings.native_kernels off (or a CPU without AVX512-BF16, or no build): bitsandbytes'
    kernel and torch's attention ops, and still every token equals generate()'s."""
    from pipeline.student.generate import decoder
    from pipeline.student.kernels import kernels_of

    student = load_student(memorised_student, path="nf4", native_kernels=False)
    assert kernels_of(student.lm.get_base_model()) is None
    assert decoder(student).native_kernels is False
    images = [r.image() for r in cifar20_records()]
    for batch in (images[:1], images[:6]):
        for gc in SETTINGS[:2]:
            assert torch.equal(generate_ids(student, batch, config=gc), hf_generate(student, batch, config=gc))


@pytest.mark.parametrize("how", [{"path": "bf16"}, {"path": "fp32"}, {"cpu_path": "AVX2"}])
def test_the_dequantised_paths_write_the_nf4_models_tokens(memorised_student, how):
    """The AVX2 paths (NF4 base dequantised to bf16 or fp32, LoRA merged, built one layer at a
    time; "auto" on this machine limited to AVX2) through the lean loop give every greedy token
    that generate() gives on the trained NF4 model, on all 20 images, with and without a
    repetition penalty. (Merging rounds W + BA once, where the NF4 path rounds W x and (BA) x
    separately: equal tokens here because the memorised student's margins are wide; a model with
    near-ties could differ by a token, as any change of rounding can.)"""
    import torch.nn as nn

    from pipeline.student.inference_path import InferencePath

    nf4 = load_student(memorised_student, path="nf4")
    dense = load_student(memorised_student, **how)
    assert dense.inference.path in (InferencePath.bf16, InferencePath.fp32)
    if "path" in how:
        assert dense.inference.path.value == how["path"]
    else:  # the machine's own flags say AVX512-BF16 at most; limited, it must not pick NF4
        assert "AVX2 without AVX512-BF16" in dense.inference.reason
    dtype = torch.bfloat16 if dense.inference.path == InferencePath.bf16 else torch.float32
    layer = dense.lm.model.layers[0]
    for proj in (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj):
        assert type(proj) is nn.Linear and proj.weight.dtype == dtype  # no 4-bit layer, no peft wrapper
    assert not any(hasattr(m, "lora_A") or hasattr(getattr(m, "weight", None), "quant_state")
                   for m in dense.lm.modules())
    images = [r.image() for r in cifar20_records()]
    for gc in SETTINGS[:2]:
        for batch in (images[:1], images):
            assert torch.equal(generate_ids(dense, batch, config=gc), hf_generate(nf4, batch, config=gc)), (how, gc)


def test_the_avx2_bf16_path_with_its_prompt_in_float32_writes_the_nf4_models_tokens(memorised_student, monkeypatch):
    """On a CPU without native bf16 where the loader measured float32 faster for the prompt
    (fp32_prefill.py), the prompt's matmuls run widened to float32 and decoding stays bf16: still
    every greedy token of generate() on the trained NF4 model, on all 20 images, batch 1 and 20."""
    from pipeline.student import fp32_prefill, loader

    monkeypatch.setattr(loader.fp32_prefill, "probe", lambda: {"bf16": 0.09, "fp32": 0.04})  # as measured on AVX2
    calls = []
    real_active = fp32_prefill.active
    monkeypatch.setattr(fp32_prefill, "active", lambda: calls.append(1) or real_active())
    nf4 = load_student(memorised_student, path="nf4")
    dense = load_student(memorised_student, path="bf16", cpu_path="AVX2")
    assert dense.inference.prefill_fp32 and "prompt computed in float32" in dense.inference.reason
    images = [r.image() for r in cifar20_records()]
    for gc in SETTINGS[:2]:
        for batch in (images[:1], images):
            assert torch.equal(generate_ids(dense, batch, config=gc), hf_generate(nf4, batch, config=gc)), gc
    assert len(calls) == 4  # every prefill widened
