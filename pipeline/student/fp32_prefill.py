"""The prompt's matmuls in float32 on CPUs without native bf16 (the dense bf16 path, issue 16).

Without AVX512-BF16 a bf16 matrix product is compute-bound: torch converts as it goes and reaches
~47 GFLOP/s on two AVX2 cores, where float32 reaches ~100. A decoded token (one row) is bound by
reading the weights, so bf16 (half the bytes) stays right for decoding; a prompt of 75 positions
is bound by arithmetic, so there each bf16 weight is widened into a float32 scratch buffer (exact)
and multiplied in float32, and the result rounded back to bf16: the same numbers up to the order
of the sums, about twice as fast. `probe` measures both on this CPU; the loader turns it on only
where float32 wins (inference_path.PathChoice.prefill_fp32).

Thread safety: the modules' forwards are replaced once; whether a call widens its weights is
per thread (`active`), and so is its scratch buffer, so concurrent generations never share one.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

MIN_ROWS = 32  # below this many rows bf16 is the faster product even without native bf16 (measured)
_local = threading.local()


def probe(rows: int = 64, n: int = 3072, k: int = 8192, reps: int = 2) -> dict[str, float]:
    """Seconds for a (rows, k) x (k, n) product with a bf16 weight: as bf16, and widened to float32
    (including the widening), best of `reps` after a warm-up. About 0.3 s on two AVX2 cores."""
    w = torch.full((n, k), 0.01, dtype=torch.bfloat16)
    x = torch.full((rows, k), 0.5, dtype=torch.bfloat16)
    scratch = torch.empty(n, k)
    ways = {"bf16": lambda: F.linear(x, w),
            "fp32": lambda: F.linear(x.float(), scratch.copy_(w)).to(torch.bfloat16)}
    out = {}
    for name, run in ways.items():
        best = float("inf")
        for _ in range(reps + 1):
            t = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t)
        out[name] = best
    return out


def _scratch(numel: int) -> torch.Tensor:
    buf = getattr(_local, "scratch", None)
    if buf is None or buf.numel() < numel:
        buf = _local.scratch = torch.empty(numel, dtype=torch.float32)
    return buf


def _widening_forward(module: nn.Linear):
    w, b = module.weight, module.bias

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not getattr(_local, "active", False) or x.dtype != torch.bfloat16 or x.numel() < MIN_ROWS * x.shape[-1]:
            return F.linear(x, w, b)
        wide = _scratch(w.numel())[:w.numel()].view(w.shape).copy_(w)
        y = F.linear(x.float(), wide, None if b is None else b.float())
        return y.to(torch.bfloat16)

    return forward


def install(model: nn.Module) -> int:
    """Give every bf16 `nn.Linear` of `model` the widening forward (idle unless `active`); returns
    how many. Call once, on a model whose weights are not replaced afterwards (an inference model)."""
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear and module.weight.dtype == torch.bfloat16 and "forward" not in vars(module):
            module.forward = _widening_forward(module)
            count += 1
    return count


@contextmanager
def active() -> Iterator[None]:
    """Within: this thread's calls of installed modules with >= MIN_ROWS rows compute in float32.
    The scratch buffer (the largest weight in float32) is dropped on leaving."""
    before = getattr(_local, "active", False)
    _local.active = True
    try:
        yield
    finally:
        _local.active = before
        if not before:
            _local.scratch = None
