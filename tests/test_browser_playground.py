"""The playground in a real browser: Chromium (Playwright) against `streamlit run`. An image is
uploaded, the tiny teacher and the tiny trained student caption it, and both captions, the
approved caption and the timings appear; a screenshot is saved under test-output/."""
from __future__ import annotations

import pytest

from tests.app_store import BUNDLED, REPO
from tests.browser import CHROMIUM, LAUNCH_ARGS, needs_chromium, settle, streamlit_server
from tests.playground_models import (
    approved_caption,
    playground_models,
)

OUT = REPO / "test-output" / "test_browser_playground"

pytestmark = needs_chromium


@pytest.fixture
def server(tmp_path):
    """`streamlit run` over a store with an exported snapshot, a tiny teacher and a tiny student."""
    m = playground_models(tmp_path)
    data, teacher = m.data, m.teacher
    env = {"CAPSTUDIO_DATA_DIR": str(data), "CAPSTUDIO_TEACHER_MODEL": str(teacher)}
    with streamlit_server(env=env, log_path=tmp_path / "streamlit.log") as url:
        yield url


def test_upload_and_run_both_models(server):
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(f"{server}/playground")
        page.get_by_text("Upload", exact=True).first.wait_for(timeout=30_000)
        settle(page)
        page.get_by_text("Upload", exact=True).first.click()
        page.locator('input[type="file"]').wait_for(state="attached", timeout=20_000)
        page.locator('input[type="file"]').set_input_files(str(BUNDLED / "dog" / "dog_0001.png"))
        page.get_by_text("In the store as item", exact=False).first.wait_for(timeout=30_000)
        settle(page)
        page.get_by_role("spinbutton", name="Max new tokens").fill("8")
        page.get_by_role("button", name="Run").click()
        page.get_by_text("tokens/s", exact=False).nth(1).wait_for(timeout=120_000)
        settle(page)
        page.screenshot(path=str(OUT / "playground.png"), full_page=True)
        body = page.locator('[data-testid="stMain"]').inner_text()
        browser.close()
    assert body.count("tokens/s") == 2  # timings under the teacher and under the student
    assert body.count("first token") == 2
    assert approved_caption("dog", 1) in body
    assert "the teacher's tile" in body and "what the student receives: 32×32" in body
    assert "Teacher" in body and "Student" in body and "Approved" in body
    assert (OUT / "playground.png").stat().st_size > 10_000
