"""Home, Browse and Export pages (AppTest) on a real store: counts and next steps, filters and
click-through, the balance check with its override, snapshots listed and downloadable."""
from __future__ import annotations

from db.engine import session_scope
from db.models import ReviewAction, ReviewState
from db.review import claim_next, decide
from tests.app_store import app_for, engine_for, fill_store


def _page(at, page: str):
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def _approve_all(data, *, caption: str | None = None) -> None:
    engine = engine_for(data)
    with session_scope(engine) as s:
        while (item := claim_next(s, reviewer="ann")) is not None:
            action = ReviewAction.edit_approve if caption else ReviewAction.approve
            decide(s, image_id=item.image_id, reviewer="ann", action=action,
                   expected_version=item.version, caption=caption)
    engine.dispose()


def test_home_on_an_empty_store_says_what_to_do(tmp_path, monkeypatch):
    at = _page(app_for(tmp_path / "data", monkeypatch), "app_pages/home.py")
    assert "No images yet" in at.info[0].value
    assert [m.value for m in at.metric][:2] == ["0", "0"]


def test_home_counts_and_next_step(tmp_path, monkeypatch):
    fill_store(tmp_path / "data", per_class=2)
    at = _page(app_for(tmp_path / "data", monkeypatch), "app_pages/home.py")
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Images"], metrics["Teacher drafts"], metrics["Pending"]) == ("6", "6", "6")
    assert "100 approvals to go" in at.info[0].value


def test_browse_filters_and_opens_an_item_for_review(tmp_path, monkeypatch):
    data = tmp_path / "data"
    ids = fill_store(data, per_class=2, drafts={"cat": "A cat.", "dog": "A brown dog on a lawn."})
    at = _page(app_for(data, monkeypatch), "app_pages/browse.py")
    table = at.dataframe[-1].value
    assert len(table) == 6 and table["thumbnail"].str.startswith("data:image/png;base64,").all()
    at.multiselect(key="browse_labels").set_value(["dog"]).run()
    assert set(at.dataframe[-1].value["label"]) == {"dog"}
    at.multiselect(key="browse_labels").set_value([]).run()
    at.selectbox(key="browse_flag").set_value("too_short").run()  # "A cat." is too short
    assert sorted(at.dataframe[-1].value["image_id"]) == ids["cat"]
    at.selectbox(key="browse_flag").set_value(None)
    at.text_input(key="browse_text").input("LAWN").run()
    assert sorted(at.dataframe[-1].value["image_id"]) == ids["dog"]
    at.text_input(key="browse_text").input("")
    at.slider(key="browse_len").set_value((0, 10)).run()
    assert len(at.dataframe[-1].value) == 2  # only the two "A cat." captions are that short

    at.session_state["browse_table"] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    wanted = int(at.dataframe[-1].value.iloc[0]["image_id"])
    at.button(key="browse_open").click().run()
    assert at.session_state["shown"][0] == wanted  # the Review page holds that item now


def test_browse_states_chart_rates_and_reviewer_filter(tmp_path, monkeypatch):
    data = tmp_path / "data"
    fill_store(data, per_class=1)
    _approve_all(data)
    at = _page(app_for(data, monkeypatch), "app_pages/browse.py")
    rates = at.dataframe[0].value
    assert list(rates["approval_rate"]) == [1.0, 1.0, 1.0] and list(rates["edit_rate"]) == [0.0] * 3
    assert at.get("arrow_vega_lite_chart") or at.get("vega_lite_chart")
    at.multiselect(key="browse_states").set_value([ReviewState.pending]).run()
    assert at.dataframe[-1].value.empty
    at.multiselect(key="browse_states").set_value([])
    at.text_input(key="browse_reviewer").input("bob").run()
    assert at.dataframe[-1].value.empty
    at.text_input(key="browse_reviewer").input("ann").run()
    assert len(at.dataframe[-1].value) == 3


def test_export_needs_the_override_when_unbalanced(tmp_path, monkeypatch):
    data = tmp_path / "data"
    fill_store(data, per_class=1)
    _approve_all(data, caption="An approved caption with ünïcode ✓.")
    at = _page(app_for(data, monkeypatch), "app_pages/export.py")
    assert "below the target" in at.warning[0].value
    at.button(key="export_btn").click().run()
    assert "balance override" in at.error[0].value
    assert not (data / "exports").exists() or not list((data / "exports").glob("snap-*"))
    at.checkbox(key="override_balance").check().run()
    at.button(key="export_btn").click().run()
    assert "3 pairs" in at.success[-1].value
    [snap] = list((data / "exports").glob("snap-*"))
    assert any(snap.name in m.value for m in at.markdown)  # listed among past snapshots
    assert at.get("download_button")


def test_export_with_nothing_approved_is_disabled(tmp_path, monkeypatch):
    fill_store(tmp_path / "data", per_class=1)
    at = _page(app_for(tmp_path / "data", monkeypatch), "app_pages/export.py")
    assert at.button(key="export_btn").disabled
    assert "No snapshots yet" in at.info[0].value


def test_guidelines_are_editable_and_saved_to_a_file(tmp_path, monkeypatch):
    data = tmp_path / "data"
    fill_store(data, per_class=1)
    at = _page(app_for(data, monkeypatch), "app_pages/review.py")
    assert any("A good caption" in m.value for m in at.markdown)  # the built-in text first
    assert any("Hallucination" in t.value for t in at.text)  # with the reject reasons
    at.text_area(key="guidelines_text").input("Name the animal's **colour** first.").run()
    at.button(key="guidelines_save").click().run()
    assert (data / "guidelines.md").read_text(encoding="utf-8") == "Name the animal's **colour** first."
    at.run()
    assert any("colour" in m.value for m in at.markdown)
