"""The maintained review tally (migration 0008's triggers) equals a recount of `review` after every kind
of write: imports (one by one and in bulk), drafts, decisions, edits, undo, QC adjudication, claims, a
raw bulk UPDATE, and concurrent reviewers; on SQLite and on PostgreSQL (where readers fold the deltas)."""
from __future__ import annotations

import hashlib
import threading

from sqlmodel import select

from db import qc
from db.catalog import NewImage, add_draft, add_images
from db.engine import session_scope
from db.models import (
    Adjudication,
    OpinionState,
    RejectReason,
    ReviewAction,
    ReviewState,
    ReviewTally,
    SecondOpinion,
    SourceKind,
    Verdict,
)
from db.review import claim_next, decide, get_item, undo_last
from db.tally import counts_by_class, edited_counts, fold, recount, tally
from tests.conftest import both_backends, seed_images

pytestmark = both_backends


def _same(engine) -> dict:
    with session_scope(engine) as s:
        kept, counted = tally(s), recount(s)
    assert kept == counted
    return kept


def _decide(engine, image_id, action, reviewer="ann", **kw):
    with session_scope(engine) as s:
        item = get_item(s, image_id=image_id)
        decide(s, image_id=image_id, reviewer=reviewer, action=action, expected_version=item.version, **kw)


def test_tally_equals_a_recount_after_a_mixed_sequence(engine):
    ids = seed_images(engine, {"cat": 6, "dog": 5, "ship": 3})
    _same(engine)
    with session_scope(engine) as s:  # a bulk import (executemany), one image already stored
        png = b"\x89PNG-not-decoded"
        new = [NewImage(source_key=f"bulk:{i}", label="frog", png=png, content_hash=hashlib.sha256(
            f"bulk{i}".encode()).hexdigest(), width=32, height=32) for i in range(7)]
        add_images(s, source_kind=SourceKind.folder, images=new + new[:1])
    kept = _same(engine)
    assert kept[("frog", ReviewState.pending, False)] == 7

    _decide(engine, ids[0], ReviewAction.approve)
    _decide(engine, ids[1], ReviewAction.edit_approve, caption="A cat on a mat.")
    _decide(engine, ids[2], ReviewAction.approve, caption="A cat photo 2.")  # the draft's own text: not an edit
    _decide(engine, ids[6], ReviewAction.reject, reason=RejectReason.too_vague)
    _decide(engine, ids[7], ReviewAction.skip)
    _decide(engine, ids[8], ReviewAction.edit_approve, caption="A dog.", reviewer="bob")
    kept = _same(engine)
    assert kept[("cat", ReviewState.approved, True)] == 1 and kept[("cat", ReviewState.approved, False)] == 2
    with session_scope(engine) as s:
        assert edited_counts(s) == {"cat": 1, "dog": 1}
        undo_last(s, reviewer="bob")  # the edited dog goes back to pending
    _same(engine)
    _decide(engine, ids[1], ReviewAction.reopen)
    _decide(engine, ids[7], ReviewAction.approve)  # skipped -> approved
    with session_scope(engine) as s:  # a new draft for a pending item (draft_id moves) and for an approved one
        add_draft(s, image_id=ids[3], text="A new cat draft.", model_id="t2", prompt="p")
        add_draft(s, image_id=ids[0], text="Another draft.", model_id="t2", prompt="p")
        claim_next(s, reviewer="cid")  # claims change no count
    _same(engine)

    # QC: a disputed second opinion adjudicated as rejected, another one merged
    policy = qc.QcPolicy(enabled=True, sample_fraction=1.0)
    for image_id, caption in ((ids[4], None), (ids[5], "A grey cat.")):
        _decide(engine, image_id, ReviewAction.approve if caption is None else ReviewAction.edit_approve,
                caption=caption)
        with session_scope(engine) as s:
            qc.route_decision(s, image_id=image_id, policy=policy)
        with session_scope(engine) as s:
            opinion = qc.claim_second(s, reviewer="dan")
            qc.decide_second(s, opinion_id=opinion.opinion_id, reviewer="dan", verdict=Verdict.reject,
                             reason=RejectReason.wrong_object, expected_version=opinion.version)
    with session_scope(engine) as s:
        disputed = s.exec(select(SecondOpinion).where(SecondOpinion.state == OpinionState.disputed)).all()
        assert len(disputed) == 2
        for opinion, choice in zip(disputed, (Adjudication.rejected, Adjudication.merged)):
            qc.adjudicate(s, opinion_id=opinion.id, curator="eve", choice=choice, expected_version=opinion.version,
                          caption="A cat, adjudicated." if choice == Adjudication.merged else None,
                          reason=RejectReason.other)
    _same(engine)

    with engine.begin() as conn:  # a raw bulk write, as a script or a migration might do
        conn.exec_driver_sql("UPDATE review SET state = 'rejected', final_caption = NULL WHERE label = 'ship'")
    kept = _same(engine)
    assert kept[("ship", ReviewState.rejected, False)] == 3
    with session_scope(engine) as s:
        assert counts_by_class(s)["ship"] == {"pending": 0, "approved": 0, "rejected": 3, "skipped": 0}
        fold(s)
    assert _same(engine) == kept  # folding changes no figure


def test_tally_stays_exact_under_concurrent_reviewers(engine):
    seed_images(engine, {"cat": 12, "dog": 12})
    errors = []

    def work(name: str) -> None:
        try:
            for _ in range(6):
                with session_scope(engine) as s:
                    item = claim_next(s, reviewer=name)
                    action = ReviewAction.approve if item.image_id % 3 else ReviewAction.skip
                    decide(s, image_id=item.image_id, reviewer=name, action=action, expected_version=item.version)
            with session_scope(engine) as s:
                undo_last(s, reviewer=name)
        except Exception as exc:  # reported below, with the thread's name
            errors.append(f"{name}: {exc!r}")

    threads = [threading.Thread(target=work, args=(f"r{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    kept = _same(engine)
    assert sum(n for (_, state, _), n in kept.items() if state != ReviewState.pending) == 4 * 5


def test_readers_fold_the_deltas_and_keep_the_figures(engine, monkeypatch):
    import db.tally

    ids = seed_images(engine, {"cat": 8})
    for image_id in ids[:5]:
        _decide(engine, image_id, ReviewAction.approve)
    monkeypatch.setattr(db.tally, "FOLD_ROWS", 2)
    before = _same(engine)  # this read folds (PostgreSQL); the next one sees the folded rows
    with session_scope(engine) as s:
        rows = s.exec(select(ReviewTally)).all()
    assert _same(engine) == before
    assert len(rows) == len({(r.label, r.state, r.edited) for r in rows})  # one row per key


def test_a_bulk_import_leaves_one_tally_row_per_key(engine, tmp_path):
    """After `import_images` the deltas are folded (PostgreSQL), so the first page read after a big
    import sums a few rows, not one per imported image; SQLite keeps one row per key throughout."""
    from pipeline.data.sources import ImportSource, import_images
    from tests.test_import_bulk import write_pngs

    write_pngs(tmp_path, 40)
    summary = import_images(engine, source=ImportSource.folder, path=tmp_path, n_per_class=None, workers=0,
                            batch_size=7)
    assert summary.added == 40
    kept = _same(engine)
    with session_scope(engine) as s:
        rows = s.exec(select(ReviewTally)).all()
    assert len(rows) == len(kept) == len({r.label for r in rows})  # every image pending: one key per class
