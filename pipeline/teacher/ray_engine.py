"""Captioning on Ray Data: many teacher workers, one driver that writes the drafts.

    python -m pipeline caption --engine ray [--ray-address ADDRESS] [--workers N] [--gpus-per-worker G]

The driver reads the images without a draft from the store in chunks and puts each chunk into
Ray's object store as one block; `map_batches` runs `TeacherCaptioner` (one teacher per worker,
loaded by `load_teacher`, the project's one SmolVLM loader) on a fixed pool of N actors; the
driver writes the captions back batch by batch with `write_drafts`, which skips images that
gained a draft meanwhile, so overlapping runs, a dead worker (Ray retries its batch) or a killed
driver (rerun it) never leave two drafts from one run's model+prompt. Workers never touch the
database. Ray is optional: `pip install -r requirements-ray.txt`.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine

from db.catalog import get_images
from db.engine import session_scope
from pipeline.teacher.drafting import CaptionRequest, CaptionSummary, _missing, write_drafts
from pipeline.teacher.model import TeacherError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RAY_MISSING = ("the Ray engine needs Ray, which is an optional extra: "
               "pip install -r requirements-ray.txt (the default engine needs no Ray)")


def import_ray():
    """`import ray` (with Ray Data), or a TeacherError that says how to install it."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise TeacherError(f"{RAY_MISSING} ({exc})") from exc
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray captioning runs."""

    address: str | None = None
    """An existing cluster to join ('auto' or HEAD:6379 once this machine ran `ray start --address`); None: local."""
    workers: int = 2
    """Teacher actors (each loads the teacher once)."""
    gpus_per_worker: float = 0.0
    """GPUs reserved per actor (0: CPU workers)."""
    cpus_per_worker: int = 1
    """CPUs reserved per actor, and its torch threads."""
    chunk_images: int = 512
    """Images the driver reads from the store per object-store block (rounded to whole batches)."""

    def __post_init__(self) -> None:
        if self.workers < 1 or self.cpus_per_worker < 1 or self.chunk_images < 1:
            raise ValueError("workers, cpus_per_worker and chunk_images must be >= 1")
        if self.gpus_per_worker < 0:
            raise ValueError("gpus_per_worker must be >= 0")


class TeacherCaptioner:
    """The map_batches callable: one teacher per Ray actor, then one generation batch per call."""

    def __init__(self, *, model: str, device: str, dtype: str, prompt: str, params: dict,
                 batch_size: int, threads: int):
        import torch

        from pipeline.generation import GenerationConfig
        from pipeline.teacher.model import load_teacher, prepare_long_run

        torch.set_num_threads(threads)
        self.teacher = prepare_long_run(load_teacher(model, device=device, dtype=dtype))
        self.prompt, self.params, self.batch_size = prompt, GenerationConfig(**params), batch_size

    def __call__(self, batch: dict) -> dict:
        from pipeline.data.images import decode_png
        from pipeline.teacher.model import generate_batch, processor_params_for, provenance

        images = [decode_png(bytes(b)) for b in batch["png"]]
        texts, _ = generate_batch(self.teacher, images, prompt=self.prompt, params=self.params)
        prov = provenance(self.teacher, prompt=self.prompt, params=self.params,
                          processor_params=processor_params_for(images), batch_size=self.batch_size)
        return {"image_id": batch["image_id"], "text": texts, "provenance": [json.dumps(prov)] * len(texts)}


def connect(ray, options: RayOptions) -> bool:
    """Join `options.address`, or start a local Ray sized for the workers; True when we started it."""
    if ray.is_initialized():
        return False
    if options.address:
        # the cluster's workers get this checkout's code (the model path must exist there too)
        ray.init(address=options.address, log_to_driver=False, runtime_env={
            "py_modules": [str(PROJECT_ROOT / "pipeline"), str(PROJECT_ROOT / "db")]})
    else:
        start_local_ray(ray, num_cpus=options.workers * options.cpus_per_worker,
                        num_gpus=int(options.workers * options.gpus_per_worker + 0.999) or None)
    return True


def start_local_ray(ray, *, num_cpus: int, num_gpus: int | None = None, attempts: int = 3) -> None:
    """A small local Ray: no dashboard, a patient raylet, and another try when it does not come up
    in time (on a loaded machine its agent processes can take longer than Ray's 30 s to start)."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False,
                     _system_config={"agent_register_timeout_ms": 300_000, "raylet_start_wait_time_s": 300})
            return
        except Exception as exc:
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            ray.shutdown()


def _blocks(ray, engine: Engine, todo: list[int], per_block: int) -> list:
    """Read the images in chunks; each chunk becomes one Arrow block in the object store."""
    import pyarrow as pa

    refs = []
    for start in range(0, len(todo), per_block):
        with session_scope(engine) as s:
            rows = get_images(s, ids=todo[start:start + per_block])
        table = pa.table({"image_id": pa.array([r.id for r in rows], pa.int64()),
                          "png": pa.array([r.png for r in rows], pa.binary())})
        refs.append(ray.put(table))
    return refs


def run_captioning_ray(engine: Engine, request: CaptionRequest, *, model: str, device: str = "cpu",
                       dtype: str = "auto", options: RayOptions = RayOptions(),
                       on_progress: Callable[[int, int], None] | None = None,
                       should_stop: Callable[[], bool] | None = None) -> CaptionSummary:
    """Draft captions for the images that need one on a Ray actor pool; the driver writes them.

    `should_stop()` is polled between batches: True stops the Ray work (finished batches are kept)
    and the summary counts what was written. A local Ray started here is shut down at the end.
    """
    from dataclasses import asdict

    ray = import_ray()
    ids = list(request.image_ids) if request.image_ids is not None else None
    with session_scope(engine) as s:  # the teacher's model_id is the string it was loaded from
        todo = _missing(s, request, str(model), ids, request.limit)
    t0, written, done = time.perf_counter(), 0, 0
    if on_progress is not None:
        on_progress(0, len(todo))
    if not todo:
        return CaptionSummary(written=0, total=0, seconds=time.perf_counter() - t0)
    started = connect(ray, options)
    try:
        # whole generation batches per block (the same batches as the local engine), and at least
        # two blocks per worker so that every actor gets work
        per_batch = request.batch_size
        n_batches = min(max(1, options.chunk_images // per_batch), -(-len(todo) // (per_batch * 2 * options.workers)))
        per_block = max(1, n_batches) * per_batch
        ds = ray.data.from_arrow_refs(_blocks(ray, engine, todo, per_block))
        ctor = {"model": model, "device": device, "dtype": dtype, "prompt": request.prompt,
                "params": asdict(request.params), "batch_size": request.batch_size,
                "threads": options.cpus_per_worker}
        remote = {"num_cpus": options.cpus_per_worker}  # Ray Data restarts dead actors and retries their batch
        if options.gpus_per_worker:
            remote["num_gpus"] = options.gpus_per_worker
        out = ds.map_batches(TeacherCaptioner, fn_constructor_kwargs=ctor, batch_size=request.batch_size,
                             compute=ray.data.ActorPoolStrategy(size=options.workers), **remote)
        batches = out.iter_batches(batch_size=None, batch_format="numpy")
        for batch in batches:
            written += _write_batch(engine, batch, per_prompt=request.per_prompt)
            done += len(batch["image_id"])
            if on_progress is not None:
                on_progress(done, len(todo))
            if should_stop is not None and should_stop():
                break
    finally:
        if started:
            ray.shutdown()  # stops the actors and any work still queued for this driver
    return CaptionSummary(written=written, total=len(todo), seconds=time.perf_counter() - t0)


def _write_batch(engine: Engine, batch: dict, *, per_prompt: bool) -> int:
    """Write one returned batch; rows of one batch can carry different provenance (different workers)."""
    groups: dict[str, dict[int, str]] = {}
    for image_id, text, prov in zip(batch["image_id"], batch["text"], batch["provenance"]):
        groups.setdefault(str(prov), {})[int(image_id)] = str(text)
    written = 0
    for prov, texts in groups.items():
        with session_scope(engine) as s:
            written += write_drafts(s, texts=texts, provenance=json.loads(prov), per_prompt=per_prompt)
    return written
