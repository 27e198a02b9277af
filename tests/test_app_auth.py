"""The sign-in layer in the app (AppTest on a real store): the password form, the navigation each
role gets, pages a role cannot use, a forged `?reviewer=` in the URL, the Admin page, and local
mode refused on a non-loopback address."""
from __future__ import annotations

import pytest
from streamlit import config

from db.engine import session_scope
from db.models import Review, ReviewState
from db.users import get_user
from pipeline.identity import AuthMode, Role
from tests.app_store import add_account, app_for, engine_for, fill_store

CURATOR_PAGES = {"app_pages/export.py": "Export", "app_pages/train.py": "Train", "app_pages/jobs.py": "Jobs",
                 "app_pages/compare.py": "Batch compare", "app_pages/admin.py": "Users"}
PASSWORD = "correct horse battery staple"


@pytest.fixture
def data(tmp_path):
    d = tmp_path / "data"
    fill_store(d, per_class=1, drafts={"cat": "A small cat sits on a red sofa."})
    return d


def _titles(at) -> list[str]:
    return [t.value for t in at.title]


def test_a_reviewer_cannot_reach_export_train_jobs_or_admin(data, monkeypatch):
    at = app_for(data, monkeypatch, reviewer="rita", role=Role.reviewer)
    at.run()
    assert not at.exception, at.exception
    assert "Signed in: rita · reviewer" in [t.value for t in at.sidebar.text]
    for path in CURATOR_PAGES:  # not in this session's navigation at all
        with pytest.raises(ValueError, match="Could not find a navigation page"):
            at.switch_page(path)
    at.switch_page("app_pages/review.py").run()
    assert "Review" in _titles(at)  # their own page is there


def test_a_curator_reaches_export_but_not_admin_and_a_viewer_not_review(data, monkeypatch):
    at = app_for(data, monkeypatch, reviewer="cora", role=Role.curator)
    at.run().switch_page("app_pages/export.py").run()
    assert "Export" in _titles(at)
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page("app_pages/admin.py")
    viewer = app_for(data, monkeypatch, reviewer="vic", role=Role.viewer)
    viewer.run()
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        viewer.switch_page("app_pages/review.py")
    viewer.switch_page("app_pages/browse.py").run()
    assert "Browse" in _titles(viewer) and not viewer.exception


def test_a_signed_in_user_without_a_role_sees_nothing_but_a_note(data, monkeypatch):
    at = app_for(data, monkeypatch, reviewer="newbie", role=None)
    at.run()
    assert "no role yet" in at.info[0].value
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page("app_pages/browse.py")


def test_a_forged_reviewer_in_the_url_changes_nothing(data, monkeypatch):
    at = app_for(data, monkeypatch, reviewer="ann", role=Role.reviewer)
    at.query_params["reviewer"] = "mallory"
    at.run().switch_page("app_pages/review.py").run()
    assert not at.exception, at.exception
    image_id = at.session_state["shown"][0]
    at.button(key="btn-approve").click().run()
    engine = engine_for(data)
    with session_scope(engine) as s:
        row = s.get(Review, image_id)
        assert (row.state, row.reviewer) == (ReviewState.approved, "ann")
    engine.dispose()
    assert "mallory" not in str([t.value for t in at.sidebar.text])


def test_password_form_refuses_a_wrong_password_then_signs_in_and_out(data, monkeypatch):
    add_account(data, "ann", Role.curator, password=PASSWORD)
    at = app_for(data, monkeypatch, reviewer=None)
    at.run()
    at.text_input(key="sign_in_name").input("ann")
    at.text_input(key="sign_in_password").input("not it")
    at.button[0].click().run()
    assert at.error[0].value == "Wrong name or password." and "Caption studio: sign in" in _titles(at)
    at.text_input(key="sign_in_password").input(PASSWORD)
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert "Signed in: ann · curator" in [t.value for t in at.sidebar.text]
    at.switch_page("app_pages/jobs.py").run()
    assert "Jobs" in _titles(at)
    at.button(key="sign_out").click().run()
    assert "Caption studio: sign in" in _titles(at) and at.warning[0].value == "Signed out."


def test_the_admin_page_adds_a_user_and_changes_a_role(data, monkeypatch):
    at = app_for(data, monkeypatch, reviewer="root", role=Role.admin)
    at.run().switch_page("app_pages/admin.py").run()
    assert "Users" in _titles(at)
    at.text_input(key="admin_new_name").input("bob")
    at.text_input(key="admin_new_password").input("bob's long password")
    at.button(key="FormSubmitter:admin_add-Add user").click().run()
    assert "Added bob (reviewer)." in at.success[0].value, at.error
    at.selectbox(key="admin_who").set_value("bob")
    at.selectbox(key="admin_role").set_value(Role.curator)
    at.button(key="admin_set_role").click().run()
    assert at.success and "bob is now curator." in at.success[0].value, [e.value for e in at.error]
    engine = engine_for(data)
    with session_scope(engine) as s:
        assert get_user(s, name="bob").role == "curator"
    engine.dispose()


def test_local_mode_refuses_a_non_loopback_address(data, monkeypatch):
    at = app_for(data, monkeypatch, mode=AuthMode.local)
    before = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    try:
        at.run()
    finally:
        config.set_option("server.address", before)
    assert "Refusing to serve on 0.0.0.0 in local mode" in at.error[0].value
    assert "CAPSTUDIO_AUTH_MODE=password" in at.error[0].value
    assert "Caption studio" not in _titles(at)
    local = app_for(data, monkeypatch, mode=AuthMode.local)
    local.run()  # the repository's .streamlit/config.toml listens on 127.0.0.1
    assert not local.error and "Caption studio" in _titles(local)
    assert "(local (no sign-in, this machine only))" not in str(local.sidebar.caption)
    assert "Sign-in: local (no sign-in, this machine only)" in [c.value for c in local.sidebar.caption]
