"""Captioning throughput: the default engine against Ray Data with 1 and 2 workers, and Ray's fixed cost.

Run: `python bench/scale.py [--images 24] [--new-tokens 16] [--models tiny,full]` (needs
requirements-ray.txt). "tiny" is the tiny random Idefics3 of the tests; "full" a random-weight
SmolVLM-256M built from the real config (bench/teacher.py). Prints one JSON line per run:
images/s over the whole run; Ray runs twice (n and 2n images), giving the marginal rate (the
per-image cost a projection should use) and the fixed cost per run (actors start, teacher loads).
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

from teacher import build_random_smolvlm  # bench/teacher.py: python puts the script's folder on sys.path

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


def _ray_wall(model: str, request: CaptionRequest, root: Path, n: int, workers: int) -> tuple[float, int]:
    """Seconds from submission to the last draft written, for n images on a fresh store."""
    engine = fresh_store(root, n)
    t0 = time.perf_counter()
    summary = run_captioning_ray(engine, replace(request, limit=n), model=model, device="cpu", dtype="float32",
                                 options=RayOptions(workers=workers))
    wall = time.perf_counter() - t0
    engine.dispose()
    return wall, summary.written


def bench_ray(model: str, request: CaptionRequest, root: Path, n: int, workers: int) -> None:
    """Two runs, n and 2n images: the difference is the marginal rate (what more images cost, the
    figure a projection uses), the rest the fixed cost (actors start, each loads the teacher)."""
    wall_n, done_n = _ray_wall(model, request, root / "n", n, workers)
    wall_2n, done_2n = _ray_wall(model, request, root / "2n", 2 * n, workers)
    extra = wall_2n - wall_n
    rate = (done_2n - done_n) / extra if extra > 0 else None
    emit(engine="ray", model=Path(model).name, workers=workers, threads_per_worker=1,
         images=[done_n, done_2n], wall_s=[round(wall_n, 2), round(wall_2n, 2)],
         images_per_s=round(done_2n / wall_2n, 3),
         marginal_images_per_s=round(rate, 3) if rate else None,
         fixed_s=round(wall_n - done_n / rate, 2) if rate else None)


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
            bench_ray(model, request, work / f"{name}-ray-{workers}", n, workers)
    ray.shutdown()


if __name__ == "__main__":
    main()
