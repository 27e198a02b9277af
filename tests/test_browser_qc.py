"""Quality control end to end in Chromium (Playwright) against `streamlit run` in password mode: ann
reviews two items, bob (a second browser context) gives blind second opinions and disagrees on one,
the curator adjudicates it with a merged caption, reads the Stats page and exports; the snapshot holds
the adjudicated caption. Screenshots of every step go to $CAPSTUDIO_QC_SCREENS (default: a tmp dir)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlmodel import select

from db.engine import session_scope
from db.models import ReviewAction, ReviewEvent
from pipeline.data.snapshot import read_snapshot
from pipeline.identity import Role
from tests.app_store import add_account, engine_for, fill_store
from tests.browser import CHROMIUM, LAUNCH_ARGS, needs_chromium, settle, streamlit_server

PASSWORD = "correct horse battery staple"
DRAFTS = {"cat": "A small cat sits on a red sofa.", "dog": "A brown dog runs on the grass."}
BOB_CAT = "A grey cat sleeps on a sofa."
MERGED = "A small grey cat sleeps on a red sofa."

pytestmark = needs_chromium


@pytest.fixture
def screens(tmp_path) -> Path:
    out = Path(os.environ.get("CAPSTUDIO_QC_SCREENS") or tmp_path / "screens")
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture
def server(tmp_path):
    """Two pending items; QC on from the settings with every decided item sampled."""
    data = tmp_path / "data"
    fill_store(data, per_class=1, classes=("cat", "dog"), drafts=DRAFTS)
    for name, role in (("ann", Role.reviewer), ("bob", Role.reviewer), ("cur", Role.curator)):
        add_account(data, name, role, password=PASSWORD)
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(f'[auth]\ncookie_secret = "{"e" * 64}"\n')
    env = {"CAPSTUDIO_DATA_DIR": str(data), "CAPSTUDIO_AUTH_MODE": "password", "CAPSTUDIO_TARGET_PER_CLASS": "1",
           "CAPSTUDIO_QC_ENABLED": "true", "CAPSTUDIO_QC_SAMPLE_FRACTION": "1.0"}
    with streamlit_server(env=env, log_path=tmp_path / "streamlit.log",
                          args=("--secrets.files", str(secrets))) as url:
        yield url, data


def _signed_in(browser, url: str, name: str):
    """A fresh browser context (its own cookies and session) signed in as `name`."""
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(url)
    page.get_by_role("textbox", name="Name").fill(name)
    page.get_by_role("textbox", name="Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text(f"Signed in: {name}").wait_for(timeout=30_000)
    settle(page)
    return page


def _go(page, title: str) -> None:
    """Open a page from the sidebar navigation (a reload would start a new, signed-out session)."""
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
    page.get_by_role("heading", name=title if title != "Stats" else "Reviewer statistics").first.wait_for(
        timeout=30_000)
    settle(page)


def _click(page, button: str, then: str) -> None:
    page.get_by_role("button", name=button).first.click()
    page.get_by_text(then, exact=False).first.wait_for(timeout=30_000)
    settle(page)


def test_two_reviewers_disagree_and_a_curator_adjudicates(server, screens):
    from playwright.sync_api import expect, sync_playwright

    url, data = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        ann = _signed_in(browser, url, "ann")
        _go(ann, "Review")
        for _ in DRAFTS:  # approve both drafts as they are
            _click(ann, "Approve", "approved: saved")
        ann.screenshot(path=str(screens / "1_ann_reviewed.png"), full_page=True)

        bob = _signed_in(browser, url, "bob")
        _go(bob, "Second review")
        # the draft, not ann's decision (waits: under load the box is drawn before its value arrives)
        expect(bob.locator("textarea").first).to_have_value(DRAFTS["cat"], timeout=30_000)
        bob.screenshot(path=str(screens / "2_bob_second_review_blind.png"), full_page=True)
        bob.locator("textarea").first.fill(BOB_CAT)
        bob.locator("textarea").first.press("Tab")  # commit the text before the click
        settle(bob)
        _click(bob, "Save edit", "Second opinion approved with your edit")
        _click(bob, "Approve", "No second reviews are waiting for you.")
        bob.screenshot(path=str(screens / "3_bob_done.png"), full_page=True)

        cur = _signed_in(browser, url, "cur")
        _go(cur, "Adjudicate")
        cur.get_by_text("Disagreement on item", exact=False).first.wait_for(timeout=30_000)
        settle(cur)
        cur.screenshot(path=str(screens / "4_curator_adjudication_queue.png"), full_page=True)
        cur.get_by_text(BOB_CAT).first.wait_for(timeout=10_000)  # both versions, shown as text
        cur.screenshot(path=str(screens / "4_curator_adjudication_queue.png"), full_page=True)
        merged_box = cur.get_by_role("textbox", name="Merged caption (edit, then approve it)")
        merged_box.fill(MERGED)
        merged_box.press("Tab")
        settle(cur)
        _click(cur, "Approve merged caption", "approved the merged caption")
        cur.get_by_text("No disagreements to adjudicate.").wait_for(timeout=30_000)
        cur.screenshot(path=str(screens / "5_curator_adjudicated.png"), full_page=True)

        _go(cur, "Stats")
        cur.locator('[data-testid="stVegaLiteChart"]').first.wait_for(timeout=30_000)
        metrics = cur.locator('[data-testid="stMetric"]').all_inner_texts()
        cur.screenshot(path=str(screens / "6_stats.png"), full_page=True)
        (screens / "stats_metrics.json").write_text(json.dumps([m.split("\n") for m in metrics], indent=1))

        _go(cur, "Export")
        cur.get_by_text("8 class(es) below the target", exact=False).first.wait_for(timeout=30_000)  # cat, dog: 1
        cur.get_by_text("Export anyway", exact=False).first.click()
        settle(cur)
        _click(cur, "Export snapshot", "pairs (")
        cur.screenshot(path=str(screens / "7_export.png"), full_page=True)
        browser.close()

    shown = {m.split("\n")[0]: m.split("\n")[-1] for m in metrics}
    assert (shown["items reviewed twice"], shown["agreement"]) == ("2", "50%")
    [snapshot] = sorted((data / "exports").glob("snap-*"))
    snap = read_snapshot(snapshot)
    assert sorted(r.text for r in snap.train + snap.validation) == sorted([MERGED, DRAFTS["dog"]])
    assert "reviewer agreement (blind second review of 2 items): rate 0.500" in (snapshot / "README.md").read_text()
    engine = engine_for(data)
    with session_scope(engine) as s:
        [event] = s.exec(select(ReviewEvent).where(ReviewEvent.action == ReviewAction.adjudicate)).all()
    engine.dispose()
    assert (event.reviewer, event.after_caption) == ("cur", MERGED)
