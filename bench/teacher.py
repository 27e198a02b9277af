"""Teacher throughput on this machine: a full-size random-weight SmolVLM-256M, four settings.

Run: `python bench/teacher.py [--out /tmp/smolvlm-random] [--new-tokens 30]`; prints one JSON line
per setting (images/s) plus one describing the machine. No weights are needed: the model is
built from the real config.json with random init, so speed (not text) is what it measures.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from PIL import Image as PILImage

from pipeline.generation import GenerationConfig
from pipeline.hardware import describe_cpu
from pipeline.teacher.model import Teacher, encode_inputs, load_teacher, processor_params_for
from pipeline.tiny import SMOLVLM_FILES, find_smolvlm_processor_dir

BUNDLED = Path(__file__).resolve().parent.parent / "pipeline" / "assets" / "cifar10"
# (name, dtype, batch size, one tile?, images measured)
SETTINGS = (
    ("defaults_fp32_bs1", "float32", 1, False, 2),
    ("one_tile_fp32_bs1", "float32", 1, True, 8),
    ("one_tile_fp32_bs8", "float32", 8, True, 16),
    ("one_tile_bf16_bs8_default", "bfloat16", 8, True, 16),
)


def build_random_smolvlm(out: Path) -> Path:
    """Save a random-weight SmolVLM-256M (real config, real processor files) to `out`."""
    import shutil

    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    if (out / "model.safetensors").is_file():
        return out
    src = find_smolvlm_processor_dir()
    out.mkdir(parents=True, exist_ok=True)
    for name in SMOLVLM_FILES:
        shutil.copyfile(src / name, out / name)
    config = Idefics3Config.from_dict(json.loads((src / "config.json").read_text()))
    torch.manual_seed(0)
    Idefics3ForConditionalGeneration(config).to(torch.bfloat16).save_pretrained(out)
    return out


def caption_timed(teacher: Teacher, images: list, *, batch: int, one_tile: bool, params) -> float:
    """Seconds to caption `images`, `batch` at a time (processor defaults unless one_tile)."""
    import torch

    proc = processor_params_for(images) if one_tile else {}
    t0 = time.perf_counter()
    for i in range(0, len(images), batch):
        inputs = encode_inputs(teacher, images[i:i + batch], "Can you describe this image?", processor_params=proc)
        with torch.inference_mode():
            teacher.model.generate(**inputs, **params.generate_kwargs(), min_new_tokens=params.max_new_tokens,
                                   pad_token_id=teacher.processor.tokenizer.pad_token_id)
    return time.perf_counter() - t0


def machine() -> dict:
    import torch

    return {**describe_cpu(), "torch": torch.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("/tmp/smolvlm-256m-random"))
    ap.add_argument("--new-tokens", type=int, default=30)
    ap.add_argument("--only", nargs="*", help="names of settings to run (default: all)")
    args = ap.parse_args()
    folder = build_random_smolvlm(args.out)
    params = GenerationConfig(max_new_tokens=args.new_tokens, repetition_penalty=1.0)
    labels = sorted(p.name for p in BUNDLED.iterdir() if p.is_dir())
    pool = [PILImage.open(BUNDLED / lab / f"{lab}_00{i:02d}.png").convert("RGB")
            for i in range(2) for lab in labels]
    print(json.dumps(machine()), flush=True)
    for name, dtype, batch, one_tile, n in SETTINGS:
        if args.only and name not in args.only:
            continue
        teacher = load_teacher(str(folder), device="cpu", dtype=dtype)
        caption_timed(teacher, pool[:1], batch=1, one_tile=True, params=params)  # warm-up
        secs = caption_timed(teacher, pool[:n], batch=batch, one_tile=one_tile, params=params)
        print(json.dumps({"setting": name, "dtype": dtype, "batch": batch, "one_tile": one_tile,
                          "images": n, "new_tokens": args.new_tokens, "seconds": round(secs, 2),
                          "images_per_s": round(n / secs, 3)}), flush=True)
        del teacher


if __name__ == "__main__":
    main()
