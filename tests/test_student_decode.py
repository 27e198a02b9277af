"""The lean decoding loop (pipeline/student/decode.py) and the native NF4 kernel compute what
Hugging Face generate() and bitsandbytes compute: bit for bit where the arithmetic is the same."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.student.config import GenerationConfig
from pipeline.student.generate import generate_ids, hf_generate
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


def test_native_nf4_kernel_equals_bitsandbytes_bit_for_bit():
    from pipeline.student.kernels import nf4_gemv, unavailable_reason

    reason = unavailable_reason()
    ext = nf4_gemv()
    if reason is not None:  # another CPU: the loop must fall back, not fail
        assert ext is None
        return
    assert ext is not None, "the kernel should build on this machine"
    for n, k in ((96, 128), (3072, 3072), (224, 8192)):  # 96 and 224: odd tile counts
        w, qs = _packed(n, k, seed=n)
        lut = qs.code.to(torch.bfloat16).view(torch.int16).repeat(2).contiguous()
        for m in (1, 3):
            x = torch.randn(m, k, dtype=torch.bfloat16)
            ref = torch.ops.bitsandbytes.gemv_4bit.default(x, w, qs.shape, qs.absmax, qs.code, qs.blocksize)
            assert torch.equal(ext.nf4_gemv(x, w, qs.absmax, lut, qs.blocksize), ref), (n, k, m)
    with pytest.raises(RuntimeError, match="bf16"):
        ext.nf4_gemv(torch.randn(1, 128), w, qs.absmax, lut, qs.blocksize)


@pytest.mark.parametrize("path", ["nf4", "bf16"])
def test_lean_loop_is_bit_identical_to_generate(memorised_student, path):
    """Every token equals generate()'s: greedy, with repetition penalty and seeded sampling;
    batches of 1 and 6 (native kernel) and 12 (bitsandbytes' tiled kernel)."""
    student = load_student(memorised_student, path=path)
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
    for path in ("nf4", "nf4-hf"):
        proc = subprocess.run([sys.executable, "bench/student.py", "--phase", "infer", "--work",
                               str(tmp_path), "--path", path, "--new-tokens", "6", "--reps", "1"],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        assert r["path"] == path and r["new_tokens"] == 6
        assert r["decode_tok_s"] > 0 and r["ttft_s"] > 0 and r["bandwidth_gbs"] > 1
        assert r["fraction_of_bound"] == pytest.approx(r["decode_tok_s"] / r["bound_tok_s"], abs=2e-3)
