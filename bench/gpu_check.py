"""The student's GPU path, end to end, in one run: the memorise flow of the tests on a device, then
a full-size random Phi-3-mini's QLoRA step time, peak GPU memory and decode speed.

    python bench/gpu_check.py [--device cuda] [--work /tmp/phi3-gpu] [--skip-full]

Phases: env (versions, GPU, a bitsandbytes 4-bit check), memorise (tests/conftest_student.py's
tiny base, 20-image snapshot and MEMORISE run through the real train(), then load_student and
greedy decoding on the device), resume (a stopped and resumed run against an uninterrupted one,
LoRA dropout on), full-build, full-train and full-infer (as bench/student.py, on the device).
Prints one JSON object per phase, also appended to $OUT/gpu_check.jsonl when OUT is set; a phase
that raises prints its traceback tail and the script goes on.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import shutil
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]



def emit(row: dict) -> None:
    line = json.dumps(row, default=str)
    print(line, flush=True)
    if os.environ.get("OUT"):
        with open(Path(os.environ["OUT"]) / "gpu_check.jsonl", "a") as f:
            f.write(line + "\n")


def run_phase(name: str, fn, *args) -> dict:
    """Run one phase; any exception becomes {"phase", "ok": false, "error": traceback tail}."""
    t = time.perf_counter()
    try:
        row = {"phase": name, "ok": True, **fn(*args)}
    except Exception:
        row = {"phase": name, "ok": False, "error": traceback.format_exc()[-2500:]}
    row["wall_s"] = round(time.perf_counter() - t, 1)
    emit(row)
    return row


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def gpu_mem(device: str) -> dict:
    import torch

    if not device.startswith("cuda"):
        return {}
    return {"max_memory_allocated_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
            "max_memory_reserved_gb": round(torch.cuda.max_memory_reserved() / 1e9, 2)}


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def bench_student():
    """bench/student.py as a module (CAPTION, weight_bytes_per_token), without editing it."""
    spec = importlib.util.spec_from_file_location("bench_student", REPO / "bench" / "student.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _version(name: str) -> str | None:
    try:
        mod = __import__(name)
    except Exception as e:
        return f"import failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return getattr(mod, "__version__", "?")


def phase_env(device: str) -> dict:
    import torch

    row = {"python": platform.python_version(), "torch": torch.__version__,
           "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
           "device": device}
    for name in ("transformers", "peft", "bitsandbytes", "accelerate", "tokenizers", "huggingface_hub",
                 "safetensors", "pyarrow", "pytest"):
        row[name] = _version(name)
    import transformers

    row["transformers_from"] = str(Path(transformers.__file__).parent.parent)
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        row.update(gpu=torch.cuda.get_device_name(0), capability=f"{p.major}.{p.minor}",
                   gpu_memory_gb=round(p.total_memory / 1e9, 1),
                   bf16_supported=torch.cuda.is_bf16_supported())
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as bf

        lib = getattr(bnb.cextension, "lib", None)
        dll = lib.__dict__.get("_lib") if lib is not None else None
        row["bnb_library"] = Path(dll._name).name if dll is not None else type(lib).__name__
        # an NF4 round trip and a 4-bit matmul on the device, against the dense bf16 product
        torch.manual_seed(0)
        w = torch.randn(512, 256, dtype=torch.bfloat16, device=device)
        q, qs = bf.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
        deq = bf.dequantize_4bit(q, qs)
        row["bnb_nf4_roundtrip_rel_err"] = round(float((deq - w).float().norm() / w.float().norm()), 4)
        for m in (1, 3):  # one row: the inference gemv kernel; three: dequantise + matmul
            x = torch.randn(m, 256, dtype=torch.bfloat16, device=device)
            y, ref = bnb.matmul_4bit(x, q, quant_state=qs), x @ deq.t()
            row[f"bnb_matmul_4bit_rel_err_m{m}"] = round(float((y - ref).float().norm() / ref.float().norm()), 4)
    except Exception as e:
        row["bnb_check_error"] = traceback.format_exc()[-1200:] if str(e) else repr(e)
    return row


SNAPSHOT: Path | None = None  # --snapshot: an existing copy (write_snapshot needs pyarrow)


def prepare_snapshot(work: Path) -> tuple[Path, str]:
    """The 20-image snapshot of the tests, written by the real write_snapshot (or --snapshot)."""
    from pipeline.data.snapshot import write_snapshot
    from tests.conftest_student import cifar20_records

    if SNAPSHOT is not None:
        return SNAPSHOT, f"given: {SNAPSHOT}"
    root = work / "snapshots"
    shutil.rmtree(root, ignore_errors=True)
    return write_snapshot(cifar20_records(), root, snapshot_id="cifar20", val_fraction=0.0), "written"


def phase_resume(device: str, work: Path) -> dict:
    """Acceptance 3 on the device, in process: a run stopped midway and resumed from its
    checkpoint against an uninterrupted one, with LoRA dropout on (it draws from the device's
    random state, which the checkpoint must carry)."""
    from pipeline.student.config import StudentConfig, TrainConfig
    from pipeline.student.train import train
    from pipeline.tiny import build_tiny_phi3, find_phi3_tokenizer_dir
    from tests.conftest_student import TINY_STUDENT

    work = work / "resume"
    shutil.rmtree(work, ignore_errors=True)
    base = build_tiny_phi3(work / "tiny-phi3", tokenizer_dir=find_phi3_tokenizer_dir(), init_std=0.1)
    snap, _ = prepare_snapshot(work)
    sc = StudentConfig(base_model=str(base), **{**TINY_STUDENT, "lora_dropout": 0.1})
    tc = TrainConfig(max_steps=12, batch_size=4, checkpoint_every=3, seed=1)
    ref = train(snapshot_dir=snap, out_dir=work / "ref", student_config=sc, train_config=tc,
                device=device, show_progress=False)
    seen: list[int] = []
    first = train(snapshot_dir=snap, out_dir=work / "cut", student_config=sc, train_config=tc, device=device,
                  show_progress=False, on_progress=lambda step, total, m: seen.append(step),
                  should_stop=lambda: len(seen) >= 6)
    second = train(snapshot_dir=snap, out_dir=work / "cut", student_config=sc, train_config=tc,
                   device=device, show_progress=False)

    def curve(d: Path) -> list[float]:
        return [json.loads(x)["train_loss"] for x in (d / "loss_curve.jsonl").read_text().splitlines()]

    a, b = curve(work / "ref"), curve(work / "cut")
    diffs = [abs(x - y) for x, y in zip(a, b)]
    return {"first_call": first, "steps": [ref["optimizer_steps"], second["optimizer_steps"]],
            "sessions": len(second["sessions"]), "losses_ref": [round(x, 4) for x in a],
            "losses_resumed": [round(x, 4) for x in b], "max_abs_loss_diff": max(diffs) if diffs else None,
            "same_curve": len(a) == len(b) == tc.max_steps and max(diffs) <= 1e-3 * max(1.0, max(a))}


def phase_memorise(device: str, work: Path) -> dict:
    """Acceptance-1 on the device: conftest_student's tiny base + MEMORISE through train(),
    then load_student and greedy captions (lean loop and Hugging Face generate())."""
    import torch

    from pipeline.student.config import GenerationConfig, StudentConfig
    from pipeline.student.generate import generate_captions, generate_ids, hf_generate
    from pipeline.student.loader import load_student
    from pipeline.student.model import blank_image
    from pipeline.student.train import train
    from pipeline.tiny import build_tiny_phi3, find_phi3_tokenizer_dir
    from tests.conftest_student import MEMORISE, TINY_STUDENT, cifar20_records

    work = work / "memorise"
    shutil.rmtree(work, ignore_errors=True)
    tok_dir = find_phi3_tokenizer_dir()
    base = build_tiny_phi3(work / "tiny-phi3", tokenizer_dir=tok_dir, init_std=0.1)
    snap, snap_source = prepare_snapshot(work)
    out = work / "students" / "memorised"
    reset_peak(device)
    t = time.perf_counter()
    metrics = train(snapshot_dir=snap, out_dir=out,
                    student_config=StudentConfig(base_model=str(base), **TINY_STUDENT),
                    train_config=MEMORISE, device=device, show_progress=False)
    sync(device)
    train_s = time.perf_counter() - t
    curve = [json.loads(x) for x in (out / "loss_curve.jsonl").read_text().splitlines()]
    row = {"tokenizer_dir": str(tok_dir), "snapshot": snap_source, "train_s": round(train_s, 1),
           "steps": metrics["optimizer_steps"], "train_device": metrics["device"],
           "train_dtype": metrics["dtype"], "first_loss": round(curve[0]["train_loss"], 4),
           "final_loss": round(curve[-1]["train_loss"], 4),
           "mean_step_s": round(sum(r["seconds"] for r in curve[1:]) / max(1, len(curve) - 1), 4),
           **{f"train_{k}": v for k, v in gpu_mem(device).items()}}
    free(device)

    recs = cifar20_records()
    images = [r.image() for r in recs]
    t = time.perf_counter()
    student = load_student(out, device=device)
    row["load_s"] = round(time.perf_counter() - t, 1)
    row["lm_device"] = str(next(student.lm.parameters()).device)
    row["projector_device"] = str(next(student.projector.parameters()).device)
    t = time.perf_counter()
    caps = generate_captions(student, images)
    sync(device)
    row["generate_s"] = round(time.perf_counter() - t, 2)
    row["exact_real"] = sum(c == r.text for c, r in zip(caps, recs))
    blank = generate_captions(student, [blank_image() for _ in recs])
    row["exact_blank"] = sum(c == r.text for c, r in zip(blank, recs))
    order = list(reversed(range(len(recs))))
    shuffled = generate_captions(student, [images[j] for j in order])
    row["exact_shuffled"] = sum(s == recs[j].text for s, j in zip(shuffled, order))
    gc_ = GenerationConfig()
    lean = generate_ids(student, images, config=gc_).cpu()
    hf = hf_generate(student, images, config=gc_).cpu()
    row["lean_equals_hf"] = lean.shape == hf.shape and bool(torch.equal(lean, hf))
    if not row["lean_equals_hf"]:
        n = min(lean.shape[1], hf.shape[1])
        row["lean_hf_shapes"] = [list(lean.shape), list(hf.shape)]
        row["lean_hf_rows_differing"] = int((lean[:, :n] != hf[:, :n]).any(dim=1).sum())
    hf_caps = [t.strip() for t in student.tokenizer.batch_decode(hf, skip_special_tokens=True)]
    row["exact_real_hf"] = sum(c == r.text for c, r in zip(hf_caps, recs))
    row["acceptance_pass"] = row["exact_real"] >= 18 and row["exact_blank"] <= 1 and row["exact_shuffled"] >= 18
    row["mismatches"] = [[c, r.text] for c, r in zip(caps, recs) if c != r.text][:5]
    del student
    free(device)
    try:  # the other inference path: NF4 dequantised to bf16 on the device, LoRA merged
        merged = load_student(out, path="bf16", device=device)
        row["exact_real_bf16_path"] = sum(c == r.text for c, r in zip(generate_captions(merged, images), recs))
        del merged
    except Exception:
        row["bf16_path_error"] = traceback.format_exc()[-1200:]
    free(device)
    row.update(gpu_mem(device))
    return row


def tiny_config():
    """A Phi-3 of tests' size, for dry runs of the full phases on a CPU (--full-config tiny)."""
    from transformers import Phi3Config

    return Phi3Config(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                      intermediate_size=256, vocab_size=32064, max_position_embeddings=4096,
                      pad_token_id=32000, bos_token_id=1, eos_token_id=32000)


def phase_full_build(device: str, work: Path, which: str) -> dict:
    """Random-weight Phi-3-mini (Phi3Config() defaults) built on the device in bf16 and saved as
    bench/student.py's build_base saves it (with the Phi-3 tokenizer files)."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    from pipeline.tiny import PHI3_TOKENIZER_FILES, find_phi3_tokenizer_dir

    base = work / f"phi3-mini-random-{which}"
    if (base / "config.json").is_file() and all((base / f).is_file() for f in PHI3_TOKENIZER_FILES):
        return {"base": str(base), "reused": True}
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    config = Phi3Config() if which == "phi3-mini" else tiny_config()
    t = time.perf_counter()
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # nothing fp32 (15 GB) and nothing on the host
    try:
        with torch.device(device):
            model = Phi3ForCausalLM(config)
    finally:
        torch.set_default_dtype(prev)
    model.generation_config.eos_token_id = [32000, 32007]
    sync(device)
    init_s = time.perf_counter() - t
    n_params = sum(p.numel() for p in model.parameters())
    t = time.perf_counter()
    model.save_pretrained(base)
    save_s = time.perf_counter() - t
    for name in PHI3_TOKENIZER_FILES:
        shutil.copyfile(find_phi3_tokenizer_dir() / name, base / name)
    del model
    free(device)
    size = sum(f.stat().st_size for f in base.iterdir() if f.is_file())
    return {"base": str(base), "config": which, "params_b": round(n_params / 1e9, 3),
            "init_s": round(init_s, 1), "save_s": round(save_s, 1), "size_gb": round(size / 1e9, 2)}


def phase_full_train(device: str, work: Path, which: str, steps: int) -> dict:
    """bench/student.py phase_train on the device: build_student + QLoRA steps, batch 1 (~100
    tokens, 64 of them image patches), the warm-up step excluded."""
    import torch
    from PIL import Image

    from pipeline.student.config import StudentConfig, TrainConfig
    from pipeline.student.loader import build_student, save_student
    from pipeline.student.model import build_example, collate
    from pipeline.student.train import compute_dtype

    bs = bench_student()
    base = work / f"phi3-mini-random-{which}"
    dtype = compute_dtype(TrainConfig(), device)
    reset_peak(device)
    t = time.perf_counter()
    student = build_student(StudentConfig(base_model=str(base)), dtype=dtype, device=device)
    sync(device)
    load_s = time.perf_counter() - t
    load_mem = gpu_mem(device)
    student.train()  # as train() does (LoRA dropout on)
    ex = build_example(student.tokenizer, student.layout, bs.CAPTION)
    batch = collate([ex], pad_id=student.tokenizer.pad_token_id)
    batch["pixels"] = student.pixels([Image.new("RGB", (32, 32), (90, 140, 60))])
    batch = {k: v.to(device) for k, v in batch.items()}
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    times, losses = [], []
    for _ in range(steps + 1):  # the first step warms up allocators and kernels
        sync(device)
        t = time.perf_counter()
        loss = student(**batch)
        loss.backward()
        opt.step(), opt.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - t)
        losses.append(round(loss.item(), 4))
    mem = gpu_mem(device)
    save_student(student, work / f"student-{which}")
    del student, opt, params
    free(device)
    return {"config": which, "dtype": str(dtype).replace("torch.", ""), "tokens": len(ex[0]),
            "load_s": round(load_s, 1), "step_s": round(sum(times[1:]) / steps, 4),
            "step_s_runs": [round(x, 4) for x in times[1:]], "first_step_s": round(times[0], 3),
            "losses": losses, **{f"after_load_{k}": v for k, v in load_mem.items()}, **mem}


def gpu_bandwidth_gbs(device: str, reps: int = 5) -> float | None:
    """Best-of-`reps` device copy bandwidth (read + write bytes) over 1 GiB."""
    import torch

    if not device.startswith("cuda"):
        return None
    a = torch.ones(256 * 2**20, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    best = 0.0
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        b.copy_(a)
        torch.cuda.synchronize()
        best = max(best, 2 * a.nbytes / (time.perf_counter() - t) / 1e9)
    del a, b
    free(device)
    return round(best, 1)


def phase_full_infer(device: str, work: Path, which: str, new_tokens: int, reps: int) -> dict:
    """bench/student.py phase_infer on the device: load_student (nf4 path), then time to first
    token and decode tokens/s of the lean loop and of Hugging Face generate(), 32 new tokens,
    stop_at_eos=False, synchronising at every token (what a streaming reader does)."""
    import torch
    from PIL import Image

    from pipeline.student.config import GenerationConfig
    from pipeline.student.generate import generate_ids, hf_generate
    from pipeline.student.loader import load_student

    bs = bench_student()
    reset_peak(device)
    t = time.perf_counter()
    student = load_student(work / f"student-{which}", device=device)
    sync(device)
    row = {"config": which, "path": "nf4", "load_s": round(time.perf_counter() - t, 1),
           "prompt_tokens": len(student.layout.prompt_ids), "new_tokens": new_tokens,
           "lm_device": str(next(student.lm.parameters()).device)}
    img = [Image.new("RGB", (32, 32), (90, 140, 60))]
    gc_ = GenerationConfig(max_new_tokens=new_tokens)

    def run(loop: str) -> tuple[float, float]:
        return bs.timed_generation(student, img, gc_, loop, sync=lambda: sync(device))

    with torch.no_grad():
        for loop in ("lean", "hf"):
            try:
                run(loop)  # warm-up
                runs = [run(loop) for _ in range(reps)]
                row[f"{loop}_ttft_s"] = round(min(r[0] for r in runs), 4)
                row[f"{loop}_decode_tok_s"] = round(max(r[1] for r in runs), 2)
                row[f"{loop}_decode_tok_s_runs"] = [round(r[1], 2) for r in runs]
            except Exception:
                row[f"{loop}_error"] = traceback.format_exc()[-1200:]
        try:
            lean = generate_ids(student, img, config=gc_, stop_at_eos=False).cpu()
            hf = hf_generate(student, img, config=gc_, stop_at_eos=False).cpu()
            row["lean_equals_hf"] = lean.shape == hf.shape and bool(torch.equal(lean, hf))
        except Exception:
            row["compare_error"] = traceback.format_exc()[-1200:]
    bpt = bs.weight_bytes_per_token(student.lm) / 1e9
    row["bytes_per_token_gb"] = round(bpt, 3)
    row.update(gpu_mem(device))
    student = None  # free it before the bandwidth probe
    free(device)
    bw = gpu_bandwidth_gbs(device)
    if bw:
        row.update(bandwidth_gbs=bw, bound_tok_s=round(bw / bpt, 1))
        for loop in ("lean", "hf"):
            if f"{loop}_decode_tok_s" in row:
                row[f"{loop}_fraction_of_bound"] = round(row[f"{loop}_decode_tok_s"] * bpt / bw, 4)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto")
    ap.add_argument("--work", type=Path, default=Path("/tmp/phi3-gpu"))
    ap.add_argument("--skip-full", action="store_true", help="only env and memorise")
    ap.add_argument("--skip-memorise", action="store_true")
    ap.add_argument("--snapshot", type=Path, help="use this 20-image snapshot instead of writing one")
    ap.add_argument("--steps", type=int, default=5, help="measured QLoRA steps (full-train)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--full-config", choices=("phi3-mini", "tiny"), default="phi3-mini",
                    help=argparse.SUPPRESS)  # tiny: dry-run the full phases on a CPU
    a = ap.parse_args()

    from pipeline.hardware import resolve_device

    global SNAPSHOT
    SNAPSHOT = a.snapshot
    device = resolve_device(a.device)
    a.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    run_phase("env", phase_env, device)
    if not a.skip_memorise:
        run_phase("memorise", phase_memorise, device, a.work)
        run_phase("resume", phase_resume, device, a.work)
    if not a.skip_full:
        if run_phase("full-build", phase_full_build, device, a.work, a.full_config)["ok"]:
            if run_phase("full-train", phase_full_train, device, a.work, a.full_config, a.steps)["ok"]:
                run_phase("full-infer", phase_full_infer, device, a.work, a.full_config, a.new_tokens, a.reps)
    emit({"phase": "done", "total_s": round(time.perf_counter() - t0, 1)})


if __name__ == "__main__":
    main()
