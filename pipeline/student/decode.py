"""Lean KV-cache decoding for the student: the default inference loop on every path.

Hugging Face `generate()` spends much of each CPU token in Python (hooks, cache objects, peft
and bitsandbytes wrappers) around the 4-bit matmuls. Here, as in nanoGPT or gpt-fast,
the prefill (image embeddings and the prompt) runs once through the Hugging Face model, and each
new token then runs through flat per-layer code that does exactly what `Phi3DecoderLayer`, peft's
LoRA layer and bitsandbytes' `Linear4bit` do, in the same order and dtypes, against a
preallocated KV cache. Attention is the model's own attention function (on the CPU the loader
sets attention.py's float32 one), so both loops compute the same numbers.
tests/test_student_decode.py checks it token for token against `generate()` on both inference
paths; bench/student.py measures both loops.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.phi3.modeling_phi3 import eager_attention_forward

from pipeline.student import fp32_prefill
from pipeline.student.config import GenerationConfig
from pipeline.student.kernels import attach_kernels, checked_kernels, kernels_of, nf4_lut

Linear = Callable[[torch.Tensor], torch.Tensor]


def _base_linear(module: nn.Module, ext=None, *, prepack: bool = False) -> Linear:  # ext: kernels
    """The module's own matmul without its Python wrapper, where that is safe to reproduce.

    4-bit layers in bitsandbytes' packed CPU layout use the native kernel `ext` (kernels.py;
    same numbers, faster) for up to 8 rows, else bitsandbytes' op. `prepack`: a bf16 dense
    layer gets a oneDNN-packed copy of its weight (faster one-row products, same numbers;
    costs its size in memory, so only the LM head uses it).
    """
    qs = getattr(getattr(module, "weight", None), "quant_state", None)
    if qs is not None:  # bitsandbytes Linear4bit
        if getattr(qs, "packing_format_for_cpu", False) and module.bias is None:
            return _packed_4bit(module.weight.data, qs, module.compute_dtype, ext)
        return module  # other devices / layouts: bitsandbytes' own forward
    if type(module) is nn.Linear:
        w, b = module.weight, module.bias
        if prepack and w.device.type == "cpu" and w.dtype == torch.bfloat16:
            try:
                packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), 1)
            except (AttributeError, RuntimeError):
                packed = None
            if packed is not None:
                link = torch.ops.mkldnn._linear_pointwise

                def dense(x: torch.Tensor) -> torch.Tensor:
                    y = link(x.reshape(-1, x.shape[-1]), packed, b, "none", [], "")
                    return y.view(*x.shape[:-1], y.shape[-1])

                return dense
        return lambda x: F.linear(x, w, b)
    return module


def _packed_4bit(w: torch.Tensor, qs, dtype: torch.dtype, ext) -> Linear:  # bnb QuantState, kernels
    n, k = qs.shape
    shape, absmax, code, bs = qs.shape, qs.absmax, qs.code, qs.blocksize
    op = torch.ops.bitsandbytes.gemv_4bit.default
    if ext is None or absmax.dtype != torch.bfloat16 or code.numel() != 16:
        return lambda x: op(x.to(dtype), w, shape, absmax, code, bs).to(x.dtype)
    lut = nf4_lut(code)

    def forward(x: torch.Tensor) -> torch.Tensor:
        x2 = x.to(dtype).reshape(-1, k)
        if x2.shape[0] > 8:
            return op(x.to(dtype), w, shape, absmax, code, bs).to(x.dtype)
        return ext.nf4_gemv(x2.contiguous(), w, absmax, lut, bs).view(*x.shape[:-1], n).to(x.dtype)

    return forward


def _projection(module: nn.Module, ext=None) -> Linear:  # ext: the kernels or None
    """A projection as peft runs it: base matmul plus, if unmerged, each active LoRA adapter."""
    if not hasattr(module, "lora_A"):
        return _base_linear(module, ext)
    if module.disable_adapters or module.merged:
        return _base_linear(module.base_layer, ext)
    if getattr(module, "lora_variant", None):  # DoRA and friends: keep peft's own code
        return module
    base = _base_linear(module.base_layer, ext)
    adapters = [_adapter(module.lora_A[n].weight, module.lora_B[n].weight, module.scaling[n])
                for n in module.active_adapters if n in module.lora_A]
    if not adapters:
        return base

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = base(x)
        for a, b, scaling in adapters:  # peft: lora_B(lora_A(x.to(A.dtype))) * s, cast back, add
            y = F.linear(F.linear(x.to(a.dtype), a), b)
            out = out + (y if scaling == 1.0 else y * scaling).to(out.dtype)
        return out

    return forward


def _adapter(a: torch.Tensor, b: torch.Tensor, scaling: float) -> tuple:
    """(A, B, s); a power-of-two s is folded into B, which changes no bit of the result."""
    m, e = math.frexp(scaling)
    if scaling > 0 and m == 0.5 and b.dtype == torch.float32:
        return a, b.detach() * scaling, 1.0
    return a, b, scaling


def _rms_norm(norm: nn.Module) -> Linear:
    w, eps = norm.weight, norm.variance_epsilon

    shape = (w.shape[0],)

    def forward(x: torch.Tensor) -> torch.Tensor:  # Phi3RMSNorm: float32 statistics
        return w * F.rms_norm(x.to(torch.float32), shape, eps=eps).to(x.dtype)

    return forward


def _rope_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple:
    """cos and sign-folded sin, so rope is x*cos + roll(x)*sin' with no cat (bit-identical:
    rotate_half(x) = cat(-x2, x1), and (-a)*b == a*(-b) exactly)."""
    h = sin.shape[-1] // 2
    return cos, torch.cat([-sin[..., :h], sin[..., h:]], dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    d = cos.shape[-1]  # partial rotary: only the first d dims rotate
    rot = x if d == x.shape[-1] else x[..., :d]
    out = (rot * cos) + (rot.roll(d // 2, dims=-1) * sin_signed)
    return out if d == x.shape[-1] else torch.cat([out, x[..., d:]], dim=-1)


@dataclass
class KVCache:
    """The keys and values of one generation: one (B, H_kv, max_len, hd) buffer per layer.

    It belongs to the call that made it (`LeanDecoder.prefill`), never to the decoder, which is
    shared by every user of a cached student (the playground's st.cache_resource)."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]


@dataclass
class _Layer:
    ln1: Linear
    qkv: Linear
    o: Linear
    ln2: Linear
    gate_up: Linear
    down: Linear
    act: Callable[[torch.Tensor], torch.Tensor]


class LeanDecoder:
    """Per-token Phi-3 forward over a preallocated KV cache (batch B, one new token each).

    The decoder holds only views of the weights; every generation's state (its KVCache, its
    random generator) lives in the call, so one decoder serves many threads at once.

    It uses the native kernels the loader gave the model (kernels.py) only after one of their NF4
    products has equalled bitsandbytes' on this model; `native_kernels` says whether it does.
    """

    def __init__(self, causal_lm: nn.Module, *, prefill_fp32: bool = False):
        if causal_lm.config.model_type != "phi3":
            raise ValueError(f"LeanDecoder supports phi3, not {causal_lm.config.model_type!r}")
        cfg = causal_lm.config
        self.lm, self.core = causal_lm, causal_lm.model
        ext = kernels_of(causal_lm)
        attach_kernels(causal_lm, None)  # nothing native runs before the check
        with torch.no_grad():  # bitsandbytes repacks 4-bit weights for its CPU kernel on
            causal_lm(input_ids=torch.zeros(1, 1, dtype=torch.long, device=causal_lm.device))  # first use
        ext = checked_kernels(causal_lm, ext)
        attach_kernels(causal_lm, ext)  # generate() and this loop use the same attention
        self.native_kernels = ext is not None
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.layers = [
            _Layer(ln1=_rms_norm(L.input_layernorm), qkv=_projection(L.self_attn.qkv_proj, ext),
                   o=_projection(L.self_attn.o_proj, ext), ln2=_rms_norm(L.post_attention_layernorm),
                   gate_up=_projection(L.mlp.gate_up_proj, ext), down=_projection(L.mlp.down_proj, ext),
                   act=L.mlp.activation_fn)
            for L in self.core.layers
        ]
        self.norm = _rms_norm(self.core.norm)
        self.lm_head = _base_linear(causal_lm.lm_head, ext, prepack=True) if not hasattr(
            causal_lm.lm_head, "lora_A") else _projection(causal_lm.lm_head, ext)
        self.embed = causal_lm.get_input_embeddings()
        self.attn_modules = [L.self_attn for L in self.core.layers]
        # the prompt's bf16 matmuls in float32 (a CPU without native bf16, fp32_prefill.py)
        self.prefill_fp32 = prefill_fp32 and fp32_prefill.install(causal_lm) > 0

    def prefill(self, inputs_embeds: torch.Tensor, max_len: int) -> tuple[torch.Tensor, KVCache]:
        """Run the prompt through the Hugging Face model; keep its KV in fresh buffers of max_len.

        Returns float32 logits of the last position (B, V), as `generate()` sees them, and the
        call's own KVCache (to hand to every `step` of this generation).
        """
        b, t, _ = inputs_embeds.shape
        with fp32_prefill.active() if self.prefill_fp32 else nullcontext():
            out = self.lm(inputs_embeds=inputs_embeds, attention_mask=torch.ones(b, t, dtype=torch.long,
                          device=inputs_embeds.device), use_cache=True, logits_to_keep=1)
        cache = KVCache(k=[], v=[])
        for layer in out.past_key_values.layers:
            for src, dst in ((layer.keys, cache.k), (layer.values, cache.v)):
                buf = src.new_empty(b, self.kv_heads, max_len, self.head_dim)
                buf[:, :, :t] = src
                dst.append(buf)
        return out.logits[:, -1, :].to(copy=True, dtype=torch.float32), cache

    def _attention(self) -> Callable:
        """The attention function the Hugging Face model itself calls (sdpa, eager, or
        attention.py's float32 one on the CPU), so both loops compute the same numbers."""
        return ALL_ATTENTION_FUNCTIONS.get_interface(self.core.config._attn_implementation,
                                                     eager_attention_forward)

    def step(self, token_ids: torch.Tensor, pos: int, cache: KVCache) -> torch.Tensor:
        """Feed one token per row at position `pos` into `cache`; return float32 logits (B, V)."""
        attend = self._attention()
        x = self.embed(token_ids[:, None])  # (B, 1, D)
        b = x.shape[0]
        cos, sin = self.core.rotary_emb(x, torch.full((b, 1), pos, dtype=torch.long, device=x.device))
        cos, sin = _rope_tables(cos[:, None], sin[:, None])  # broadcast over heads
        nq, nkv, hd = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.head_dim
        for i, L in enumerate(self.layers):
            qkv = L.qkv(L.ln1(x))
            qk = _rope(qkv[..., :nq + nkv].view(b, 1, -1, hd).transpose(1, 2), cos, sin)  # q and k at once
            q, k = qk[:, :self.heads], qk[:, self.heads:]
            v = qkv[..., nq + nkv:].view(b, 1, -1, hd).transpose(1, 2)
            cache.k[i][:, :, pos:pos + 1] = k
            cache.v[i][:, :, pos:pos + 1] = v
            a, _ = attend(self.attn_modules[i], q, cache.k[i][:, :, :pos + 1], cache.v[i][:, :, :pos + 1],
                          None, dropout=0.0, scaling=self.attn_modules[i].scaling)
            x = x + L.o(a.reshape(b, 1, -1))
            gate, up = L.gate_up(L.ln2(x)).chunk(2, dim=-1)
            x = x + L.down(up * L.act(gate))
        return self.lm_head(self.norm(x))[:, -1, :].to(dtype=torch.float32)


def logits_processors(gc: GenerationConfig):
    """The processors `generate()` would build from these settings, in its order."""
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

    procs = LogitsProcessorList()
    if gc.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(penalty=gc.repetition_penalty))
    procs.extend(gc.sampling_warpers())
    return procs


@torch.inference_mode()
def decode_tokens(
    decoder: LeanDecoder, inputs_embeds: torch.Tensor, gc: GenerationConfig, *, eos_ids: list[int],
    pad_id: int, stop_at_eos: bool = True, generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row (B,) until all rows ended or max_new_tokens.

    Rows that emitted an end token get `pad_id` afterwards, as in `generate()`; the prompt is
    not part of the repetition-penalty history (`generate()` with inputs_embeds does the same).
    Sampling draws from `generator` (the call's own; None: torch's global one).
    """
    b, t, _ = inputs_embeds.shape
    procs = logits_processors(gc)
    logits, cache = decoder.prefill(inputs_embeds, t + gc.max_new_tokens)
    seq = torch.empty(b, 0, dtype=torch.long, device=inputs_embeds.device)
    eos = torch.tensor(eos_ids, device=seq.device)
    done = torch.zeros(b, dtype=torch.bool, device=seq.device)
    for i in range(gc.max_new_tokens):
        scores = procs(seq, logits)
        if gc.do_sample:
            nxt = torch.multinomial(F.softmax(scores, dim=-1), num_samples=1, generator=generator).squeeze(1)
        else:
            nxt = torch.argmax(scores, dim=-1)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        seq = torch.cat([seq, nxt[:, None]], dim=-1)
        yield nxt
        if stop_at_eos:
            done |= torch.isin(nxt, eos)
            if bool(done.all()):
                return
        if i + 1 < gc.max_new_tokens:
            logits = decoder.step(nxt, t + i, cache)
