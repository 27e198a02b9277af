"""End to end in a real browser: Chromium (Playwright) against `streamlit run`. Three items are
reviewed with the keyboard only (approve, edit with the diff, skip + undo, approve), the
snapshot is exported on the Export page, and `datasets` loads it with those captions."""
from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from tests.app_store import REPO, fill_store
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
