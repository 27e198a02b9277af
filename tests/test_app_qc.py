"""Quality-control pages (AppTest) on a real store: the blind second review, the adjudication queue
with the QC policy control, and the reviewer statistics page."""
from __future__ import annotations

import re

import pytest
from sqlmodel import select

from db import qc
from db.engine import session_scope
from db.models import OpinionState, QcPolicyRow, Review, ReviewAction, ReviewEvent, SecondOpinion, Verdict
from db.review import claim_next, decide
from pipeline.identity import Role
from tests.app_store import app_for, engine_for, fill_store

ALL = qc.QcPolicy(enabled=True, sample_fraction=1.0)
ANN_CAPTION = "ANN WROTE THIS: a tabby cat on a red sofa."


@pytest.fixture
def store(tmp_path):
    """Three items, decided by ann (the cat one with her own caption), all routed to a second review."""
    data = tmp_path / "data"
    ids = fill_store(data, drafts={"cat": "A small cat sits on a red sofa.", "dog": "A brown dog runs on the grass.",
                                   "ship": "A white ship at sea."})
    engine = engine_for(data)
    with session_scope(engine) as s:
        qc.set_policy(s, policy=ALL, curator="cur")
        while (item := claim_next(s, reviewer="ann")) is not None:
            edit = item.label == "cat"
            decide(s, image_id=item.image_id, reviewer="ann", expected_version=item.version,
                   action=ReviewAction.edit_approve if edit else ReviewAction.approve,
                   caption=ANN_CAPTION if edit else item.draft_text)
            qc.route_decision(s, image_id=item.image_id, policy=ALL)
    yield data, ids, engine
    engine.dispose()


def _open(data, monkeypatch, page, *, name, role):
    at = app_for(data, monkeypatch, reviewer=name, role=role)
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def _opinions(engine) -> dict[int, SecondOpinion]:
    with session_scope(engine) as s:
        return {o.image_id: o for o in s.exec(select(SecondOpinion)).all()}


def _shown_text(at) -> str:
    parts = [e.value for e in (*at.text, *at.code, *at.text_area, *at.markdown, *at.caption)]
    return "\n".join(str(p) for p in parts)


def test_second_review_is_blind_and_never_touches_the_first_decision(store, monkeypatch):
    data, ids, engine = store
    at = _open(data, monkeypatch, "app_pages/second_review.py", name="bob", role=Role.reviewer)
    opinion_id, version, draft = at.session_state["second_shown"]
    assert draft == "A small cat sits on a red sofa." and ANN_CAPTION not in _shown_text(at)
    assert not re.search(r"\bann\b", _shown_text(at))  # nor who decided it
    at.text_area(key=f"second-caption-{opinion_id}-{version}").input("A cat sleeping on a sofa.")
    at.button(key="second-edit").click().run()
    assert at.success[0].value == "Second opinion approved with your edit: saved."
    cat = _opinions(engine)[ids["cat"][0]]
    assert (cat.second_reviewer, cat.second_verdict, cat.second_caption, cat.state) == (
        "bob", Verdict.edit, "A cat sleeping on a sofa.", OpinionState.disputed)
    with session_scope(engine) as s:  # the item keeps ann's decision
        assert s.get(Review, ids["cat"][0]).final_caption == ANN_CAPTION
    # the next item follows; a reject without a reason is refused with a message
    assert at.session_state["second_shown"][0] != opinion_id
    at.button(key="second-reject").click().run()
    assert "needs a reason" in at.error[0].value
    at.button(key="second-approve").click().run()
    at.button(key="second-approve").click().run()
    assert at.success[-1].value == "No second reviews are waiting for you."
    states = sorted(o.state.value for o in _opinions(engine).values())
    assert states == ["agreed", "agreed", "disputed"]


def test_first_reviewer_gets_no_second_review_of_her_own_items(store, monkeypatch):
    data, _, _ = store
    at = _open(data, monkeypatch, "app_pages/second_review.py", name="ann", role=Role.reviewer)
    assert at.success[0].value == "No second reviews are waiting for you."


def _dispute(engine, image_id):
    with session_scope(engine) as s:
        o = s.exec(select(SecondOpinion).where(SecondOpinion.image_id == image_id)).one()
        qc.decide_second(s, opinion_id=o.id, reviewer="bob", verdict=Verdict.edit,
                         caption="A grey cat asleep on a sofa.", expected_version=o.version)


def test_adjudication_queue_merges_and_logs_the_curator(store, monkeypatch):
    data, ids, engine = store
    cat = ids["cat"][0]
    _dispute(engine, cat)
    at = _open(data, monkeypatch, "app_pages/adjudicate.py", name="cur", role=Role.curator)
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["waiting"], metrics["disputed"], metrics["agreement"]) == ("2", "1", "0%")
    shown = _shown_text(at)
    assert ANN_CAPTION in shown and "A grey cat asleep on a sofa." in shown  # side by side, as text
    [diff] = [c.value for c in at.code if c.language == "diff"]  # the word diff, first to second
    assert "- ANN WROTE THIS: a tabby\n+ A grey\n  cat\n+ asleep" in diff
    o = _opinions(engine)[cat]
    at.text_area(key=f"adj_merged-{o.id}-{o.version}").input("A grey tabby cat asleep on a red sofa.")
    at.button(key="adj_merge").click().run()
    assert at.success[0].value == f"Item {cat}: approved the merged caption."
    with session_scope(engine) as s:
        review = s.get(Review, cat)
        event = s.exec(select(ReviewEvent).where(ReviewEvent.image_id == cat).order_by(ReviewEvent.id.desc())).first()
    assert (review.final_caption, review.reviewer) == ("A grey tabby cat asleep on a red sofa.", "cur")
    assert (event.action, event.reviewer, event.note) == (ReviewAction.adjudicate, "cur", "adjudication: merged")
    assert _opinions(engine)[cat].state == OpinionState.adjudicated
    assert any(s.value == "No disagreements to adjudicate." for s in at.success)


def test_policy_control_switches_qc_off_and_on(store, monkeypatch):
    data, _, engine = store
    at = _open(data, monkeypatch, "app_pages/adjudicate.py", name="cur", role=Role.curator)
    at.toggle(key="qc_enabled").set_value(False)
    at.slider(key="qc_fraction").set_value(0.35)
    at.button(key="qc_save").click().run()
    assert "Quality control is off" in at.success[0].value
    with session_scope(engine) as s:
        row = s.get(QcPolicyRow, 1)
    assert (row.enabled, row.sample_fraction, row.updated_by) == (False, 0.35, "cur")


def test_stats_page_shows_reviewer_numbers(store, monkeypatch):
    data, ids, engine = store
    _dispute(engine, ids["cat"][0])
    with session_scope(engine) as s:
        for image_id in (ids["dog"][0], ids["ship"][0]):
            o = s.exec(select(SecondOpinion).where(SecondOpinion.image_id == image_id)).one()
            qc.decide_second(s, opinion_id=o.id, reviewer="bob", verdict=Verdict.approve, expected_version=o.version)
    at = _open(data, monkeypatch, "app_pages/stats.py", name="cur", role=Role.curator)
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["items reviewed twice"], metrics["agreement"]) == ("3", "67%")
    table = at.dataframe[0].value.set_index("reviewer")
    assert table.loc["ann", "decisions"] == 3 and table.loc["ann", "edit_share"] == pytest.approx(1 / 3)
    assert table.loc["bob", "second_opinions"] == 3 and table.loc["bob", "agreement_rate"] == pytest.approx(2 / 3)
    assert len(at.get("arrow_vega_lite_chart") or at.get("vega_lite_chart")) == 3
    assert set(at.dataframe[1].value["reviewer"]) == {"ann", "bob"}
