"""End to end in a real browser: Chromium (Playwright) against `streamlit run`. Three items are
reviewed with the keyboard only (approve, edit with the diff, skip + undo, approve), the
snapshot is exported on the Export page, and `datasets` loads it with those captions. The browser
review card keeps every one of 50 keys pressed as fast as possible, and refuses visibly."""
from __future__ import annotations

import getpass
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from db.engine import session_scope
from db.models import RejectReason, Review, ReviewAction, ReviewEvent
from tests.app_store import REPO, engine_for, fill_store
from tests.browser import CHROMIUM, LAUNCH_ARGS, needs_chromium, settle, streamlit_server

OUT = REPO / "test-output" / "test_browser_review"

pytestmark = needs_chromium


@pytest.fixture
def server(tmp_path):
    """`streamlit run` on a free port over a store of 6 pending items (cat, dog, ship × 2)."""
    data = tmp_path / "data"
    fill_store(data, per_class=2, drafts={"cat": "A small cat sits on a red sofa.",
                                          "dog": "A brown dog runs on the grass.",
                                          "ship": "A white ship sails at sea."})
    env = {"CAPSTUDIO_DATA_DIR": str(data), "CAPSTUDIO_TARGET_PER_CLASS": "1"}
    with streamlit_server(env=env, log_path=tmp_path / "streamlit.log") as url:
        yield url, data


def _caption(page) -> str:
    return page.locator("textarea").first.input_value()


def _wait_saved(page, what: str) -> None:
    page.get_by_text(what, exact=False).first.wait_for(timeout=20_000)
    settle(page)


def _tab_to_textarea(page) -> None:
    for _ in range(60):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement && document.activeElement.tagName") == "TEXTAREA":
            return
    pytest.fail("Tab never reached the caption box")


def _review_by_keyboard(page) -> list[str]:
    """Approve (A), edit (Tab, type, Ctrl+Enter twice), skip (S) + undo (U) + approve (A)."""
    approved = [_caption(page)]
    page.keyboard.press("a")
    _wait_saved(page, "approved: saved")

    edited = _caption(page).rstrip(".") + " in the afternoon sun."
    _tab_to_textarea(page)
    page.keyboard.press("Control+a")
    page.keyboard.type(edited)
    page.keyboard.press("Control+Enter")  # the first press shows the word diff, saves nothing
    page.locator("code", has_text="in the afternoon sun.").first.wait_for(timeout=20_000)
    settle(page)
    assert page.get_by_text("Check the word diff", exact=False).count() == 1
    page.screenshot(path=str(OUT / "review_diff.png"), full_page=True)
    page.keyboard.press("Control+Enter")
    _wait_saved(page, "approved with your edit")
    approved.append(edited)

    skipped = _caption(page)
    page.keyboard.press("s")
    _wait_saved(page, "skipped: saved")
    page.keyboard.press("u")
    _wait_saved(page, "last decision undone")
    assert _caption(page) == skipped
    page.keyboard.press("a")
    _wait_saved(page, "approved: saved")
    approved.append(skipped)
    return approved


def _export_and_download(page, url: str) -> Path:
    """Only 3 of 10 classes have an approved pair: the balance override is needed."""
    page.goto(f"{url}/export")
    page.get_by_text("below the target", exact=False).first.wait_for(timeout=30_000)
    page.get_by_text("Export anyway", exact=False).first.click()
    page.get_by_role("button", name="Export snapshot").click()
    page.get_by_text("pairs (", exact=False).first.wait_for(timeout=30_000)
    page.screenshot(path=str(OUT / "export.png"), full_page=True)
    with page.expect_download() as download:
        page.get_by_role("button", name="Download zip").first.click()
    zipped = OUT / "snapshot.zip"
    download.value.save_as(zipped)
    return zipped


def test_keyboard_review_then_export(server):
    from datasets import load_dataset
    from playwright.sync_api import sync_playwright

    url, data = server
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/review")
        page.locator("textarea").first.wait_for(timeout=30_000)
        settle(page)
        approved = _review_by_keyboard(page)
        page.screenshot(path=str(OUT / "review.png"), full_page=True)
        zipped = _export_and_download(page, url)
        browser.close()

    [snapshot] = sorted((data / "exports").glob("snap-*"))
    ds = load_dataset("imagefolder", data_dir=str(snapshot))
    texts = sorted(t for split in ds.values() for t in split["text"])
    assert texts == sorted(approved)
    assert (OUT / "review.png").stat().st_size > 10_000
    with zipfile.ZipFile(zipped) as zf:  # the download is the same snapshot
        assert f"{snapshot.name}/manifest.json" in zf.namelist()


# --- the browser review card under fast keys and refusals ---

RECORD_KEYS = """window.__keys = [];
window.addEventListener('keydown', (e) => {  // what the reviewer saw when pressing: before the card acts
  const card = document.querySelector('[data-testid="reviewCard"]');
  window.__keys.push([e.key, card ? Number(card.dataset.item) : null]);
}, true);"""


@pytest.fixture
def big_server(tmp_path):
    """`streamlit run` over 60 pending items (6 of each CIFAR-10 class)."""
    from pipeline.classes import CLASSES

    data = tmp_path / "data"
    fill_store(data, per_class=6, classes=tuple(CLASSES))
    with streamlit_server(env={"CAPSTUDIO_DATA_DIR": str(data)}, log_path=tmp_path / "streamlit.log") as url:
        yield url, data


def _open_card(p, url):
    browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.add_init_script(RECORD_KEYS)
    page.goto(f"{url}/review")
    page.locator('[data-testid="reviewCard"][data-item]:not([data-item=""])').wait_for(timeout=30_000)
    settle(page)
    return browser, page


def _store_events(data) -> list[tuple[int, ReviewAction, RejectReason | None]]:
    engine = engine_for(data)
    with session_scope(engine) as s:
        rows = s.exec(select(ReviewEvent).order_by(ReviewEvent.id)).all()
        out = [(e.image_id, e.action, e.reject_reason) for e in rows]
    engine.dispose()
    return out


def test_fifty_fast_keys_all_land_in_the_store_in_order(big_server):
    """50 decisions (A, S, and X then 1 for a reject) pressed as fast as the card shows an item (no wait
    for the store; only when all preloaded items are decided does the next key wait): every one is
    recorded, on the item the card showed when its key went down, in the order pressed."""
    from playwright.sync_api import sync_playwright

    url, data = big_server
    plan = ["x1" if i % 5 == 3 else "s" if i % 4 == 1 else "a" for i in range(50)]
    with sync_playwright() as p:
        browser, page = _open_card(p, url)
        shown = page.locator('[data-testid="reviewCard"][data-item]:not([data-item=""])')
        for keys in plan:
            shown.wait_for(timeout=60_000)
            for key in keys:
                page.keyboard.press(key)
        page.locator('[data-testid="reviewCard"][data-pending="0"]').wait_for(timeout=120_000)
        settle(page)
        pressed = page.evaluate("window.__keys")
        errors = page.locator(".cap-error").count()
        browser.close()
    expected, want_reason = [], False
    for key, item in pressed:
        if key == "x":
            want_reason = True
            continue
        action = {"a": ReviewAction.approve, "s": ReviewAction.skip, "1": ReviewAction.reject}[key]
        assert (key == "1") == want_reason
        expected.append((item, action, RejectReason(list(RejectReason)[0]) if key == "1" else None))
        want_reason = False
    assert len(pressed) == sum(len(k) for k in plan) and len(expected) == 50
    assert len({item for item, _, _ in expected}) == 50  # a new item after every decision
    assert _store_events(data) == expected and errors == 0


def test_a_preloaded_item_decided_elsewhere_is_refused_visibly(big_server):
    """The card holds the next items; if one is decided by someone else meanwhile (its claim ran out),
    the reviewer's key on it is refused with a message in the card and nothing of theirs is saved."""
    from playwright.sync_api import sync_playwright

    from db.review import decide

    url, data = big_server
    card = '[data-testid="reviewCard"]'
    with sync_playwright() as p:
        browser, page = _open_card(p, url)
        first = int(page.locator(card).get_attribute("data-item"))
        page.keyboard.press("a")
        page.get_by_text(f"Item {first} approved: saved", exact=False).first.wait_for(timeout=30_000)
        settle(page)
        second = int(page.locator(card).get_attribute("data-item"))
        engine = engine_for(data)
        with session_scope(engine) as s:
            row = s.get(Review, second)
            assert row.claimed_by == (getpass.getuser() or "local")  # preloaded = claimed by the reviewer
            row.claim_expires_at = datetime.now(UTC) - timedelta(minutes=1)
            s.add(row)
        with session_scope(engine) as s:
            decide(s, image_id=second, reviewer="bob", action=ReviewAction.skip, expected_version=row.version)
        engine.dispose()
        page.keyboard.press("a")
        error = page.locator(".cap-error").first
        error.wait_for(timeout=30_000)
        assert f"Item {second} changed since you opened it" in error.text_content()
        page.locator(f'{card}[data-pending="0"]').wait_for(timeout=30_000)
        assert int(page.locator(card).get_attribute("data-item")) not in (first, second)  # moved on
        page.screenshot(path=str(OUT / "review_refused.png"), full_page=True)
        browser.close()
    assert [(i, a) for i, a, _ in _store_events(data)] == [(first, ReviewAction.approve), (second, ReviewAction.skip)]
