"""Quality control at the store: routing to a blind second review (never back to the first reviewer,
the sample fraction holds), agreement and kappa against hand-computed values, adjudication in the
event log and in what an export includes, and QC off leaving exports as they were."""
from __future__ import annotations

import json
import threading

import pytest
from sqlmodel import select

from db import qc
from db.engine import session_scope
from db.errors import InvalidActionError, StaleWriteError
from db.models import (
    Adjudication,
    Image,
    OpinionState,
    RejectReason,
    Review,
    ReviewAction,
    ReviewEvent,
    SecondOpinion,
    SourceKind,
    Verdict,
)
from db.review import decide, events_for_image, get_item
from pipeline.agreement import figures, pairs_of, per_reviewer
from pipeline.data.export import balance_report, export_snapshot
from pipeline.data.snapshot import read_snapshot
from pipeline.reviewer_stats import reviewer_stats
from tests.conftest import both_backends, seed_images

ALL = qc.QcPolicy(enabled=True, sample_fraction=1.0, route_edited=True)


def _first(engine, image_id, reviewer, action=ReviewAction.approve, caption=None, reason=None,
           policy=ALL) -> SecondOpinion | None:
    """A first decision as the review service makes it: decide, then route."""
    with session_scope(engine) as s:
        item = get_item(s, image_id=image_id)
        if action == ReviewAction.approve:
            caption = item.draft_text
        decide(s, image_id=image_id, reviewer=reviewer, action=action, expected_version=item.version,
               caption=caption, reason=reason)
        return qc.route_decision(s, image_id=image_id, policy=policy)


def _second(engine, reviewer, verdict, caption=None, reason=None) -> SecondOpinion:
    with session_scope(engine) as s:
        item = qc.claim_second(s, reviewer=reviewer)
        assert item is not None, f"nothing waits for {reviewer}"
        return qc.decide_second(s, opinion_id=item.opinion_id, reviewer=reviewer, verdict=verdict,
                                expected_version=item.version, caption=caption, reason=reason)


def test_routing_never_sends_an_item_back_to_its_first_reviewer(engine):
    ids = seed_images(engine, {"cat": 3, "dog": 3})
    for i in ids[:3]:
        _first(engine, i, "ann")
    for i in ids[3:]:
        _first(engine, i, "bob")
    with session_scope(engine) as s:
        claimed = []
        while (item := qc.claim_second(s, reviewer="ann")) is not None:
            opinion = s.get(SecondOpinion, item.opinion_id)
            assert opinion.first_reviewer == "bob"
            claimed.append(item.image_id)
            qc.decide_second(s, opinion_id=item.opinion_id, reviewer="ann", verdict=Verdict.approve,
                             expected_version=item.version)
        assert sorted(claimed) == ids[3:]  # all of bob's, none of her own
        own = s.exec(select(SecondOpinion).where(SecondOpinion.image_id == ids[0])).one()
        with pytest.raises(InvalidActionError, match="someone else"):
            qc.decide_second(s, opinion_id=own.id, reviewer="ann", verdict=Verdict.approve,
                             expected_version=own.version)
    # bob's claim on ann's item; then bob himself re-decides that item first: his claim is dropped
    with session_scope(engine) as s:
        item = qc.claim_second(s, reviewer="bob")
    with session_scope(engine) as s:
        decide(s, image_id=item.image_id, reviewer="bob", action=ReviewAction.reopen,
               expected_version=get_item(s, image_id=item.image_id).version)
        qc.route_decision(s, image_id=item.image_id, policy=ALL)
    _first(engine, item.image_id, "bob")
    with session_scope(engine) as s:
        opinion = s.exec(select(SecondOpinion).where(SecondOpinion.image_id == item.image_id)).one()
        assert (opinion.first_reviewer, opinion.claimed_by, opinion.state) == ("bob", None, OpinionState.waiting)
        assert qc.claim_second(s, reviewer="bob").image_id != item.image_id


def _records(path) -> list:
    snap = read_snapshot(path)
    return snap.train + snap.validation


def _bulk_images(engine, n: int) -> list[int]:
    """n items with drafts (tiny stand-in PNG bytes: routing never decodes them)."""
    from db.catalog import add_draft, add_image

    ids = []
    with session_scope(engine) as s:
        for i in range(n):
            image, _ = add_image(s, source_kind=SourceKind.upload, source_key=f"bulk:{i}", label="cat",
                                 png=b"png%d" % i, content_hash=f"h{i}", width=32, height=32)
            add_draft(s, image_id=image.id, text="A cat.", model_id="t", prompt="p")
            ids.append(image.id)
    return ids


def test_sample_fraction_holds_on_a_thousand_items(engine):
    ids = _bulk_images(engine, 1000)
    policy = qc.QcPolicy(enabled=True, sample_fraction=0.2, route_edited=False)
    with session_scope(engine) as s:
        for i in ids:
            edit = i % 3 == 0
            decide(s, image_id=i, reviewer="ann", action=ReviewAction.edit_approve if edit else ReviewAction.approve,
                   expected_version=1, caption="A cat on a mat." if edit else "A cat.")
            qc.route_decision(s, image_id=i, policy=policy)
        routed = s.exec(select(SecondOpinion)).all()
    assert 170 <= len(routed) <= 230, len(routed)  # 200 expected; binomial sd ~12.6
    assert {o.routed_because.value for o in routed} == {"sample"}
    # the draw is stable, and route_edited adds every edited item to that same sample
    sampled = {o.image_id for o in routed}
    with session_scope(engine) as s:
        for o in s.exec(select(SecondOpinion)).all():
            s.delete(o)
    with session_scope(engine) as s:
        n = qc.route_decided(s, policy=qc.QcPolicy(enabled=True, sample_fraction=0.2, route_edited=True))
        again = {o.image_id for o in s.exec(select(SecondOpinion)).all()}
    assert n == len(again) and again == sampled | {i for i in ids if i % 3 == 0}


def test_agreement_and_kappa_match_hand_computed_values(engine):
    ids = seed_images(engine, {"cat": 3, "dog": 3})
    firsts = [(ReviewAction.edit_approve, "A cat."), (ReviewAction.edit_approve, "A red car."),
              (ReviewAction.reject, None), (ReviewAction.edit_approve, "A dog."),
              (ReviewAction.reject, None), (ReviewAction.edit_approve, "A dog runs.")]
    for i, (action, caption) in zip(ids, firsts):
        _first(engine, i, "ann", action, caption=caption, reason=RejectReason.too_vague)
    seconds = [("bob", Verdict.edit, "a  CAT"), ("bob", Verdict.edit, "A blue car."), ("bob", Verdict.reject, None),
               ("cy", Verdict.reject, None), ("cy", Verdict.edit, "A dog sleeps."), ("cy", Verdict.edit, "a dog runs")]
    states = [_second(engine, name, v, caption=c, reason=RejectReason.hallucination).state
              for name, v, c in seconds]
    assert states == [OpinionState.agreed, OpinionState.disputed, OpinionState.agreed, OpinionState.disputed,
                      OpinionState.disputed, OpinionState.agreed]
    with session_scope(engine) as s:
        pairs = pairs_of(qc.compared(s))
    overall = figures(pairs)
    # approve/reject: ann 1,1,0,1,0,1; second 1,1,0,0,1,1 -> p_o 4/6, p_e (4/6)^2 + (2/6)^2 = 5/9, kappa 1/4
    assert (overall.n_items, overall.n_agreed, overall.agreement_rate) == (6, 3, 0.5)
    assert overall.kappa == pytest.approx(0.25)
    # both approved: items 1 (1.0), 2 (ROUGE-L of "a red car"/"a blue car": 2/3), 6 (1.0)
    assert overall.mean_similarity == pytest.approx((1 + 2 / 3 + 1) / 3)
    by = per_reviewer(pairs)
    assert (by["bob"].agreement_rate, by["bob"].kappa) == (pytest.approx(2 / 3), pytest.approx(1.0))
    # cy vs ann: 0,1,1 vs 1,0,1 -> p_o 1/3, p_e 5/9, kappa -1/2
    assert (by["cy"].agreement_rate, by["cy"].kappa) == (pytest.approx(1 / 3), pytest.approx(-0.5))
    assert by["ann"].n_items == 6 and by["ann"].kappa == pytest.approx(0.25)
    with session_scope(engine) as s:
        stats = {r.reviewer: r for r in reviewer_stats(s).per_reviewer}
    assert (stats["ann"].decisions, stats["ann"].edit_share, stats["ann"].reject_share) == (6, 4 / 6, 2 / 6)
    assert stats["ann"].top_reject_reasons == "too_vague (2)"
    # edits against the draft "A cat photo {i}.": "A cat." changes 2 words, "A red car." 3, "A dog." 3, ...
    assert stats["cy"].second_opinions == 3 and stats["cy"].kappa == pytest.approx(-0.5)


def test_adjudication_writes_events_and_changes_what_export_includes(settings, engine):
    settings = settings.model_copy(update={"target_per_class": 1})
    ids = seed_images(engine, {"cat": 1, "dog": 1})
    with session_scope(engine) as s:
        qc.set_policy(s, policy=ALL, curator="cur")
    for i in ids:
        _first(engine, i, "ann")
    assert balance_report(settings, engine).counts["cat"] == 0  # both held until the second review
    disputed = _second(engine, "bob", Verdict.edit, caption="A tabby cat asleep.")  # cat: differs
    _second(engine, "bob", Verdict.approve)  # dog: agrees
    assert (balance_report(settings, engine).counts["cat"], balance_report(settings, engine).counts["dog"]) == (0, 1)
    before = export_snapshot(settings, engine, override_balance=True)
    assert [r.label for r in _records(before.path)] == ["dog"]

    with session_scope(engine) as s:
        [opinion] = qc.disputed(s)
        qc.adjudicate(s, opinion_id=opinion.id, curator="cur", choice=Adjudication.merged,
                      caption="A tabby cat asleep on a sofa.", expected_version=opinion.version)
        event = events_for_image(s, image_id=disputed.image_id)[-1]
        review = s.get(Review, disputed.image_id)
    assert (event.action, event.reviewer, event.after_caption) == (
        ReviewAction.adjudicate, "cur", "A tabby cat asleep on a sofa.")
    assert (review.final_caption, review.reviewer) == ("A tabby cat asleep on a sofa.", "cur")
    after = export_snapshot(settings, engine, override_balance=True)
    captions = {r.label: r.text for r in _records(after.path)}
    assert captions == {"cat": "A tabby cat asleep on a sofa.", "dog": "A dog photo 0."}
    manifest = json.loads((after.path / "manifest.json").read_text())
    assert manifest["provenance"]["quality_control"]["agreement_rate"] == 0.5
    assert "reviewer agreement (blind second review of 2 items): rate 0.500" in (after.path / "README.md").read_text()
    with session_scope(engine) as s:  # the second reviewer's version never touched the review row
        assert s.exec(select(ReviewEvent).where(ReviewEvent.reviewer == "bob")).all() == []


def test_qc_off_routes_nothing_and_export_is_unchanged(settings, engine):
    ids = seed_images(engine, {"cat": 2, "dog": 1})
    off = qc.QcPolicy()
    for i in ids:
        assert _first(engine, i, "ann", policy=off) is None
    with session_scope(engine) as s:
        assert s.exec(select(SecondOpinion)).all() == []
    plain = export_snapshot(settings, engine, override_balance=True)
    # opinions left from a time QC was on, then a curator switched it off: exports ignore them
    with session_scope(engine) as s:
        qc.route_decided(s, policy=ALL)
        qc.set_policy(s, policy=qc.QcPolicy(enabled=False), curator="cur")
    again = export_snapshot(settings, engine, override_balance=True)
    assert again.content_hash == plain.content_hash and again.n_items == 3
    manifest = json.loads((again.path / "manifest.json").read_text())
    assert "quality_control" not in manifest["provenance"]
    assert balance_report(settings, engine).counts["cat"] == 2


@both_backends
def test_concurrent_second_reviewers_never_get_the_same_item(engine):
    ids = seed_images(engine, {"cat": 4})
    for i in ids:
        _first(engine, i, "ann")
    got: dict[str, list[int]] = {"bob": [], "cy": []}
    barrier = threading.Barrier(2)

    def work(name: str) -> None:
        barrier.wait()
        for _ in range(2):
            with session_scope(engine) as s:
                item = qc.claim_second(s, reviewer=name)
                got[name].append(item.image_id)
                qc.decide_second(s, opinion_id=item.opinion_id, reviewer=name, verdict=Verdict.approve,
                                 expected_version=item.version)

    threads = [threading.Thread(target=work, args=(n,)) for n in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got["bob"] + got["cy"]) == ids
    with session_scope(engine) as s:
        assert {o.state for o in s.exec(select(SecondOpinion)).all()} == {OpinionState.agreed}
        assert s.exec(select(Image)).all()


def test_review_service_routes_each_decision_and_undo_withdraws_it(engine):
    from pipeline.identity import Actor, Role
    from pipeline.services import review

    ids = seed_images(engine, {"cat": 1})
    ann = Actor("ann", Role.reviewer)
    spec = review.QueueSpec(target_per_class=1, qc_default=ALL)  # QC on from the settings
    view = review.open_review(engine, actor=ann, spec=spec)
    review.submit_decision(engine, actor=ann, spec=spec, image_id=ids[0], expected_version=view.item.version,
                           action=ReviewAction.edit_approve, caption="A cat on a wall.")
    with session_scope(engine) as s:
        [opinion] = s.exec(select(SecondOpinion)).all()
    assert (opinion.first_reviewer, opinion.first_verdict, opinion.first_caption) == ("ann", Verdict.edit,
                                                                                    "A cat on a wall.")
    review.undo(engine, actor=ann, spec=spec)
    with session_scope(engine) as s:  # nothing decided, nothing to compare: withdrawn, not deleted
        [withdrawn] = s.exec(select(SecondOpinion)).all()
        assert (withdrawn.id, withdrawn.state) == (opinion.id, OpinionState.withdrawn)
        assert qc.claim_second(s, reviewer="bob") is None


@both_backends
def test_a_dispute_whose_item_goes_back_to_review_leaves_the_adjudication_queue(engine):
    """Issue 13: sending a disputed item back to review (or undoing it) withdraws its second opinion,
    kept with its two decisions; deciding the item again compares the new decision with the second."""
    from pipeline.identity import Actor, Role
    from pipeline.services import compare, review

    cat, dog = seed_images(engine, {"cat": 1, "dog": 1})
    for i in (cat, dog):
        _first(engine, i, "ann")
        _second(engine, "bob", Verdict.edit, caption=f"A different caption {i}.")
    with session_scope(engine) as s:
        assert [o.image_id for o in qc.disputed(s)] == [cat, dog]
        [stale] = [o for o in qc.disputed(s) if o.image_id == cat]
    sent = compare.send_back(engine, actor=Actor("cur", Role.curator), image_ids=[cat])
    assert sent.reopened == [cat], sent.message
    spec = review.QueueSpec(target_per_class=1, qc_default=ALL)
    ann = Actor("ann", Role.reviewer)
    review.undo(engine, actor=ann, spec=spec)  # ann's last decision: the dog
    with session_scope(engine) as s:
        assert qc.disputed(s) == []  # neither is offered for adjudication any more
        rows = {o.image_id: o for o in s.exec(select(SecondOpinion)).all()}
        assert {i: o.state for i, o in rows.items()} == {cat: OpinionState.withdrawn, dog: OpinionState.withdrawn}
        assert rows[cat].second_caption == f"A different caption {cat}."  # both decisions kept
        assert qc.held_image_ids(s) == set() and qc.compared(s) == []
        assert qc.state_counts(s)["withdrawn"] == 2
        with pytest.raises(StaleWriteError):  # a curator who opened the dispute before it was withdrawn
            qc.adjudicate(s, opinion_id=stale.id, curator="cur", choice=Adjudication.first,
                          expected_version=stale.version)
    _first(engine, cat, "cy", action=ReviewAction.edit_approve, caption=f"A different caption {cat}.")
    with session_scope(engine) as s:
        again = s.exec(select(SecondOpinion).where(SecondOpinion.image_id == cat)).one()
        assert (again.state, again.first_reviewer, again.second_reviewer) == (OpinionState.agreed, "cy", "bob")


def test_stats_cli_prints_the_page_numbers_as_json(settings, engine, monkeypatch):
    from typer.testing import CliRunner

    from pipeline.cli import app

    ids = seed_images(engine, {"cat": 2})
    for i in ids:
        _first(engine, i, "ann")
    _second(engine, "bob", Verdict.reject, reason=RejectReason.too_vague)
    monkeypatch.setenv("CAPSTUDIO_DATA_DIR", str(settings.data_dir))
    monkeypatch.delenv("CAPSTUDIO_DATABASE_URL", raising=False)
    result = CliRunner().invoke(app, ["stats"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    with session_scope(engine) as s:
        assert out == json.loads(json.dumps(reviewer_stats(s).as_dict()))
    bob = next(r for r in out["per_reviewer"] if r["reviewer"] == "bob")
    assert (bob["decisions"], bob["reject_share"], bob["top_reject_reasons"], bob["agreement_rate"]) == (
        1, 1.0, "too_vague (1)", 0.0)


def test_a_qc_export_trains_a_student(settings, engine, tiny_phi3, tmp_path):
    """The last step of the QC loop: an export made of agreed and adjudicated items trains a student."""
    from pipeline.student.config import StudentConfig, TrainConfig
    from pipeline.student.train import train
    from tests.conftest_student import TINY_STUDENT

    ids = seed_images(engine, {"cat": 1, "dog": 1})
    with session_scope(engine) as s:
        qc.set_policy(s, policy=ALL, curator="cur")
    for i in ids:
        _first(engine, i, "ann")
    _second(engine, "bob", Verdict.edit, caption="A tabby cat asleep.")
    _second(engine, "bob", Verdict.approve)
    with session_scope(engine) as s:
        [opinion] = qc.disputed(s)
        qc.adjudicate(s, opinion_id=opinion.id, curator="cur", choice=Adjudication.second,
                      expected_version=opinion.version)
    snap = export_snapshot(settings, engine, override_balance=True, val_fraction=0.0)
    assert {r.text for r in _records(snap.path)} == {"A tabby cat asleep.", "A dog photo 0."}
    out = tmp_path / "student"
    metrics = train(snapshot_dir=snap.path, out_dir=out, device="cpu", show_progress=False,
                    student_config=StudentConfig(base_model=str(tiny_phi3), **TINY_STUDENT),
                    train_config=TrainConfig(max_steps=2, batch_size=2, checkpoint_every=0, seed=0))
    assert json.loads((out / "snapshot.json").read_text())["content_hash"] == snap.content_hash
    assert (metrics["status"], metrics["optimizer_steps"], metrics["n_train"]) == ("completed", 2, 2)
