"""Full-size student on this CPU: QLoRA step time and peak RSS, and each inference path's time
to first token and decode speed as a fraction of its memory-bandwidth bound.

    python bench/student.py [--work /tmp/phi3-full] [--new-tokens 24]

Builds a random-weight Phi-3-mini (`Phi3Config()` defaults, bf16, saved once under --work)
with the real Phi-3 tokenizer. Each measurement runs in its own process so peak RSS is its own.
Prints one JSON object per phase and a summary table.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CAPTION = "a small brown bird perched on a thin branch in front of a pale green background."


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux -> ~GB


def bandwidth_gbs() -> dict:
    """STREAM-style copy (read + write bytes) and read-only (sum) bandwidth over 2 GiB."""
    import torch

    a = torch.ones(256 * 2**20, dtype=torch.float32)  # 1 GiB
    b = torch.empty_like(a)
    b.copy_(a), a.sum()
    t = time.perf_counter()
    for _ in range(5):
        b.copy_(a)
    copy = 5 * 2 * a.nbytes / (time.perf_counter() - t) / 1e9
    t = time.perf_counter()
    for _ in range(5):
        a.sum()
    read = 5 * a.nbytes / (time.perf_counter() - t) / 1e9
    return {"copy_gbs": round(copy, 1), "read_gbs": round(read, 1)}


def build_base(work: Path) -> Path:
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    from pipeline.student.tiny import TOKENIZER_FILES, find_phi3_tokenizer_dir

    base = work / "phi3-mini-random"
    if (base / "config.json").is_file():
        return base
    base.mkdir(parents=True, exist_ok=True)
    torch.set_default_dtype(torch.bfloat16)  # never materialise the 15 GB fp32 model
    model = Phi3ForCausalLM(Phi3Config())
    model.generation_config.eos_token_id = [32000, 32007]
    model.save_pretrained(base)
    for name in TOKENIZER_FILES:
        (base / name).write_bytes((find_phi3_tokenizer_dir() / name).read_bytes())
    return base


def phase_train(base: Path, work: Path, steps: int, dtype: str) -> dict:
    """One student build + QLoRA steps on batch 1 (~100 tokens, 64 of them image patches)."""
    import torch
    from PIL import Image

    from pipeline.student.config import StudentConfig
    from pipeline.student.loader import build_student, save_student
    from pipeline.student.model import build_example, collate

    t = time.perf_counter()
    student = build_student(StudentConfig(base_model=str(base)), dtype=getattr(torch, dtype))
    load_s = time.perf_counter() - t
    ex = build_example(student.tokenizer, student.layout, CAPTION)
    batch = collate([ex], pad_id=student.tokenizer.pad_token_id)
    batch["pixels"] = student.pixels([Image.new("RGB", (32, 32), (90, 140, 60))])
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    times = []
    for _ in range(steps + 1):  # the first step warms up allocators and kernels
        t = time.perf_counter()
        student(**batch).backward()
        opt.step(), opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    save_student(student, work / "student")
    return {"phase": "train", "dtype": dtype, "tokens": len(ex[0]), "load_s": round(load_s, 1),
            "step_s": round(sum(times[1:]) / steps, 2), "first_step_s": round(times[0], 2),
            "peak_rss_gb": round(peak_rss_gb(), 2)}


def weight_bytes_per_token(model) -> int:
    """Bytes read per decoded token: every parameter/buffer except the embedding table
    (one row is read), counting 4-bit weights at their packed size."""
    emb = model.get_input_embeddings().weight
    total = sum(p.numel() * p.element_size() for p in model.parameters() if p is not emb)
    total += sum(b.numel() * b.element_size() for b in model.buffers())
    for m in model.modules():  # bnb quantisation constants live outside parameters
        qs = getattr(getattr(m, "weight", None), "quant_state", None)
        if qs is not None:
            total += qs.absmax.numel() * qs.absmax.element_size()
    return total + emb.shape[1] * emb.element_size()


def phase_infer(work: Path, path: str, new_tokens: int, reps: int) -> dict:
    import torch
    from PIL import Image

    from pipeline.student.config import GenerationConfig
    from pipeline.student.generate import _hf_kwargs, _prefill
    from pipeline.student.loader import load_student

    t = time.perf_counter()
    student = load_student(work / "student", path=path)
    load_s = time.perf_counter() - t
    img = [Image.new("RGB", (32, 32), (90, 140, 60))]

    def run(n: int) -> float:
        kw = _hf_kwargs(student, GenerationConfig(max_new_tokens=n))
        kw["generation_config"].min_new_tokens = n  # random weights: never stop early
        t0 = time.perf_counter()
        with torch.no_grad():
            student.lm.generate(**_prefill(student, img), **kw)
        return time.perf_counter() - t0

    run(2)  # warm-up (and bitsandbytes' one-time repacking for its CPU kernel)
    ttft = min(run(1) for _ in range(reps))
    full = min(run(new_tokens) for _ in range(reps))
    tps = (new_tokens - 1) / max(1e-9, full - ttft)
    return {"phase": "infer", "path": path, "prompt_tokens": len(student.layout.prompt_ids),
            "load_s": round(load_s, 1), "ttft_s": round(ttft, 3), "decode_tok_s": round(tps, 2),
            "bytes_per_token_gb": round(weight_bytes_per_token(student.lm) / 1e9, 3),
            "peak_rss_gb": round(peak_rss_gb(), 2)}


def child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"phase": args[1], "error": proc.stderr[-1500:]}
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/phi3-full"))
    ap.add_argument("--phase", choices=("all", "build", "train", "infer"), default="all")
    ap.add_argument("--path", default="nf4", help="inference path for --phase infer")
    ap.add_argument("--paths", default="nf4,bf16", help="inference paths to compare")
    ap.add_argument("--steps", type=int, default=2, help="measured training steps")
    ap.add_argument("--dtype", default="float32", help="training compute dtype for --phase train")
    ap.add_argument("--train-dtypes", default="float32,bfloat16", help="training dtypes to compare")
    ap.add_argument("--skip", default="", help="phases to skip in a full run, e.g. train")
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    base = a.work / "phi3-mini-random"
    if a.phase == "build":
        build_base(a.work)
        print(json.dumps({"phase": "build", "base": str(base), "peak_rss_gb": round(peak_rss_gb(), 2)}))
        return
    if a.phase == "train":
        print(json.dumps(phase_train(base, a.work, a.steps, a.dtype)))
        return
    if a.phase == "infer":
        print(json.dumps(phase_infer(a.work, a.path, a.new_tokens, a.reps)))
        return
    bw = bandwidth_gbs()
    print(json.dumps({"phase": "bandwidth", **bw}), flush=True)
    print(json.dumps(child(["--phase", "build", "--work", str(a.work)])), flush=True)
    for dtype in a.train_dtypes.split(",") if "train" not in a.skip else []:
        print(json.dumps(child(["--phase", "train", "--work", str(a.work), "--steps", str(a.steps),
                                "--dtype", dtype])), flush=True)
    for path in a.paths.split(",") if "infer" not in a.skip else []:
        r = child(["--phase", "infer", "--path", path, "--work", str(a.work),
                   "--new-tokens", str(a.new_tokens), "--reps", str(a.reps)])
        if "error" not in r:
            bound = max(bw["copy_gbs"], bw["read_gbs"]) / r["bytes_per_token_gb"]  # the higher (stricter) bound
            r["bound_tok_s"] = round(bound, 2)
            r["fraction_of_bound"] = round(r["decode_tok_s"] / bound, 3)
        print(json.dumps(r), flush=True)
    print(json.dumps({"phase": "bandwidth-after", **bandwidth_gbs()}), flush=True)

if __name__ == "__main__":
    main()
