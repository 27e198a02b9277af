"""Frozen per-run configs of the student: architecture, training and generation.

Each is saved as JSON beside what it produced (`student.json`, `train.json` in a student folder).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

PHI3_LORA_TARGETS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


class _JsonMixin:
    def to_json(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        _check(not unknown, f"{cls.__name__}: unknown fields {sorted(unknown)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kw)

    @classmethod
    def from_json(cls, path: Path):
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class StudentConfig(_JsonMixin):
    """What the student is: base model, image path into it, adapters, prompt."""

    base_model: str = "microsoft/Phi-3-mini-4k-instruct"  # hub id or local folder of the Phi-3 base
    image_size: int = 32  # images are resized to image_size x image_size RGB
    patch_size: int = 4  # 4 -> 64 patches (image tokens), 8 -> 16
    projector_hidden: int = 1024  # hidden width of the patch MLP
    lora_r: int = 8  # LoRA rank
    lora_alpha: int = 32  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.05  # dropout on the LoRA input
    lora_targets: tuple[str, ...] = PHI3_LORA_TARGETS  # Phi-3 module names that get adapters
    quantize_4bit: bool = True  # train on an NF4 double-quantised base (QLoRA)
    image_token: str = "<|placeholder1|>"  # reserved Phi-3 token repeated once per patch
    prompt: str = "Describe this image in one sentence."  # user text after the image

    def __post_init__(self):
        _check(self.image_size > 0 and self.patch_size > 0, "image_size and patch_size must be > 0")
        _check(self.image_size % self.patch_size == 0, "patch_size must divide image_size")
        _check(self.projector_hidden > 0, "projector_hidden must be > 0")
        _check(self.lora_r > 0 and self.lora_alpha > 0, "lora_r and lora_alpha must be > 0")
        _check(0.0 <= self.lora_dropout < 1.0, "lora_dropout must be in [0, 1)")
        _check(len(self.lora_targets) > 0, "lora_targets must name at least one module")
        _check(bool(self.base_model), "base_model must be set")

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        return 3 * self.patch_size * self.patch_size


@dataclass(frozen=True)
class TrainConfig(_JsonMixin):
    """How to train: defaults suit ~100 pairs (the original run: r=8, alpha=32, lr 2e-4, 3 epochs)."""

    epochs: float = 3.0  # passes over the train split (ignored when max_steps > 0)
    max_steps: int = 0  # optimizer steps; 0 -> derived from epochs
    batch_size: int = 4  # pairs per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr_lora: float = 2e-4  # AdamW lr of the LoRA adapters
    lr_projector: float = 2e-2  # AdamW lr of the projector (nanoVLM uses ~100x the LM's)
    weight_decay: float = 0.0  # AdamW weight decay (projector and adapters)
    warmup_ratio: float = 0.1  # fraction of steps with linear warmup, then cosine decay
    min_lr_ratio: float = 0.1  # cosine decays to this fraction of the peak lr
    max_grad_norm: float = 1.0  # gradient clipping; 0 disables
    checkpoint_every: int = 50  # save a resumable checkpoint every N optimizer steps (0: only at end)
    eval_every: int = 0  # validation loss every N steps (0: at each checkpoint and at the end)
    gradient_checkpointing: bool = False  # trade compute for activation memory
    augment: bool = False  # random horizontal flips and 2-pixel shifts of training images
    dtype: str = "auto"  # compute dtype: auto (bf16 on GPU and AVX512-BF16 CPUs, else fp32), float32, bfloat16
    seed: int = 0  # seeds init, shuffling and dropout
    weak_mode: str = "off"  # the snapshot's weak split (unreviewed drafts): off, warmup or mix
    weak_steps: int = 0  # warmup: optimizer steps on weak drafts before the approved pairs
    weak_weight: float = 0.5  # mix: each step adds weak_weight x the loss of a weak-draft micro-batch

    def __post_init__(self):
        _check(self.weak_mode in ("off", "warmup", "mix"), "weak_mode: off, warmup or mix")
        _check(self.weak_mode != "warmup" or self.weak_steps > 0, "weak_mode warmup needs weak_steps > 0")
        _check(self.weak_steps >= 0, "weak_steps must be >= 0")
        _check(0.0 < self.weak_weight <= 1.0, "weak_weight must be in (0, 1]")
        _check(self.epochs > 0 or self.max_steps > 0, "need epochs > 0 or max_steps > 0")
        _check(self.max_steps >= 0, "max_steps must be >= 0")
        _check(self.batch_size > 0 and self.grad_accum > 0, "batch_size and grad_accum must be > 0")
        _check(self.lr_lora > 0 and self.lr_projector > 0, "learning rates must be > 0")
        _check(0.0 <= self.warmup_ratio < 1.0, "warmup_ratio must be in [0, 1)")
        _check(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio must be in [0, 1]")
        _check(self.checkpoint_every >= 0 and self.eval_every >= 0, "intervals must be >= 0")
        _check(self.dtype in ("auto", "float32", "bfloat16"), "dtype: auto, float32 or bfloat16")


@dataclass(frozen=True)
class GenerationConfig(_JsonMixin):
    """How to decode a caption."""

    max_new_tokens: int = 40  # stop after this many tokens
    do_sample: bool = False  # False: greedy
    temperature: float = 1.0  # softmax temperature when sampling
    top_p: float = 1.0  # nucleus sampling mass
    top_k: int = 0  # keep the k most likely tokens (0: off)
    repetition_penalty: float = 1.0  # >1 discourages repeated tokens
    seed: int | None = None  # sampling seed (None: not reseeded)

    def __post_init__(self):
        _check(self.max_new_tokens > 0, "max_new_tokens must be > 0")
        _check(self.temperature > 0, "temperature must be > 0")
        _check(0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]")
        _check(self.top_k >= 0, "top_k must be >= 0")
        _check(self.repetition_penalty > 0, "repetition_penalty must be > 0")
