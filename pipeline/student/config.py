"""Frozen per-run configs of the student: what it is (StudentConfig) and how to train it (TrainConfig).

Each is saved as JSON beside what it produced (`student.json`, `train.json` in a student folder), and
each field's help is the `--help` of `python -m pipeline train`. Decoding: pipeline/generation.py.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.configs import JsonConfig, check, doc
from pipeline.generation import GenerationConfig

__all__ = ["PHI3_LORA_TARGETS", "GenerationConfig", "StudentConfig", "TrainConfig"]

PHI3_LORA_TARGETS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
DTYPES = ("auto", "float32", "bfloat16")
WEAK_MODES = ("off", "warmup", "mix")
PROJECTORS = ("mlp", "conv")


@dataclass(frozen=True)
class StudentConfig(JsonConfig):
    """What the student is: base model, image path into it, adapters, prompt."""

    base_model: str = doc("microsoft/Phi-3-mini-4k-instruct",
                          "Phi-3 hub id or local folder (the CLI's default: CAPSTUDIO_STUDENT_BASE_MODEL).")
    image_size: int = doc(32, "Images are resized to this square size (RGB).")
    patch_size: int = doc(4, "Patch side in pixels; must divide image_size: 4 -> 64 image tokens, 8 -> 16.")
    projector_hidden: int = doc(1024, "Hidden width of the patch projector MLP.")
    projector: str = doc("mlp", "Image path: mlp (each patch's pixels -> MLP) or conv (a small convolutional stem "
                         "trained from scratch: 3 -> conv_channels -> 2x conv_channels, two stride-2 3x3 layers, "
                         "then each patch's features -> MLP). A student folder without this field is an mlp one.")
    conv_channels: int = doc(32, "conv projector: channels of its first layer (the second has twice as many).")
    lora_r: int = doc(8, "LoRA rank.")
    lora_alpha: int = doc(32, "LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = doc(0.05, "Dropout on the LoRA inputs, in [0, 1).")
    lora_targets: tuple[str, ...] = doc(PHI3_LORA_TARGETS,
                                        "Phi-3 module names that get adapters (comma-separated on the command line).")
    quantize_4bit: bool = doc(True, "Train on an NF4 double-quantised base (QLoRA).")
    image_token: str = doc("<|placeholder1|>", "Reserved Phi-3 token repeated once per patch.")
    prompt: str = doc("Describe this image in one sentence.", "User instruction placed after the image tokens.")

    def __post_init__(self):
        check(self.image_size > 0 and self.patch_size > 0, "image_size and patch_size must be > 0")
        check(self.image_size % self.patch_size == 0,
              f"patch_size {self.patch_size} must divide image_size {self.image_size}")
        check(self.projector_hidden > 0, "projector_hidden must be > 0")
        check(self.projector in PROJECTORS, f"projector must be one of {', '.join(PROJECTORS)}")
        check(self.conv_channels > 0, "conv_channels must be > 0")
        check(self.projector != "conv" or self.patch_size % 4 == 0,
              "the conv projector quarters the image side first: patch_size must be a multiple of 4")
        check(self.lora_r > 0 and self.lora_alpha > 0, "lora_r and lora_alpha must be > 0")
        check(0.0 <= self.lora_dropout < 1.0, "lora_dropout must be in [0, 1)")
        check(len(self.lora_targets) > 0, "lora_targets must name at least one module")
        check(bool(self.base_model), "base_model must be set")
        check(bool(self.image_token) and bool(self.prompt.strip()), "image_token and prompt must not be empty")

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        return 3 * self.patch_size * self.patch_size


@dataclass(frozen=True)
class TrainConfig(JsonConfig):
    """How to train: defaults suit ~100 pairs (the original run: r=8, alpha=32, lr 2e-4, 3 epochs)."""

    epochs: float = doc(3.0, "Passes over the train split (ignored when max_steps > 0).")
    max_steps: int = doc(0, "Optimizer steps; 0 derives them from epochs.")
    batch_size: int = doc(4, "Pairs per micro-batch.")
    grad_accum: int = doc(1, "Micro-batches per optimizer step.")
    lr_lora: float = doc(2e-4, "Peak AdamW learning rate of the LoRA adapters.")
    lr_projector: float = doc(2e-2, "Peak AdamW learning rate of the projector (nanoVLM uses ~100x the LM's).")
    weight_decay: float = doc(0.0, "AdamW weight decay (projector and adapters).")
    warmup_ratio: float = doc(0.1, "Fraction of steps of linear warmup before cosine decay, in [0, 1).")
    min_lr_ratio: float = doc(0.1, "Cosine decay floor as a fraction of the peak learning rate.")
    max_grad_norm: float = doc(1.0, "Gradient clipping norm (0: off).")
    checkpoint_every: int = doc(50, "Save a resumable checkpoint every N optimizer steps (0: only at the end).")
    eval_every: int = doc(0, "Validation loss every N steps (0: at each checkpoint and at the end).")
    gradient_checkpointing: bool = doc(False, "Recompute activations in backward to save memory.")
    augment: bool = doc(False, "Random horizontal flips and 2-pixel shifts of training images.")
    color_jitter: float = doc(0.0, "With augment: random brightness, contrast and saturation factors in "
                              "[1-x, 1+x] per training image, in [0, 1) (0: off).")
    crop_scale: float = doc(1.0, "With augment: random crops of crop_scale..1 of the image area (aspect 3/4..4/3), "
                            "resized back, in (0, 1] (1: off).")
    early_stopping: bool = doc(False, "Keep the weights with the lowest validation loss (evaluated every eval_every "
                               "steps) rather than the last ones; needs a validation split.")
    patience: int = doc(0, "early_stopping: stop after this many evaluations without a new best (0: run every step).")
    dtype: str = doc("auto", "Compute dtype: auto (bf16 on GPU and AVX512-BF16 CPUs, else fp32), float32, bfloat16.")
    seed: int = doc(0, "Seeds initialisation, shuffling and dropout.")
    weak_mode: str = doc("off", "Use of the snapshot's weak split (unreviewed teacher drafts): off, warmup "
                         "(weak_steps steps on the drafts first) or mix (each step adds weak_weight x a draft batch).")
    weak_steps: int = doc(0, "warmup: optimizer steps on the weak drafts before the approved pairs.")
    weak_weight: float = doc(0.5, "mix: weight of a weak-draft micro-batch's loss, in (0, 1].")

    def __post_init__(self):
        check(self.epochs > 0 or self.max_steps > 0, "need epochs > 0 or max_steps > 0")
        check(self.max_steps >= 0, "max_steps must be >= 0")
        check(self.batch_size > 0 and self.grad_accum > 0, "batch_size and grad_accum must be > 0")
        check(self.lr_lora > 0 and self.lr_projector > 0, "learning rates must be > 0")
        check(0.0 <= self.warmup_ratio < 1.0, "warmup_ratio must be in [0, 1)")
        check(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio must be in [0, 1]")
        check(self.weight_decay >= 0 and self.max_grad_norm >= 0, "weight_decay and max_grad_norm must be >= 0")
        check(self.checkpoint_every >= 0 and self.eval_every >= 0, "intervals must be >= 0")
        check(self.weak_mode in WEAK_MODES, f"weak_mode must be one of {', '.join(WEAK_MODES)}")
        check(self.weak_mode != "warmup" or self.weak_steps > 0, "weak_mode warmup needs weak_steps > 0")
        check(self.weak_steps >= 0, "weak_steps must be >= 0")
        check(0.0 < self.weak_weight <= 1.0, "weak_weight must be in (0, 1]")
        check(0.0 <= self.color_jitter < 1.0, "color_jitter must be in [0, 1)")
        check(0.0 < self.crop_scale <= 1.0, "crop_scale must be in (0, 1]")
        check(self.patience >= 0, "patience must be >= 0")
        check(not self.early_stopping or self.eval_every > 0 or self.checkpoint_every > 0,
              "early_stopping needs validation during training: eval_every > 0 (or checkpoint_every > 0)")
        check(self.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
