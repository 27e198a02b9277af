"""The one place that loads Phi-3 (`from_pretrained`) and the one `load_student(folder)`.

Training gets an NF4 double-quantised base with fresh LoRA adapters; inference rebuilds a
trained student folder on one of the CPU paths in INFERENCE_PATHS (see bench/student.py).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from pipeline.hardware import cpu, limit_cpu
from pipeline.student import fp32_prefill
from pipeline.student.config import StudentConfig
from pipeline.student.inference_path import (
    DENSE_PATHS,
    InferencePath,
    ModelSizes,
    PathChoice,
    choose_path,
    choose_prefill,
    free_memory,
    probe_dense_speed,
)
from pipeline.student.model import Student, build_projector

# How the base runs for inference (inference_path.py): "auto" chooses from the CPU and memory;
# "nf4" (the 4-bit base as trained), "bf16" and "fp32" (dequantised, LoRA merged) force one.
INFERENCE_PATHS = ("auto", *(p.value for p in InferencePath))
DEFAULT_INFERENCE_PATH = "auto"
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
    if quantize_4bit and device == "cpu":
        _own_memory(model)
    return model


def _own_memory(model) -> None:
    """Copy the parameters that are still views of the checkpoint's memory map (embeddings, LM
    head, norms) into memory of their own, so the map closes: otherwise every page of the bf16
    checkpoint that quantisation read stays resident in this process (7.6 GB for Phi-3-mini)."""
    for p in model.parameters():  # each parameter once, so tied weights stay one parameter
        if not hasattr(p, "quant_state"):
            p.data = p.data.clone()


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


def pick_path(base_model: str, *, path: str = DEFAULT_INFERENCE_PATH, device: str = "cpu",
              cpu_path: str | None = None) -> PathChoice:
    """The inference path for a student on `base_model` here: `path` if forced, else choose_path
    from this CPU (limited to `cpu_path`, Settings.cpu_path), free memory and the model's size
    (and, where a dense path is in question, one measured matmul per dtype)."""
    from transformers import AutoConfig

    if path not in INFERENCE_PATHS:
        raise ValueError(f"unknown inference path {path!r}; choose from {INFERENCE_PATHS}")
    caps = limit_cpu(cpu(), cpu_path)
    if path != "auto":
        choice = PathChoice(InferencePath(path), f"{path} asked for (path={path!r})")
    else:
        sizes = ModelSizes.of_config(AutoConfig.from_pretrained(base_model))
        speeds = probe_dense_speed() if device == "cpu" and not caps.has_bf16 else None
        choice = choose_path(caps, sizes=sizes, free=free_memory(), device=device, speeds=speeds)
    wide = choice.path == InferencePath.bf16 and device == "cpu" and not caps.has_bf16
    return choose_prefill(choice, caps, device=device, seconds=fp32_prefill.probe() if wide else None)


def _quantised(module):
    """The bitsandbytes 4-bit layer a module is or wraps (a peft LoRA layer), else None."""
    layer = module.get_base_layer() if hasattr(module, "lora_A") else module
    return layer if hasattr(getattr(layer, "weight", None), "quant_state") else None


def dequantise_merged(lm, dtype: torch.dtype):
    """The peft model's base with every 4-bit projection replaced, one at a time, by a dense
    `nn.Linear` in `dtype` holding dequant(W) + its LoRA delta (peft's own merge arithmetic,
    in float32, rounded once), and the rest cast to `dtype`. One layer's NF4 copy is freed as
    its dense one is made, so peak memory stays near the dense model's size (unlike
    `dequantize()` of the whole base followed by `merge_and_unload()`)."""
    from peft.utils.integrations import dequantize_bnb_weight

    base = lm.get_base_model()
    # names, not modules: a list of modules would keep every 4-bit copy alive to the end
    names = [n for n, m in base.named_modules() if not n.endswith(".base_layer") and _quantised(m) is not None]
    for name in names:
        module = base.get_submodule(name)
        layer = _quantised(module)
        qs = layer.weight.quant_state
        if getattr(qs, "packing_format_for_cpu", False):
            raise RuntimeError(f"{name} is already repacked for bitsandbytes' CPU kernel")
        w = dequantize_bnb_weight(layer.weight, state=qs).float()
        layer.weight = None  # bitsandbytes' Params4bit points back at its layer: break the cycle, free it now
        if layer is not module:
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    w += module.get_delta_weight(adapter).float()
        dense = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
        dense.weight = torch.nn.Parameter(w.to(dtype), requires_grad=False)  # no init, no copy in fp32
        if layer.bias is not None:
            dense.bias = torch.nn.Parameter(layer.bias.data.to(dtype), requires_grad=False)
        parent, _, attr = name.rpartition(".")
        setattr(base.get_submodule(parent), attr, dense)
        del w, layer, module
    if getattr(base, "hf_quantizer", None) is not None:  # no 4-bit layer left: a plain model again
        base.hf_quantizer.remove_quantization_config(base)
    return base.to(dtype)


def load_student(
    folder: Path, *, path: str = DEFAULT_INFERENCE_PATH, device: str = "cpu",
    dtype: torch.dtype = torch.bfloat16, native_kernels: bool = True, cpu_path: str | None = None,
) -> Student:
    """Rebuild a trained student (or a checkpoint folder) for inference, in eval mode.

    `path` picks how the base runs (INFERENCE_PATHS; "auto": pick_path, for this CPU limited to
    `cpu_path`); the choice and its reason are `student.inference`. `dtype` is the compute dtype
    of the NF4 path's non-quantised parts (bf16: the bitsandbytes CPU kernel computes in bf16
    anyway). `native_kernels` (Settings.native_kernels): on a CPU, decode with the kernels
    setup.sh built where this CPU (as limited) runs them (kernels.py); False: torch's ops.
    """
    from peft import PeftModel
    from safetensors.torch import load_file

    folder = Path(folder)
    for name in STUDENT_FILES:
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder} is not a student folder: missing {name}")
    cfg = StudentConfig.from_json(folder / "student.json")
    choice = pick_path(cfg.base_model, path=path, device=device, cpu_path=cpu_path)
    base = load_base(cfg.base_model, quantize_4bit=cfg.quantize_4bit, dtype=dtype, device=device)
    set_fused_cpu_kernel(base, True)
    lm = PeftModel.from_pretrained(base, folder / "adapter")
    _assert_adapters(lm, cfg)
    if choice.path in DENSE_PATHS:  # the exact weights the adapters were trained against, merged
        dense = torch.bfloat16 if choice.path == InferencePath.bf16 else torch.float32
        lm = base = dequantise_merged(lm, dense) if cfg.quantize_4bit else lm.merge_and_unload().to(dense)
    if device == "cpu":  # float32 attention: faster than sdpa's flash kernel for decoding (nf4-sdpa row)
        from pipeline.student.attention import register
        from pipeline.student.kernels import attach_kernels, cpu_reason, load_kernels

        native = native_kernels and cpu_reason(limit_cpu(cpu(), cpu_path)) is None
        base.set_attn_implementation(register())
        attach_kernels(base, load_kernels() if native else None)
    projector = build_projector(cfg, base.config.hidden_size)  # student.json without `projector`: mlp
    projector.load_state_dict(load_file(folder / "projector.safetensors"))
    student = Student(lm, projector.to(device), load_tokenizer(cfg.base_model), cfg)
    student.inference = choice
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
