"""Store benchmark: 100,000 reviewable items, then approve-and-fetch-next latency and the review
page's script run time (Streamlit AppTest, the Streamlit-widget card; bench/review_browser.py measures
the browser card in Chromium). Prints one JSON line with the figures.

Run: `python bench/store.py [--n 100000] [--iters 300] [--page-runs 10] [--data-dir DIR]`
(targets: p95 <= 20 ms for approve-and-fetch-next, <= 300 ms for a review page run).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from db.engine import init_store, session_scope
from db.models import Draft, Image, Review, ReviewAction, ReviewState, SourceKind
from db.review import QueueOrder, claim_next, decide
from pipeline.classes import CLASSES
from pipeline.teacher.flags import Flag, compute_flags

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "pipeline" / "assets" / "cifar10"
REVIEW_PAGE = REPO / "curation_app" / "app_pages" / "review.py"
TEMPLATES = (  # what drafts look like: mostly fine, some with the usual teacher faults
    "A {c} standing outdoors on a sunny day.", "A close-up photo of a {c} against a plain background.",
    "A small {c} in the middle of the picture.", "This appears to be a {c}, but the image is blurry.",
    "An animal or object outside.", "A {c}.", "A {c} {c} next to a road.",
)
CHUNK = 5000


def seed(engine, *, n: int) -> None:
    """Bulk-insert n images, one draft each and their pending review rows (SQLAlchemy core)."""
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


def bench_page(data_dir: Path, *, runs: int) -> dict:
    """Script run time of the review page (AppTest): a cold first run, then approve clicks."""
    if not REVIEW_PAGE.is_file():
        return {"error": f"{REVIEW_PAGE} does not exist"}
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["CAPSTUDIO_DATA_DIR"] = str(data_dir)
    os.environ["CAPSTUDIO_REVIEW_CARD"] = "streamlit"  # AppTest clicks widgets; the browser card is JS
    os.environ.pop("CAPSTUDIO_DATABASE_URL", None)
    st.cache_resource.clear()
    at = AppTest.from_file(str(REVIEW_PAGE), default_timeout=60)
    from curation_app.signin import ACTOR_KEY
    from pipeline.identity import Actor, Role

    at.session_state[ACTOR_KEY] = Actor(name="bench-page", role=Role.reviewer)  # as the entry point leaves it
    t0 = time.perf_counter()
    at.run()
    cold = (time.perf_counter() - t0) * 1000
    if at.exception:
        return {"error": str(at.exception[0].value)[:300], "cold_ms": round(cold, 1)}
    rerun, click = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        at.run()  # a plain rerun (e.g. a widget change)
        rerun.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        at.button(key="btn-approve").click().run()  # approve, then the next item is shown
        click.append((time.perf_counter() - t0) * 1000)
    empty = []
    at.session_state["queue_flag"] = Flag.near_duplicate.value  # a filter nothing matches
    for _ in range(max(2, runs // 2)):
        t0 = time.perf_counter()
        at.run()
        empty.append((time.perf_counter() - t0) * 1000)
    if at.exception:
        return {"error": str(at.exception[0].value)[:300]}
    return {"cold_ms": round(cold, 1), "rerun": percentiles(rerun), "approve_click": percentiles(click),
            "rerun_flag_filter_matching_nothing": percentiles(empty)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="items to seed")
    parser.add_argument("--iters", type=int, default=300, help="approve-and-next iterations")
    parser.add_argument("--page-runs", type=int, default=10, help="review page reruns and clicks")
    parser.add_argument("--data-dir", type=Path, default=None, help="keep the store here (default: temp)")
    args = parser.parse_args()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="capstudio-bench-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{(data_dir / 'studio.db').resolve()}"
    try:
        engine = init_store(url)
        t0 = time.perf_counter()
        seed(engine, n=args.n)
        seed_s = time.perf_counter() - t0
        out = {
            "bench": "store", "items": args.n, "seed_s": round(seed_s, 1),
            "approve_next": bench_approve_next(engine, iters=args.iters),
            "approve_next_risk": bench_approve_next(engine, iters=args.iters // 2, order=QueueOrder.risk),
            "approve_next_flag_hedging": bench_approve_next(engine, iters=args.iters // 2,
                                                            flag=Flag.hedging.value),
            "claim_next_flag_matching_nothing": bench_empty_filter(engine),
            "submit_decision_service": bench_service(engine, iters=args.iters // 2),
        }
        engine.dispose()
        out["review_page"] = bench_page(data_dir, runs=args.page_runs)
        out["targets"] = {"approve_next_p95_ms": 20, "review_page_ms": 300}
        out["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version(), "processor": platform.processor() or None}
        print(json.dumps(out))
    finally:
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
