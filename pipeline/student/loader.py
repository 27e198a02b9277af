"""The one place that loads Phi-3 (`from_pretrained`) and the one `load_student(folder)`.

Training gets an NF4 double-quantised base with fresh LoRA adapters; inference rebuilds a
trained student folder on one of the CPU paths in INFERENCE_PATHS (see bench/student.py).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from pipeline.student.config import StudentConfig
from pipeline.student.model import Student, build_projector

# "nf4":  the 4-bit base as trained, LoRA unmerged, decoded by the lean loop (decode.py), with
#         the native NF4 and attention kernels where they run: the fewest bytes read per token.
# "bf16": the NF4 base dequantised to bf16 with LoRA merged in (the same function, no adapter
#         overhead), but 16 bits per weight instead of 4. bench/student.py measures both (README).
INFERENCE_PATHS = ("nf4", "bf16")
DEFAULT_INFERENCE_PATH = "nf4"
STUDENT_FILES = ("student.json", "projector.safetensors", "adapter")


def load_tokenizer(base_model: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_model)
    if tok.pad_token_id is None:
        tok.pad_token = "<|endoftext|>"
    return tok


def load_base(base_model: str, *, quantize_4bit: bool, dtype: torch.dtype, device: str = "cpu"):
    """Phi-3 causal LM: NF4 + double quantisation (compute in `dtype`) or plain `dtype`."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # silence the 'kernels' notice
    kwargs = {"dtype": dtype, "device_map": {"": device}}
    if quantize_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    model = AutoModelForCausalLM.from_pretrained(base_model, **kwargs)
    if model.config.model_type != "phi3":
        raise ValueError(f"{base_model} is a {model.config.model_type!r} model, expected phi3")
    return model


def set_fused_cpu_kernel(model, enabled: bool) -> None:
    """Allow or forbid bitsandbytes' packed CPU inference kernel on every 4-bit layer.

    It repacks weights on the first eval forward and has no backward: a model that will be
    trained (and run validation in eval mode in between) must keep it off.
    """
    for m in model.modules():
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = enabled and m.support_avx512bf16_for_cpu


def attach_lora(model, cfg: StudentConfig):
    """Wrap with fresh LoRA adapters on Phi-3's projection modules; fail if none attach."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_targets), bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    _assert_adapters(model, cfg)
    return model


def _assert_adapters(model, cfg: StudentConfig) -> None:
    hit = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
    missing = set(cfg.lora_targets) - hit
    if missing:
        raise RuntimeError(f"LoRA adapters did not attach to {sorted(missing)}")


def build_student(cfg: StudentConfig, *, dtype: torch.dtype, device: str = "cpu") -> Student:
    """A fresh trainable student: quantised base, new LoRA, new projector (float32)."""
    base = load_base(cfg.base_model, quantize_4bit=cfg.quantize_4bit, dtype=dtype, device=device)
    set_fused_cpu_kernel(base, False)
    for p in base.parameters():
        p.requires_grad_(False)
    lm = attach_lora(base, cfg)
    projector = build_projector(cfg, base.config.hidden_size).to(device)
    return Student(lm, projector, load_tokenizer(cfg.base_model), cfg)


def load_student(
    folder: Path, *, path: str = DEFAULT_INFERENCE_PATH, device: str = "cpu",
    dtype: torch.dtype = torch.bfloat16, native_kernels: bool = True,
) -> Student:
    """Rebuild a trained student (or a checkpoint folder) for inference, in eval mode.

    `path` picks how the base runs (INFERENCE_PATHS); `dtype` is the compute dtype of the
    non-quantised parts (bf16: the bitsandbytes CPU kernel computes in bf16 anyway).
    `native_kernels` (Settings.native_kernels): on a CPU, decode with the kernels setup.sh built
    where this CPU runs them (kernels.py); False: bitsandbytes' and torch's ops.
    """
    from peft import PeftModel
    from safetensors.torch import load_file

    folder = Path(folder)
    for name in STUDENT_FILES:
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder} is not a student folder: missing {name}")
    if path not in INFERENCE_PATHS:
        raise ValueError(f"unknown inference path {path!r}; choose from {INFERENCE_PATHS}")
    cfg = StudentConfig.from_json(folder / "student.json")
    base = load_base(cfg.base_model, quantize_4bit=cfg.quantize_4bit, dtype=dtype, device=device)
    set_fused_cpu_kernel(base, True)
    if path == "bf16" and cfg.quantize_4bit:
        base = base.dequantize()  # the exact weights the adapters were trained against
    lm = PeftModel.from_pretrained(base, folder / "adapter")
    _assert_adapters(lm, cfg)
    if path == "bf16":
        lm = lm.merge_and_unload()
    if device == "cpu":  # float32 attention: faster than sdpa's flash kernel for decoding (nf4-sdpa row)
        from pipeline.student.attention import register
        from pipeline.student.kernels import attach_kernels, load_kernels

        base.set_attn_implementation(register())
        attach_kernels(base, load_kernels() if native_kernels else None)
    projector = build_projector(cfg, base.config.hidden_size)  # student.json without `projector`: mlp
    projector.load_state_dict(load_file(folder / "projector.safetensors"))
    student = Student(lm, projector.to(device), load_tokenizer(cfg.base_model), cfg)
    return student.eval().requires_grad_(False)


def save_student(student: Student, folder: Path) -> None:
    """Write adapters, projector and student.json (what load_student reads)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    student.lm.save_pretrained(folder / "adapter")
    state = {k: v.detach().float().cpu().contiguous() for k, v in student.projector.state_dict().items()}
    save_file(state, folder / "projector.safetensors")
    student.cfg.to_json(folder / "student.json")


def read_student_info(folder: Path) -> dict:
    """The JSON side files of a student folder (config, training config, snapshot, metrics)."""
    out = {}
    for name in ("student", "train", "snapshot", "metrics"):
        f = Path(folder) / f"{name}.json"
        if f.is_file():
            out[name] = json.loads(f.read_text())
    return out
