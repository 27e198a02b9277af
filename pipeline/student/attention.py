"""The student's attention for CPU inference: float32 matmul, softmax, matmul.

PyTorch's CPU `scaled_dot_product_attention` runs a flash-attention kernel built for long
sequences: for one new token most of its time goes to per-head block setup (bench/student.py's
nf4-sdpa row measures it). Here a decoding step (one query, no mask) is one native pass over K
and V (csrc/attention.cpp, when the model was given the kernels), and prompts use three batched
float32 ops; both are more precise than the flash kernel, which rounds the probabilities to bf16
before multiplying by V. The loader registers this function with Hugging Face as
`capstudio_cpu` and switches CPU inference models to it, so `generate()`, the prefill and the
lean decoding loop (decode.py, which calls the model's own attention function) compute the same
numbers. Training keeps `sdpa`.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from pipeline.student.kernels import ATTR

NAME = "capstudio_cpu"


def cpu_attention(
    module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
    is_causal: bool | None = None, **kwargs,
) -> tuple[torch.Tensor, None]:
    """Hugging Face attention-interface signature: query (B, H, Tq, D), key/value (B, Hkv, Tk, D),
    returns (B, Tq, H, D) in the query's dtype."""
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    if query.shape[2] == 1 and attention_mask is None and query.dtype == key.dtype == torch.bfloat16:
        ext = getattr(module, ATTR, None)  # decoding: one fused pass (csrc/attention.cpp)
        if ext is not None and query.device.type == "cpu" and query.shape[-1] % 16 == 0:
            return ext.attend_one(query, key, value, scale), None
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = (t.repeat_interleave(groups, dim=1) for t in (key, value))
    tq, tk = query.shape[2], key.shape[2]
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2))
    scores.mul_(scale)
    low = torch.finfo(torch.float32).min  # not -inf: a fully masked row stays finite
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores.masked_fill_(~attention_mask[..., :tk], low)
        else:
            scores.add_(attention_mask[..., :tk])
    elif tq > 1 and (is_causal if is_causal is not None else getattr(module, "is_causal", True)):
        causal = torch.ones(tq, tk, dtype=torch.bool, device=scores.device).triu(tk - tq + 1)
        scores.masked_fill_(causal, low)
    probs = torch.softmax(scores, dim=-1)
    if dropout and module.training:
        probs = torch.nn.functional.dropout(probs, p=dropout)
    out = torch.matmul(probs, value.float()).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make `capstudio_cpu` a valid `attn_implementation` (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, cpu_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
