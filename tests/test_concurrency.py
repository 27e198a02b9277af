"""Concurrent reviewers on one store, on SQLite and on a real PostgreSQL: no item claimed or decided
twice, no decision lost.

The two-session tests hold one transaction open while a second session acts; they fail on
PostgreSQL when the claim's `FOR UPDATE SKIP LOCKED` (or the decision's `FOR UPDATE`) is removed
from db/review.py, because READ COMMITTED lets the second session read the row as it was.
"""
from __future__ import annotations

import io
import multiprocessing as mp
import os
import threading
import time
from collections import Counter, defaultdict

import pytest
from PIL import Image as PILImage
from sqlalchemy import func
from sqlmodel import Session, select

from db.engine import make_engine, session_scope
from db.errors import StaleWriteError
from db.models import Draft, Image, RejectReason, Review, ReviewAction, ReviewEvent, ReviewState, SourceKind
from db.review import QueueOrder, claim_next, decide, get_item
from db.tally import counts_by_class, recount, tally
from pipeline.classes import CLASSES
from tests.conftest import BUNDLED, both_backends, seed_images

pytestmark = both_backends

N_WORKERS = 8
PER_WORKER = 250  # decisions per reviewer process
N_ITEMS = 1000  # every item is skipped once, then approved or rejected: 2 decisions each


def unique_pngs(n: int) -> list[tuple[str, bytes, str]]:
    """n distinct real images (label, png, pixel hash): the bundled CIFAR-10 pictures, copy k with
    pixel (0, 0) shifted by k; made once per session."""
    import hashlib

    if len(_PNGS) < n:
        bases = [(label, PILImage.open(BUNDLED / label / f"{label}_{i:04d}.png").convert("RGB"))
                 for label in CLASSES for i in range(20)]
        for k in range(len(_PNGS), n):
            label, base = bases[k % len(bases)]
            img = base.copy()
            r, g, b = img.getpixel((0, 0))
            img.putpixel((0, 0), ((r + k // len(bases)) % 256, g, b))
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            _PNGS.append((label, buf.getvalue(), hashlib.sha256(img.tobytes()).hexdigest()))
    return _PNGS[:n]


_PNGS: list[tuple[str, bytes, str]] = []


def seed_unique_images(engine, n: int) -> None:
    """n pending items, each a distinct image with one teacher draft (rows written in bulk: the
    same rows db.catalog.add_image/add_draft write one at a time)."""
    pngs = unique_pngs(n)
    with session_scope(engine) as s:
        images = [Image(source_kind=SourceKind.bundled, source_key=f"copy:{k}", label=label, png=png,
                        content_hash=h, width=32, height=32) for k, (label, png, h) in enumerate(pngs)]
        s.add_all(images)
        s.flush()
        drafts = [Draft(image_id=im.id, text=f"A {im.label}, copy {k}.", model_id="t", prompt="p")
                  for k, im in enumerate(images)]
        s.add_all(drafts)
        s.flush()
        s.add_all([Review(image_id=im.id, label=im.label, draft_id=d.id) for im, d in zip(images, drafts)])


def review_share(args: tuple) -> dict:
    """One reviewer in its own process: claim and decide until it has made `quota` decisions.

    A pending item is skipped (it comes back to the queue after the pending ones), a skipped one is
    approved or rejected; so 1,000 items take exactly 2,000 decisions, 250 for each of 8 reviewers.
    """
    url, reviewer, quota, start = args
    engine = make_engine(url)
    decided, errors, waits = [], [], 0
    start.wait(timeout=300)  # every reviewer starts together, so their work interleaves
    t0 = time.perf_counter()
    try:
        while len(decided) < quota and len(errors) < 20:
            try:
                with session_scope(engine) as s:
                    # oldest first: every reviewer contends for the same head of the queue
                    item = claim_next(s, reviewer=reviewer, order=QueueOrder.oldest)
                if item is None:  # the rest is in other reviewers' hands; it comes back skipped
                    waits += 1
                    if waits > 3000:
                        errors.append("queue stayed empty for 30 s")
                        break
                    time.sleep(0.01)
                    continue
                if item.state == ReviewState.pending:
                    action = ReviewAction.skip
                else:
                    action = ReviewAction.approve if item.image_id % 2 else ReviewAction.reject
                with session_scope(engine) as s:
                    row = decide(s, image_id=item.image_id, reviewer=reviewer, action=action,
                                 expected_version=item.version, reason=RejectReason.other)
                    version = row.version
                decided.append((item.image_id, action.value, version))
            except Exception as err:
                errors.append(f"{type(err).__name__}: {err}")
    finally:
        t1 = time.perf_counter()
        engine.dispose()
    return {"reviewer": reviewer, "decided": decided, "errors": errors, "t0": t0, "t1": t1}


def test_8_reviewers_2000_decisions_over_1000_items_nothing_lost_or_doubled(engine, settings, backend, capsys):
    url = settings.resolved_database_url
    t_seed = time.perf_counter()
    seed_unique_images(engine, N_ITEMS)
    t_seed = time.perf_counter() - t_seed
    t_pool = time.perf_counter()
    names = [f"reviewer{k}" for k in range(N_WORKERS)]
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(N_WORKERS) as pool:
        start = manager.Barrier(N_WORKERS)
        results = pool.map(review_share, [(url, n, PER_WORKER, start) for n in names], chunksize=1)
    wall = max(r["t1"] for r in results) - min(r["t0"] for r in results)
    t_pool = time.perf_counter() - t_pool

    assert [e for r in results for e in r["errors"]] == []  # 0 unhandled errors, no stale write
    assert [len(r["decided"]) for r in results] == [PER_WORKER] * N_WORKERS
    made = [(i, action, version, r["reviewer"]) for r in results for i, action, version in r["decided"]]
    per_item = Counter(i for i, *_ in made)
    assert len(per_item) == N_ITEMS and set(per_item.values()) == {2}
    assert Counter(a for _, a, *_ in made)["skip"] == N_ITEMS  # each item skipped once, decided once
    assert len({(i, v) for i, _, v, _ in made}) == len(made)  # no two decisions on the same version

    with session_scope(engine) as s:
        rows = {r.image_id: r for r in s.exec(select(Review)).all()}
        events = s.exec(select(ReviewEvent).order_by(ReviewEvent.id)).all()
        n_claimed = s.exec(select(func.count()).select_from(Review).where(Review.claimed_by.is_not(None))).one()
    # 0 lost updates: every decision a reviewer was told was saved is in the log, in order, and
    # the row holds the last one
    logged = defaultdict(list)
    for e in events:
        logged[e.image_id].append((e.action.value, e.reviewer))
    mine = defaultdict(list)
    for i, action, _version, who in sorted(made, key=lambda m: (m[0], m[2])):
        mine[i].append((action, who))
    assert len(events) == N_WORKERS * PER_WORKER and dict(logged) == dict(mine)
    final = {i: m[-1] for i, m in mine.items()}
    assert all(rows[i].version == 3 and rows[i].reviewer == final[i][1] for i in rows)
    assert all(rows[i].state == (ReviewState.approved if final[i][0] == "approve" else ReviewState.rejected)
               for i in rows)
    assert n_claimed == 0
    with session_scope(engine) as s:  # the maintained counts (folded by the workers' reads meanwhile) never drift
        assert tally(s) == recount(s)
        assert sum(counts_by_class(s)[lab]["pending"] for lab in counts_by_class(s)) == 0
    rate = len(made) / wall
    with capsys.disabled():
        print(f"\n[{backend}] {N_WORKERS} processes x {PER_WORKER} decisions over {N_ITEMS} items: "
              f"{len(made)} decisions in {wall:.1f} s = {rate:.0f} decisions/s "
              f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; seeding {t_seed:.1f} s, "
              f"processes in all {t_pool:.1f} s)", flush=True)


def test_a_claim_in_progress_is_skipped_by_a_concurrent_claimer(engine):
    """Ann's claim is flushed but not committed when Bob claims: Bob must get another item."""
    seed_images(engine, {"cat": 3})
    first = Session(engine, expire_on_commit=False)
    ann = claim_next(first, reviewer="ann")  # row written and locked, transaction still open
    got = {}

    def bob() -> None:
        with session_scope(engine) as s:
            got["bob"] = claim_next(s, reviewer="bob")

    thread = threading.Thread(target=bob)
    thread.start()
    thread.join(timeout=1.0)  # PostgreSQL: Bob skips the locked row at once; SQLite: Bob waits for BEGIN
    first.commit()
    first.close()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert got["bob"].image_id != ann.image_id
    with session_scope(engine) as s:
        holders = {r.image_id: r.claimed_by for r in s.exec(select(Review)).all()}
    assert holders[ann.image_id] == "ann" and holders[got["bob"].image_id] == "bob"


def test_a_concurrent_decision_on_the_same_version_is_refused(engine):
    """Ann's decision is flushed but not committed when Bob decides on the same version he saw:
    Bob's must be refused as stale (not overwrite Ann's, which a plain read would allow)."""
    (item_id,) = seed_images(engine, {"cat": 1})
    with session_scope(engine) as s:
        seen = get_item(s, image_id=item_id).version
    first = Session(engine, expire_on_commit=False)
    decide(first, image_id=item_id, reviewer="ann", action=ReviewAction.edit_approve,
           expected_version=seen, caption="A tabby cat on a sofa.")
    outcome = {}

    def bob() -> None:
        try:
            with session_scope(engine) as s:
                decide(s, image_id=item_id, reviewer="bob", action=ReviewAction.reject,
                       expected_version=seen, reason=RejectReason.other)
            outcome["bob"] = "saved"
        except StaleWriteError:
            outcome["bob"] = "stale"

    thread = threading.Thread(target=bob)
    thread.start()
    thread.join(timeout=1.0)
    first.commit()
    first.close()
    thread.join(timeout=60)
    assert outcome == {"bob": "stale"}
    with session_scope(engine) as s:
        row = s.get(Review, item_id)
        n_events = s.exec(select(func.count()).select_from(ReviewEvent)).one()
    assert (row.state, row.reviewer, row.final_caption, n_events) == (
        ReviewState.approved, "ann", "A tabby cat on a sofa.", 1)


def test_second_decision_on_the_same_view_is_refused_and_the_first_kept(engine):
    seed_images(engine, {"airplane": 1})
    with session_scope(engine) as s:
        ann_view = get_item(s, image_id=1)
        bob_view = get_item(s, image_id=1)
    with session_scope(engine) as s:
        decide(s, image_id=1, reviewer="ann", action=ReviewAction.edit_approve,
               expected_version=ann_view.version, caption="An airliner at the gate.")
    with pytest.raises(StaleWriteError, match="reload"):
        with session_scope(engine) as s:
            decide(s, image_id=1, reviewer="bob", action=ReviewAction.reject,
                   expected_version=bob_view.version, reason=RejectReason.other)
    with session_scope(engine) as s:
        row = s.get(Review, 1)
        n_events = len(s.exec(select(ReviewEvent).where(ReviewEvent.image_id == 1)).all())
    assert (row.state, row.final_caption, row.reviewer, n_events) == (
        ReviewState.approved, "An airliner at the gate.", "ann", 1)
