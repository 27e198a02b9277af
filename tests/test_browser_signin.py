"""Sign-in end to end in Chromium (Playwright) against `streamlit run`:

- password mode: a wrong password is refused, the right one lands in the app with the account's
  role (a reviewer's navigation has Review but no Export/Jobs/Train/Users), sign-out returns to the
  form, and repeated wrong passwords lock the account (even the right password is then refused);
- OIDC mode: a real OpenID Connect provider process (`oidc-provider-mock`) started here, Streamlit's
  st.login() round trip through its authorization page, landing in the app as the provider's user
  with the role from the `groups` claim (a curator: Export is there, Users is not).
"""
from __future__ import annotations

import json
import sys

import pytest

from db.engine import session_scope
from db.users import get_user
from pipeline.identity import Role
from tests.app_store import REPO, add_account, engine_for, fill_store
from tests.browser import (
    CHROMIUM,
    LAUNCH_ARGS,
    free_port,
    needs_chromium,
    serve_until_ready,
    settle,
    streamlit_server,
)

OUT = REPO / "test-output" / "test_browser_signin"
PASSWORD = "correct horse battery staple"
COOKIE_SECRET = "f" * 64

pytestmark = needs_chromium


def _secrets(path, **auth) -> str:
    lines = ["[auth]", *(f"{k} = {json.dumps(v)}" for k, v in {"cookie_secret": COOKIE_SECRET, **auth}.items())]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _nav(page) -> list[str]:
    """The page names in the sidebar navigation (each link's text ends with its title, after the icon)."""
    return [t.strip().split("\n")[-1] for t in page.locator('[data-testid="stSidebarNav"] a').all_inner_texts()]


def _sign_in(page, name: str, password: str) -> None:
    page.get_by_role("textbox", name="Name").fill(name)
    page.get_by_role("textbox", name="Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


@pytest.fixture
def browser_page():
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield browser.new_page(viewport={"width": 1300, "height": 900})
        browser.close()


def test_password_sign_in_refusal_roles_sign_out_and_lock_out(tmp_path, browser_page):
    data = tmp_path / "data"
    fill_store(data, per_class=1)
    add_account(data, "ann", Role.reviewer, password=PASSWORD)
    add_account(data, "bob", Role.curator, password=PASSWORD)
    env = {"CAPSTUDIO_DATA_DIR": str(data), "CAPSTUDIO_AUTH_MODE": "password", "CAPSTUDIO_AUTH_MAX_FAILURES": "3"}
    args = ("--secrets.files", _secrets(tmp_path / "secrets.toml"))
    page = browser_page
    with streamlit_server(env=env, log_path=tmp_path / "streamlit.log", args=args) as url:
        page.goto(url)
        page.get_by_text("Caption studio: sign in").wait_for(timeout=30_000)
        assert _nav(page) == []  # nothing but the form before signing in
        _sign_in(page, "ann", "not her password")
        page.get_by_text("Wrong name or password.").wait_for(timeout=20_000)

        _sign_in(page, "ann", PASSWORD)
        page.get_by_text("Signed in: ann · reviewer").wait_for(timeout=30_000)
        settle(page)
        nav = _nav(page)
        assert "Review" in nav and "Browse" in nav
        assert not {"Export", "Jobs", "Train", "Batch compare", "Users"} & set(nav), nav
        page.get_by_text("Sign-in: password sign-in").wait_for()
        page.screenshot(path=str(OUT / "password_signed_in.png"), full_page=True)
        page.get_by_role("button", name="Sign out").click()
        page.get_by_text("Signed out.").wait_for(timeout=20_000)
        assert page.get_by_text("Signed in: ann").count() == 0

        for _ in range(2):
            _sign_in(page, "bob", "a wrong guess")
            page.get_by_text("Wrong name or password.").wait_for(timeout=20_000)
            settle(page)
        _sign_in(page, "bob", "a third wrong guess")
        page.get_by_text("Too many wrong passwords: bob is locked for 15 minutes.").wait_for(timeout=20_000)
        settle(page)
        _sign_in(page, "bob", PASSWORD)  # the right password, while locked
        page.get_by_text("bob is locked until", exact=False).wait_for(timeout=20_000)
        page.screenshot(path=str(OUT / "password_locked.png"), full_page=True)
        assert page.get_by_text("Signed in: bob").count() == 0


@pytest.fixture
def oidc_provider(tmp_path):
    """`oidc-provider-mock` on a free loopback port with one predefined user in the curator group."""
    port = free_port()
    olga = {"sub": "olga", "email": "olga@example.org", "groups": ["staff", "curator"]}
    argv = [sys.executable, "-m", "oidc_provider_mock", "--port", str(port), "--user-claims", json.dumps(olga)]
    issuer = f"http://127.0.0.1:{port}"
    with serve_until_ready(argv, ready_url=f"{issuer}/.well-known/openid-configuration",
                           ready=lambda body: bool(json.loads(body).get("issuer")), log_path=tmp_path / "oidc.log",
                           what="the OIDC provider"):
        yield issuer


def test_oidc_sign_in_through_st_login_lands_with_the_claimed_role(tmp_path, browser_page, oidc_provider):
    data = tmp_path / "data"
    fill_store(data, per_class=1)
    port = free_port()
    secrets = _secrets(tmp_path / "secrets.toml", redirect_uri=f"http://127.0.0.1:{port}/oauth2callback",
                       client_id="capstudio", client_secret="capstudio-secret",
                       server_metadata_url=f"{oidc_provider}/.well-known/openid-configuration")
    env = {"CAPSTUDIO_DATA_DIR": str(data), "CAPSTUDIO_AUTH_MODE": "oidc", "CAPSTUDIO_AUTH_ROLE_CLAIM": "groups"}
    page = browser_page
    with streamlit_server(env=env, log_path=tmp_path / "streamlit.log", args=("--secrets.files", secrets),
                          port=port) as url:
        page.goto(url)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("button", name="olga").click()  # the provider's own authorization page
        page.get_by_text("Signed in: olga@example.org · curator").wait_for(timeout=60_000)
        settle(page)
        nav = _nav(page)
        assert {"Review", "Export", "Jobs", "Train"} <= set(nav) and "Users" not in nav, nav
        page.get_by_text("Sign-in: single sign-on (OIDC)").wait_for()
        page.screenshot(path=str(OUT / "oidc_signed_in.png"), full_page=True)
        engine = engine_for(data)
        with session_scope(engine) as s:  # known to the store now (its own role: none until granted)
            assert get_user(s, name="olga@example.org").role is None
        engine.dispose()
        page.get_by_role("button", name="Sign out").click()
        # RP-initiated logout: st.logout() sends the browser to the provider's end_session page,
        # which asks the user to confirm, then redirects back to the app
        page.get_by_role("button", name="End session").click(timeout=30_000)
        page.get_by_role("button", name="Sign in").wait_for(timeout=30_000)
        assert page.get_by_text("Signed in: olga").count() == 0
