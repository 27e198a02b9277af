"""Captioning throughput: the default engine against Ray Data with 1 and 2 workers, and Ray's fixed cost.

Run: `python bench/scale.py [--images 24] [--new-tokens 16] [--models tiny,full]` (needs
requirements-ray.txt). "tiny" is the tiny random Idefics3 of the tests; "full" a random-weight
SmolVLM-256M built from the real config (bench/teacher.py). Prints one JSON line per run:
images/s over the whole run, and for Ray the steady rate after the first batch came back (the
per-worker rate a projection should use) plus the fixed cost (ray.init, actors, teacher loads).
Every line carries os.getloadavg(): on a shared machine the figures move with the load.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from teacher import build_random_smolvlm

from db.engine import init_store
from pipeline.data.sources import ImportSource, import_images
from pipeline.teacher.drafting import CaptionRequest, run_captioning
from pipeline.teacher.model import TEACHER_GENERATION, load_teacher
from pipeline.teacher.ray_engine import RayOptions, run_captioning_ray, start_local_ray
from pipeline.tiny import build_tiny_teacher, find_smolvlm_processor_dir


def fresh_store(root: Path, n_images: int):
    engine = init_store(f"sqlite:///{root}/studio.db")
    import_images(engine, source=ImportSource.bundled, n_per_class=max(1, -(-n_images // 10)))
    return engine


def emit(**row) -> None:
    print(json.dumps({**row, "load_avg": [round(x, 2) for x in os.getloadavg()]}), flush=True)


def bench_local(model: str, request: CaptionRequest, root: Path, n: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    engine = fresh_store(root, n)
    t0 = time.perf_counter()
    teacher = load_teacher(model, device="cpu", dtype="float32")
    load_s = time.perf_counter() - t0
    summary = run_captioning(engine, teacher, request)
    emit(engine="local", model=Path(model).name, threads=threads, images=summary.written, load_s=round(load_s, 2),
         images_per_s=round(summary.images_per_s, 3))
    engine.dispose()


def bench_ray(ray, model: str, request: CaptionRequest, root: Path, n: int, workers: int) -> None:
    engine = fresh_store(root, n)
    stamps: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    summary = run_captioning_ray(engine, request, model=model, device="cpu", dtype="float32",
                                 options=RayOptions(workers=workers),
                                 on_progress=lambda d, t: stamps.append((time.perf_counter(), d)))
    wall = time.perf_counter() - t0
    done = [(t, d) for t, d in stamps if d > 0]
    steady = (done[-1][1] - done[0][1]) / (done[-1][0] - done[0][0]) if len(done) > 1 else None
    emit(engine="ray", model=Path(model).name, workers=workers, threads_per_worker=1, images=summary.written,
         wall_s=round(wall, 2),
         images_per_s=round(summary.written / wall, 3),
         steady_images_per_s=round(steady, 3) if steady else None,
         first_batch_s=round(done[0][0] - t0, 2) if done else None)
    engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=24, help="images per run with the tiny teacher")
    ap.add_argument("--full-images", type=int, default=8, help="images per run with the full-size teacher")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--models", default="tiny,full")
    ap.add_argument("--full-dir", type=Path, default=Path("/tmp/smolvlm-256m-random"))
    args = ap.parse_args()
    import ray

    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    models = {}
    if "tiny" in args.models:
        models["tiny"] = str(build_tiny_teacher(work / "tiny", processor_dir=find_smolvlm_processor_dir()))
    if "full" in args.models:
        models["full"] = str(build_random_smolvlm(args.full_dir))
    params = replace(TEACHER_GENERATION, max_new_tokens=args.new_tokens)
    emit(machine=os.uname().nodename, cores=os.cpu_count(), ray=ray.__version__, images=args.images,
         new_tokens=args.new_tokens, batch_size=args.batch_size)
    t0 = time.perf_counter()
    start_local_ray(ray, num_cpus=2)
    emit(ray_init_s=round(time.perf_counter() - t0, 2))
    for name, model in models.items():
        n = args.images if name == "tiny" else args.full_images
        request = CaptionRequest(params=params, batch_size=args.batch_size, limit=n)
        for threads in (1, 2):
            print(f"# {name}: local engine, {threads} thread(s)", file=sys.stderr)
            bench_local(model, request, work / f"{name}-local-{threads}", n, threads)
        for workers in (1, 2):
            print(f"# {name}: ray, {workers} worker(s)", file=sys.stderr)
            bench_ray(ray, model, request, work / f"{name}-ray-{workers}", n, workers)
    ray.shutdown()


if __name__ == "__main__":
    main()
