"""Store benchmark (issue 16): n real PNG files imported by `python -m pipeline import --source folder
--all` (a subprocess, timed end to end), one draft each, then approve-and-fetch-next latency, the Home,
Browse and Review pages' script run times (Streamlit AppTest) and an export of approved pairs. Prints
ONE JSON line: each figure with its target beside it, the CPU and the load average. bench/review_browser.py measures
the review card in Chromium; the page figures here are the Streamlit-widget card's (AppTest runs no JavaScript).

Run: `python bench/store.py [--n 1000000] [--export 100000] [--iters 300] [--page-runs 5]`
The PNGs (perturbed bundled CIFAR-10 pictures, every one different) are written once, in parallel,
under --images (default /tmp/capstudio-bench-pngs-<n>) and reused by later runs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from db.engine import init_store, session_scope
from db.models import Draft, Image, Review, ReviewAction, ReviewState, SourceKind
from db.review import QueueOrder, claim_next, decide
from pipeline.classes import CLASSES
from pipeline.teacher.flags import Flag, compute_flags

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "pipeline" / "assets" / "cifar10"
PAGES = REPO / "curation_app" / "app_pages"
TARGETS = {"import_images_per_s": 20_000, "approve_next_p95_ms": 20, "page_run_ms": 500, "export_s": 60}
TEMPLATES = (  # what drafts look like: mostly fine, some with the usual teacher faults
    "A {c} standing outdoors on a sunny day.", "A close-up photo of a {c} against a plain background.",
    "A small {c} in the middle of the picture.", "This appears to be a {c}, but the image is blurry.",
    "An animal or object outside.", "A {c}.", "A {c} {c} next to a road.",
)
CHUNK = 5000


def _write_pngs(job: tuple[str, int, int]) -> int:
    """Files lo..hi-1: bundled picture i % 200 with pixel (0, 0) set to i's bytes (all different)."""
    from PIL import Image as PILImage

    folder, lo, hi = job
    bases = [(c, PILImage.open(f).convert("RGB")) for c in CLASSES for f in sorted((BUNDLED / c).glob("*.png"))]
    for i in range(lo, hi):
        label, base = bases[i % len(bases)]
        image = base.copy()
        image.putpixel((0, 0), (i & 255, (i >> 8) & 255, (i >> 16) & 255))
        image.save(Path(folder) / label / f"{i:07d}.png")
    return hi - lo


def make_pngs(folder: Path, *, n: int) -> float:
    """Write n PNGs as <folder>/<class>/<i>.png once (a marker says the folder is complete)."""
    marker = folder / f".complete-{n}"
    if marker.exists():
        return 0.0
    t0 = time.perf_counter()
    for c in CLASSES:
        (folder / c).mkdir(parents=True, exist_ok=True)
    step = 5000
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        assert sum(pool.map(_write_pngs, [(str(folder), lo, min(n, lo + step)) for lo in range(0, n, step)])) == n
    marker.touch()
    return time.perf_counter() - t0


def _read_class(folder: str) -> int:
    from pipeline.data.ingest import read_file

    return sum(len(read_file(entry.path)) for entry in os.scandir(folder) if entry.is_file())


def warm_page_cache(folder: Path) -> float:
    """Read every PNG once, so that the import is timed with the files in the page cache (as on the
    machine that just wrote or copied them), not by how many of them the disk still has to fetch:
    after a day of runs, each writing ~8 GB of store, 17,905 of the million files were out of the page
    cache (`fincore`), and imports took 50-75 s instead of 43-52. Returns the seconds taken."""
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        sum(pool.map(_read_class, [str(folder / c) for c in CLASSES]))
    return time.perf_counter() - t0


def decode_probe(folder: Path, n: int = 5000) -> float:
    """CPU microseconds to read, decode and hash one PNG here, in one process (the import's per-file work):
    this VM's speed drifts by a third over a day (42-60 us for the same files), so each run says where
    it stood."""
    from pipeline.data.ingest import prepare_file

    paths = sorted(str(p) for p in (folder / CLASSES[0]).iterdir())[:n]
    t0 = time.process_time()
    for path in paths:
        prepare_file(path)
    return (time.process_time() - t0) / len(paths) * 1e6


def run_import(folder: Path, data_dir: Path, *, n: int) -> dict:
    """`python -m pipeline import --source folder --all` as a user runs it, timed end to end."""
    env = {**os.environ, "CAPSTUDIO_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}
    env.pop("CAPSTUDIO_DATABASE_URL", None)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline", "import", "--source", "folder", "--path", str(folder),
                           "--all"], env=env, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"import failed: {done.stderr[-2000:]}")
    summary = next(line for line in done.stdout.splitlines() if line.startswith("added "))
    return {"seconds": round(seconds, 1), "images_per_s": round(n / seconds), "summary": summary,
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
            "load_avg_before": round(load, 2)}


def attach_drafts(engine) -> int:
    """One teacher draft per imported image (id = image id), shown by its pending review row."""
    now = datetime.now(UTC)
    drafts = {(c, t): (t.format(c=c), compute_flags(t.format(c=c), c)) for c in CLASSES for t in TEMPLATES}
    with engine.begin() as conn:
        images = conn.exec_driver_sql("SELECT id, label FROM image ORDER BY id").fetchall()
        for start in range(0, len(images), CHUNK):
            rows = []
            for i, label in images[start:start + CHUNK]:
                text, flags = drafts[(label, TEMPLATES[i % len(TEMPLATES)])]
                rows.append({"id": i, "image_id": i, "text": text, "model_id": "bench-teacher",
                             "model_revision": None, "prompt": "Describe the image.", "generation_params": {},
                             "processor_params": {}, "flags": flags, "created_at": now})
            conn.execute(Draft.__table__.insert(), rows)
        conn.exec_driver_sql("UPDATE review SET draft_id = image_id, flag_count = "
                             "(SELECT json_array_length(flags) FROM draft WHERE draft.id = review.image_id)")
        conn.exec_driver_sql("ANALYZE")
    return len(images)


def approve_for_export(engine, *, n: int) -> None:
    """The first n pending items approved as they are (as n reviewers' clicks would leave them)."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE review SET state = 'approved', reviewer = 'bench-export', decided_at = ?, version = version + 1, "
            "final_caption = (SELECT text FROM draft WHERE draft.id = review.draft_id) WHERE image_id IN "
            "(SELECT image_id FROM review WHERE state = 'pending' ORDER BY image_id LIMIT ?)", (now, n))


def bench_export(data_dir: Path) -> dict:
    from pipeline.data.export import export_snapshot
    from pipeline.settings import Settings

    settings = Settings(data_dir=data_dir, _env_file=None)
    engine = init_store(settings.resolved_database_url)
    t0 = time.perf_counter()
    result = export_snapshot(settings, engine, override_balance=True, exported_by="bench")
    seconds = time.perf_counter() - t0
    engine.dispose()
    shutil.rmtree(result.path, ignore_errors=True)
    return {"seconds": round(seconds, 1), "pairs": result.n_items}


def seed(engine, *, n: int) -> None:
    """Bulk-insert n images (the bundled pictures repeated, not files), one draft each and their pending
    review rows (SQLAlchemy core): a quick store for bench/review_browser.py, which times the browser."""
    pngs = {c: [p.read_bytes() for p in sorted((BUNDLED / c).glob("*.png"))] for c in CLASSES}
    now = datetime.now(UTC)
    drafts = {(c, t): (t.format(c=c), compute_flags(t.format(c=c), c)) for c in CLASSES for t in TEMPLATES}
    with engine.begin() as conn:
        for start in range(0, n, CHUNK):
            images, texts, reviews = [], [], []
            for i in range(start + 1, min(n, start + CHUNK) + 1):
                c = CLASSES[i % len(CLASSES)]
                png = pngs[c][i % len(pngs[c])]
                text, flags = drafts[(c, TEMPLATES[i % len(TEMPLATES)])]
                images.append({"id": i, "source_kind": SourceKind.bundled, "source_key": f"bench:{i}",
                               "label": c, "content_hash": hashlib.sha256(f"bench:{i}".encode()).hexdigest(),
                               "width": 32, "height": 32, "png": png, "created_at": now})
                texts.append({"id": i, "image_id": i, "text": text, "model_id": "bench-teacher",
                              "model_revision": None, "prompt": "Describe the image.",
                              "generation_params": {}, "processor_params": {}, "flags": flags,
                              "created_at": now})
                reviews.append({"image_id": i, "label": c, "state": ReviewState.pending, "draft_id": i,
                                "flag_count": len(flags), "updated_at": now, "version": 1})
            conn.execute(Image.__table__.insert(), images)
            conn.execute(Draft.__table__.insert(), texts)
            conn.execute(Review.__table__.insert(), reviews)
        conn.exec_driver_sql("ANALYZE")


def percentiles(ms: list[float]) -> dict:
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {"p50_ms": round(q[49], 2), "p95_ms": round(q[94], 2), "max_ms": round(max(ms), 2), "n": len(ms)}


def bench_approve_next(engine, *, iters: int, order: QueueOrder = QueueOrder.balanced,
                       flag: str | None = None) -> dict:
    """Time one short session of (approve the item in hand + claim the next), `iters` times."""
    targets = {c: 10 for c in CLASSES}
    reviewer = f"bench-{order.value}-{flag}"
    with session_scope(engine) as s:
        item = claim_next(s, reviewer=reviewer, order=order, targets=targets, flag=flag)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        with session_scope(engine) as s:
            decide(s, image_id=item.image_id, reviewer=reviewer, action=ReviewAction.approve,
                   expected_version=item.version)
            item = claim_next(s, reviewer=reviewer, order=order, targets=targets, flag=flag)
        times.append((time.perf_counter() - t0) * 1000)
    return percentiles(times)


def bench_empty_filter(engine, *, runs: int = 5) -> dict:
    """claim_next with an auto-flag no item has: the worst case, every flagged item is read."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        with session_scope(engine) as s:
            assert claim_next(s, reviewer="bench-empty", flag=Flag.near_duplicate.value) is None
        times.append((time.perf_counter() - t0) * 1000)
    return percentiles(times)


def bench_service(engine, *, iters: int) -> dict:
    """The review page's round trip: studio.submit_decision (decide, next, progress per class)."""
    from pipeline.identity import Actor, Role
    from pipeline.services import review as studio

    actor, spec = Actor(name="bench-service", role=Role.reviewer), studio.QueueSpec()
    view = studio.open_review(engine, actor=actor, spec=spec)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        view = studio.submit_decision(engine, actor=actor, spec=spec, image_id=view.item.image_id,
                                      expected_version=view.item.version, action=ReviewAction.approve)
        times.append((time.perf_counter() - t0) * 1000)
    return percentiles(times)


def _app(page: str, data_dir: Path):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from curation_app.signin import ACTOR_KEY
    from pipeline.identity import Actor, Role

    os.environ["CAPSTUDIO_DATA_DIR"] = str(data_dir)
    os.environ["CAPSTUDIO_REVIEW_CARD"] = "streamlit"  # AppTest clicks widgets; the browser card is JS
    os.environ.pop("CAPSTUDIO_DATABASE_URL", None)
    st.cache_resource.clear()
    at = AppTest.from_file(str(PAGES / page), default_timeout=120)
    at.session_state[ACTOR_KEY] = Actor(name="bench-page", role=Role.curator)  # as the entry point leaves it
    return at


def _timed_run(at, act=None) -> float:
    t0 = time.perf_counter()
    (act(at) if act else at).run()
    ms = (time.perf_counter() - t0) * 1000
    if at.exception:
        raise RuntimeError(str(at.exception[0].value)[:300])
    return ms


def bench_page(data_dir: Path, page: str, *, runs: int, steps: dict | None = None) -> dict:
    """Script run time of one page (AppTest): a cold first run, plain reruns, then each named step
    (a widget change, a click) `runs` times."""
    at = _app(page, data_dir)
    try:
        out = {"cold_ms": round(_timed_run(at), 1), "rerun": percentiles([_timed_run(at) for _ in range(runs)])}
        for name, act in (steps or {}).items():
            out[name] = percentiles([_timed_run(at, act) for _ in range(runs)])
    except RuntimeError as exc:
        return {"error": str(exc)}
    # the target is judged on warm runs; the cold first run (Streamlit's own imports and first script
    # compile in this process, then the page) is reported beside it
    out["worst_warm_ms"] = max(v["max_ms"] for v in out.values() if isinstance(v, dict))
    return out


def _browse_filters(labels=(), states=(), flag=None, text=""):
    """A Browse step: set every filter (so the steps do not add up)."""
    def act(at):
        at.multiselect(key="browse_labels").set_value(list(labels))
        at.multiselect(key="browse_states").set_value(list(states))
        at.selectbox(key="browse_flag").set_value(flag)
        return at.text_input(key="browse_text").input(text)
    return act


def bench_pages(data_dir: Path, *, runs: int) -> dict:
    return {
        "home": bench_page(data_dir, "home.py", runs=runs),
        "browse": bench_page(data_dir, "browse.py", runs=runs, steps={
            "next_page": lambda at: at.button(key="browse_next").click(),  # pages 2, 3, ...
            "filter_state_approved": _browse_filters(states=[ReviewState.approved]),
            "filter_class_and_flag": _browse_filters(labels=["cat"], flag=Flag.hedging.value),
            "filter_text": _browse_filters(text="road"),
            "filter_matching_nothing": _browse_filters(labels=["cat"], text="no caption says this"),
            # row-by-row filters over every class that nothing matches: bounded by browse.SCAN_ROWS a page
            "filter_text_nothing_any_class": _browse_filters(text="no caption says this"),
            "filter_flag_nothing": _browse_filters(flag=Flag.near_duplicate.value),
        }),
        "review": bench_page(data_dir, "review.py", runs=runs, steps={
            "approve_click": lambda at: at.button(key="btn-approve").click(),
        }),
    }


def verdicts(out: dict) -> dict:
    """Each target beside its figure, and whether it was met."""
    pages = {k: v.get("worst_warm_ms") for k, v in out["pages"].items()}
    figures = {
        "import_images_per_s": (out["import"]["images_per_s"], TARGETS["import_images_per_s"], ">="),
        "approve_next_p95_ms": (out["approve_next"]["p95_ms"], TARGETS["approve_next_p95_ms"], "<="),
        **{f"{k}_page_worst_warm_ms": (v, TARGETS["page_run_ms"], "<=") for k, v in pages.items()},
        "export_s": (out["export"].get("seconds"), TARGETS["export_s"], "<="),
    }
    return {k: {"figure": f, "target": t, "met": f is not None and (f >= t if op == ">=" else f <= t)}
            for k, (f, t, op) in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="images to import")
    parser.add_argument("--export", type=int, default=None, help="approved pairs to export (default: n/10)")
    parser.add_argument("--iters", type=int, default=300, help="approve-and-next iterations")
    parser.add_argument("--page-runs", type=int, default=5, help="reruns and clicks per page and step")
    parser.add_argument("--images", type=Path, default=None, help="PNG folder (default /tmp/capstudio-bench-pngs-<n>)")
    parser.add_argument("--data-dir", type=Path, default=None, help="keep the store here (default: temp)")
    args = parser.parse_args()
    images = args.images or Path(tempfile.gettempdir()) / f"capstudio-bench-pngs-{args.n}"
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="capstudio-bench-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{(data_dir / 'studio.db').resolve()}"
    from pipeline.hardware import describe_cpu

    try:
        out = {"bench": "store", "n": args.n, "pngs_written_s": round(make_pngs(images, n=args.n), 1)}
        out["pngs_read_before_s"] = round(warm_page_cache(images), 1)
        out["decode_probe_us_per_png"] = round(decode_probe(images), 1)
        out["import"] = run_import(images, data_dir, n=args.n)
        engine = init_store(url)
        t0 = time.perf_counter()
        out["drafts"] = {"n": attach_drafts(engine), "seconds": round(time.perf_counter() - t0, 1)}
        out |= {
            "approve_next": bench_approve_next(engine, iters=args.iters),
            "approve_next_risk": bench_approve_next(engine, iters=args.iters // 2, order=QueueOrder.risk),
            "approve_next_flag_hedging": bench_approve_next(engine, iters=args.iters // 2,
                                                            flag=Flag.hedging.value),
            "claim_next_flag_matching_nothing": bench_empty_filter(engine),
            "submit_decision_service": bench_service(engine, iters=args.iters // 2),
        }
        approve_for_export(engine, n=args.export or max(1, args.n // 10))
        engine.dispose()
        out["export"] = bench_export(data_dir)
        out["pages"] = bench_pages(data_dir, runs=args.page_runs)
        out["targets"] = verdicts(out)
        out["cpu"] = describe_cpu()  # includes the load average at the end
        print(json.dumps(out))
    finally:
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
