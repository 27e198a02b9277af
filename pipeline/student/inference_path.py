"""Which way the student's base runs for inference, chosen at load time from the CPU and memory.

- nf4:  the 4-bit base as trained, LoRA unmerged (decode.py with the native NF4 kernels): the
        fewest bytes per token, but only fast where AVX512-BF16 runs bitsandbytes' and our NF4
        kernels. On AVX2-only CPUs bitsandbytes' NF4 product runs at ~0.2 GB/s (issue 16):
        10-12 s per Phi-3-mini token.
- bf16: the base dequantised to bf16 with LoRA merged (loader.py builds it layer by layer), run
        by plain torch matmuls in the same lean loop: 2 bytes per weight.
- fp32: the same in float32: twice the bytes, but where torch's bf16 matrix-vector product is
        compute-bound (no native bf16) it can still be the faster per token.

`choose_path` is a pure function of the CPU, free memory, the model's sizes and (optionally)
measured matmul speeds, so tests can give it any machine; `probe_dense_speed` measures the latter.
"""
from __future__ import annotations

import enum
import os
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.hardware import CpuCapabilities

GB = 1e9
HEADROOM = 1.0 * GB  # activations, KV cache, tokenizer, Python: what a loaded student needs beside its weights
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit codes + 8-bit absmax per 64 + fp32 per 256 blocks
NF4_SLOW_GBS = 0.2  # bitsandbytes' NF4 product without AVX512-BF16 (issue 16: 0.15-0.2 GB/s)


class InferencePath(str, enum.Enum):
    nf4 = "nf4"
    bf16 = "bf16"
    fp32 = "fp32"


DENSE_PATHS = (InferencePath.bf16, InferencePath.fp32)


@dataclass(frozen=True)
class PathChoice:
    """The path the student runs and, in words, why (the playground shows both)."""

    path: InferencePath
    reason: str
    prefill_fp32: bool = False  # the prompt's bf16 matmuls widened to float32 (fp32_prefill.py)

    def as_dict(self) -> dict:
        return {"path": self.path.value, "reason": self.reason, "prefill_fp32": self.prefill_fp32}


@dataclass(frozen=True)
class ModelSizes:
    """Weight bytes of a Phi-3 base in each format: (projection weights, everything else)."""

    linear_params: int  # the 4-bit-quantised projections of every decoder layer
    other_params: int  # embeddings, LM head, norms (bf16 on the NF4 path)

    @classmethod
    def of_config(cls, config) -> ModelSizes:  # a transformers Phi3Config
        h, i, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
        hd = getattr(config, "head_dim", None) or h // config.num_attention_heads
        qkv = h * (config.num_attention_heads + 2 * config.num_key_value_heads) * hd
        linear = n * (qkv + config.num_attention_heads * hd * h + 2 * h * i + i * h)
        emb = config.vocab_size * h
        other = emb * (1 if config.tie_word_embeddings else 2) + (2 * n + 1) * h
        return cls(linear_params=linear, other_params=other)

    def bytes(self, path: InferencePath) -> int:
        if path == InferencePath.nf4:
            return int(self.linear_params * NF4_BYTES_PER_WEIGHT + self.other_params * 2)
        width = 2 if path == InferencePath.bf16 else 4
        return (self.linear_params + self.other_params) * width


def free_memory() -> int:
    """Bytes this process could still allocate without swapping (MemAvailable on Linux)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def probe_dense_speed(n: int = 3072, k: int = 8192, reps: int = 3) -> dict[InferencePath, float]:
    """GB/s of torch's one-row product with an (n, k) weight in bf16 and fp32, best of `reps`
    over two weights (so neither stays in cache): what a decoded token's projections run at.
    About 0.3 s; only a CPU without native bf16 needs it (where bf16 may be compute-bound)."""
    import torch
    import torch.nn.functional as F

    out = {}
    for path, dtype in ((InferencePath.bf16, torch.bfloat16), (InferencePath.fp32, torch.float32)):
        ws = [torch.full((n, k), 0.01, dtype=dtype) for _ in range(2)]  # 50-100 MB each, > any L3
        x = torch.full((1, k), 0.5, dtype=dtype)
        best = float("inf")
        for _ in range(reps + 1):  # the first round warms up
            t = time.perf_counter()
            for w in ws:
                F.linear(x, w)
            best = min(best, (time.perf_counter() - t) / len(ws))
        out[path] = n * k * ws[0].element_size() / best / GB
    return out


def _gb(n: float) -> str:
    return f"{n / GB:.1f} GB" if n >= 0.1 * GB else f"{n / 1e6:.1f} MB"


def choose_path(caps: CpuCapabilities, *, sizes: ModelSizes, free: int, device: str = "cpu",
                speeds: dict[InferencePath, float] | None = None) -> PathChoice:
    """The fastest path that fits in `free` bytes, with the reason in words.

    NF4 wherever a GPU runs it or the CPU has AVX512-BF16 (or AMX); otherwise the dense path
    (bf16 or fp32, whichever `speeds` says reads a token's weights sooner; bf16 without speeds)
    whose weights plus HEADROOM fit, else NF4 anyway, saying how slow that is.
    """
    if device != "cpu":
        return PathChoice(InferencePath.nf4, f"{device}: NF4 weights as trained, LoRA unmerged")
    if caps.has_bf16:
        return PathChoice(InferencePath.nf4, f"{caps.path}: NF4 weights ({_gb(sizes.bytes(InferencePath.nf4))}) "
                          "with the native NF4 kernels, LoRA unmerged: the fewest bytes per token")
    why = (f"{caps.path} without AVX512-BF16: NF4 kernels would run at ~{NF4_SLOW_GBS} GB/s "
           f"({sizes.bytes(InferencePath.nf4) / (NF4_SLOW_GBS * GB):.2g} s per token)")

    def seconds_per_token(p: InferencePath) -> float:
        return sizes.bytes(p) / (speeds[p] * GB) if speeds else float(p != InferencePath.bf16)

    fitting = [p for p in DENSE_PATHS if sizes.bytes(p) + HEADROOM <= free]
    if not fitting:
        need = sizes.bytes(InferencePath.bf16) + HEADROOM
        return PathChoice(InferencePath.nf4, f"{why}, but the bf16 base needs {_gb(need)} and only "
                          f"{_gb(free)} is free: NF4 it is (slow on this CPU)")
    best = min(fitting, key=seconds_per_token)
    measured = ""
    if speeds:
        measured = "; measured " + ", ".join(f"{p.value} {speeds[p]:.1f} GB/s" for p in DENSE_PATHS)
    return PathChoice(best, f"{why}; using the base dequantised to {best.value} with LoRA merged "
                      f"({_gb(sizes.bytes(best))}, {_gb(free)} free{measured})")


def choose_prefill(choice: PathChoice, caps: CpuCapabilities, *, device: str = "cpu",
                   seconds: dict[str, float] | None = None) -> PathChoice:
    """`choice`, with the prompt computed in float32 where that is measured faster: only the bf16
    path on a CPU without native bf16 (fp32_prefill.py). `seconds`: fp32_prefill.probe()'s."""
    if choice.path != InferencePath.bf16 or device != "cpu" or caps.has_bf16 or not seconds:
        return choice
    bf16, fp32 = seconds["bf16"] * 1e3, seconds["fp32"] * 1e3
    if fp32 >= bf16:
        return PathChoice(choice.path, f"{choice.reason}; prompt in bf16 (a 64-row product: bf16 {bf16:.0f} ms, "
                          f"widened to float32 {fp32:.0f} ms)")
    return PathChoice(choice.path, f"{choice.reason}; prompt computed in float32 (a 64-row product: bf16 "
                      f"{bf16:.0f} ms, widened to float32 {fp32:.0f} ms)", prefill_fp32=True)
