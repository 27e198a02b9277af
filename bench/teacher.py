"""Teacher throughput on this CPU: the naive path against the default captioning path, on a
full-size random-weight SmolVLM-256M (no weights needed: the real config.json, random init).

Run: `python bench/teacher.py [--images 16] [--new-tokens 30] [--no-profile] [--extra bs16_default ...]`.
Prints one JSON line describing the machine (CPU path, load), one per row (images/s), and last
`ratio: N (target ...)`: default row over naive row.

- naive: processor defaults (a 32-px image becomes 16 tiles + a global view, 1,088 image tokens),
  fp32, one image at a time.
- default: exactly what `python -m pipeline caption` picks on this machine
  (`pipeline.teacher.drafting.job_plan`: bf16 only on CPUs with native bf16, else fp32; the
  configured batch size; one 512-px tile for small images), decoded by the same `generate_ids`.
- extra rows (`--extra NAME ...`, see EXTRA): candidate settings, each with the share of its
  captions identical (token for token) to the default row's on the same images.

Both rows decode the teacher's settings (TEACHER_GENERATION) for exactly --new-tokens tokens, so
a random model's early end-of-sequence cannot flatter a row.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from PIL import Image as PILImage

from pipeline import hardware
from pipeline.settings import Settings
from pipeline.teacher.drafting import job_plan
from pipeline.teacher.model import (
    DEFAULT_PROMPT,
    TEACHER_GENERATION,
    CaptionPlan,
    Teacher,
    encode_inputs,
    generate_ids,
    load_teacher,
    prepare_long_run,
)
from pipeline.tiny import SMOLVLM_FILES, find_smolvlm_processor_dir

BUNDLED = Path(__file__).resolve().parent.parent / "pipeline" / "assets" / "cifar10"
TARGET = 50.0
EXTRA = {  # name -> (dtype or None for the default's, batch size or None for the default's)
    "bs8_default": (None, 8),
    "bs16_default": (None, 16),
    "bs32_default": (None, 32),
    "fp32_default": ("float32", None),
    "bf16_default": ("bfloat16", None),
}


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


def default_plan() -> CaptionPlan:
    """The default row's plan: the drafting job's own chooser with no options, on the CPU."""
    return job_plan(Settings(), device="cpu")


def naive_plan() -> CaptionPlan:
    return CaptionPlan(device="cpu", dtype="float32", batch_size=1)


def caption_timed(teacher: Teacher, images: list, *, batch: int, one_tile: bool,
                  params) -> tuple[float, float, list]:
    """Wall and CPU seconds (this process) to caption `images`, `batch` at a time (processor
    defaults unless one_tile), and the new token ids of each image. CPU seconds on one thread
    are the steadier figure on a shared machine."""
    ids = []
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(0, len(images), batch):
        chunk = images[i:i + batch]
        proc = CaptionPlan.processor_params(chunk) if one_tile else {}
        inputs = encode_inputs(teacher, chunk, DEFAULT_PROMPT, processor_params=proc)
        new = generate_ids(teacher, inputs, params, min_new_tokens=params.max_new_tokens)
        ids.extend(row.tolist() for row in new)
    return time.perf_counter() - t0, time.process_time() - c0, ids


class StageClock:
    """Wall time per stage of `generate()` (forward hooks): vision tower, connector, the text
    model's calls on more than one position (prefill) and on one (decode steps), the LM head."""

    def __init__(self, teacher: Teacher):
        inner = teacher.model.model
        self.seconds: dict[str, float] = {}
        self._t0: dict[str, float] = {}
        self._handles = []
        for name, module in (("vision_tower", inner.vision_model), ("connector", inner.connector),
                             ("text", inner.text_model), ("lm_head", teacher.model.lm_head)):
            self._handles.append(module.register_forward_pre_hook(self._start(name), with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._stop(name), with_kwargs=True))

    def _start(self, name: str):
        def hook(module, args, kwargs):
            self._t0[name] = time.perf_counter()
            if name == "text":
                x = kwargs.get("inputs_embeds")
                x = x if x is not None else kwargs.get("input_ids", args[0] if args else None)
                self._t0["text_kind"] = "text_prefill" if x.shape[1] > 1 else "text_decode_steps"
        return hook

    def _stop(self, name: str):
        def hook(module, args, kwargs, out):
            key = self._t0["text_kind"] if name == "text" else name
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - self._t0[name]
        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def profile_default(teacher: Teacher, images: list, *, batch: int, params) -> dict:
    """Shares of the default row's time per stage (one more timed pass with hooks)."""
    clock = StageClock(teacher)
    try:
        t0 = time.perf_counter()
        for i in range(0, len(images), batch):
            chunk = images[i:i + batch]
            e0 = time.perf_counter()
            inputs = encode_inputs(teacher, chunk, DEFAULT_PROMPT,
                                   processor_params=CaptionPlan.processor_params(chunk))
            clock.seconds["processor"] = clock.seconds.get("processor", 0.0) + time.perf_counter() - e0
            generate_ids(teacher, inputs, params, min_new_tokens=params.max_new_tokens)
        total = time.perf_counter() - t0
    finally:
        clock.close()
    shares = {k: round(v / total, 3) for k, v in sorted(clock.seconds.items())}
    shares["other"] = round(1 - sum(clock.seconds.values()) / total, 3)
    n_image = int((inputs["input_ids"] == teacher.model.config.image_token_id).sum(dim=1)[0])
    return {"profile": "default", "seconds": round(total, 2), "shares": shares,
            "image_tokens_per_image": n_image, "prompt_tokens": int(inputs["input_ids"].shape[1])}


def machine() -> dict:
    import torch

    return {**hardware.describe_cpu(), "torch": torch.__version__}


def run_row(name: str, plan: CaptionPlan, images: list, *, one_tile: bool, params, folder: Path,
            reference: list | None = None, naive: bool = False) -> tuple[dict, list, Teacher]:
    teacher = load_teacher(str(folder), device=plan.device, dtype=plan.dtype)
    if not naive:  # as the drafting job does (`pipeline caption`); the naive row runs first, without it
        prepare_long_run(teacher)
    caption_timed(teacher, images[:1], batch=1, one_tile=True, params=replace(params, max_new_tokens=2))  # warm-up
    secs, cpu_secs, ids = caption_timed(teacher, images, batch=plan.batch_size, one_tile=one_tile, params=params)
    row = {"setting": name, "dtype": plan.dtype, "batch": plan.batch_size, "one_tile": one_tile,
           "images": len(images), "new_tokens": params.max_new_tokens, "seconds": round(secs, 2),
           "cpu_seconds": round(cpu_secs, 2), "images_per_s": round(len(images) / secs, 4)}
    if reference is not None:
        same = sum(a == b for a, b in zip(ids, reference))
        row["identical_to_default"] = round(same / len(ids), 3)
    return row, ids, teacher


def ratio_line(ratio: float) -> str:
    """The last line: the figure beside its target, and which CPU path produced it."""
    path = hardware.cpu().path
    if hardware.cpu().has_bf16:
        return f"ratio: {ratio:.1f} (target ≥ {TARGET:g} on CPUs with native bf16; this CPU: {path})"
    return (f"ratio: {ratio:.1f} (target ≥ {TARGET:g} on CPUs with native bf16; this CPU: {path}, "
            "no native bf16: as far as the hardware allows, see the profile)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/smolvlm-256m-random"))
    ap.add_argument("--new-tokens", type=int, default=30)
    ap.add_argument("--images", type=int, default=16, help="images for the default row (and extras)")
    ap.add_argument("--naive-images", type=int, default=2,
                    help="images for the naive row (each costs 20-50 default ones)")
    ap.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                    help="print the default row's time shares per stage (what bounds the ratio)")
    ap.add_argument("--extra", nargs="*", default=[], choices=sorted(EXTRA), help="candidate rows")
    args = ap.parse_args()
    folder = build_random_smolvlm(args.out)
    params = replace(TEACHER_GENERATION, max_new_tokens=args.new_tokens)
    labels = sorted(p.name for p in BUNDLED.iterdir() if p.is_dir())
    pool = [PILImage.open(BUNDLED / lab / f"{lab}_{i:04d}.png").convert("RGB")
            for i in range(max(1, -(-max(args.images, args.naive_images) // len(labels)))) for lab in labels]
    print(json.dumps(machine()), flush=True)
    naive, _, teacher = run_row("naive_fp32_defaults_bs1", naive_plan(), pool[:args.naive_images], one_tile=False,
                                params=params, folder=folder, naive=True)
    del teacher
    print(json.dumps(naive), flush=True)
    plan = default_plan()
    pool = pool[:args.images]
    default, ref, teacher = run_row("default", plan, pool, one_tile=True, params=params, folder=folder)
    print(json.dumps(default), flush=True)
    ratio = default["images_per_s"] / naive["images_per_s"]
    if args.profile:
        prof = profile_default(teacher, pool, batch=plan.batch_size, params=params)
        # the ratio were every stage but the vision tower free: what the vision tower alone allows
        prof["ratio_bound_by_vision_tower"] = round(ratio / max(prof["shares"]["vision_tower"], 1e-9), 1)
        print(json.dumps(prof), flush=True)
    del teacher
    for name in args.extra:
        dtype, batch = EXTRA[name]
        alt = CaptionPlan(device=plan.device, dtype=dtype or plan.dtype, batch_size=batch or plan.batch_size)
        row, _, teacher = run_row(name, alt, pool, one_tile=True, params=params, folder=folder, reference=ref)
        del teacher
        print(json.dumps(row), flush=True)
    print(json.dumps({"load_avg_after": [round(x, 2) for x in __import__("os").getloadavg()]}), flush=True)
    print(ratio_line(ratio), flush=True)


if __name__ == "__main__":
    main()
