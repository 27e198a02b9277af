"""Markdown from users is never rendered as Markdown (issue 12, item 3), in a real browser: hostile
reviewer names, class folder names, file names, drafts, guidelines, export and job messages are put
into the store through the services, then every page that shows them is rendered by Chromium
(Playwright against `streamlit run`), and its DOM must hold no link to or image from evil.example,
and the browser must never request it, while the text itself is shown literally."""
from __future__ import annotations

import os
import shutil

import pytest

from db.catalog import add_draft
from db.engine import session_scope
from db.jobs import create_job, mark_job_running, update_progress
from db.models import Image, JobKind, ReviewAction
from pipeline.data.export import export_snapshot
from pipeline.data.sources import ImportSource, import_images
from pipeline.identity import Actor, Role
from pipeline.jobs import HOST
from pipeline.markup import WORD_JOINER
from pipeline.services.guidelines import write_guidelines
from pipeline.services.review import QueueSpec, open_review, submit_decision
from pipeline.settings import Settings
from tests.app_store import BUNDLED, REPO, engine_for, fill_store
from tests.browser import CHROMIUM, LAUNCH_ARGS, needs_chromium, settle, streamlit_server
from tests.hostile import EVIL, HOSTILE, HOSTILE_FILE, HOSTILE_LABEL, HOSTILE_NAME

OUT = REPO / "test-output" / "test_browser_hostile"
pytestmark = needs_chromium
BAD = f'a[href*="{EVIL}"], img[src*="{EVIL}"], a[href*="evil"], img[src*="evil"]'


def hostile_store(data) -> None:
    """Drafts, a reviewer, a class folder, a file name, guidelines, an export and a job message,
    each hostile, entered the way users enter them (services and imports)."""
    fill_store(data, per_class=1, drafts={"cat": HOSTILE[0], "dog": HOSTILE[1], "ship": HOSTILE[2]})
    settings = Settings(data_dir=data, target_per_class=1, _env_file=None)
    engine = engine_for(data)
    folder = settings.import_root / "batch" / HOSTILE_LABEL
    folder.mkdir(parents=True)
    shutil.copy(BUNDLED / "cat" / "cat_0005.png", folder / HOSTILE_FILE)
    assert import_images(engine, source=ImportSource.folder, n_per_class=1, path=folder.parent).added == 1
    reviewer, spec = Actor(HOSTILE_NAME, Role.reviewer), QueueSpec(target_per_class=1)
    view = open_review(engine, actor=reviewer, spec=spec)
    for _ in range(3):  # approve cat, dog and ship as the hostile reviewer
        view = submit_decision(engine, actor=reviewer, spec=spec, image_id=view.item.image_id,
                               expected_version=view.item.version, action=ReviewAction.approve)
        assert view.ok, view.message
    with session_scope(engine) as s:  # the imported item gets a draft, so Review shows its class
        image_id = s.query(Image).filter(Image.label == HOSTILE_LABEL).one().id
        add_draft(s, image_id=image_id, text=HOSTILE[3], model_id="t", prompt="p")
    export_snapshot(settings, engine, override_balance=True, exported_by=HOSTILE_NAME)
    write_guidelines(settings, actor=Actor("cora", Role.curator), text="**Be brief.**\n\n" + "\n\n".join(HOSTILE))
    with session_scope(engine) as s:  # a running job (this process: alive) with a hostile message
        job_id = create_job(s, kind=JobKind.caption, params={}).id
        mark_job_running(s, job_id=job_id, pid=os.getpid(), host=HOST)
        update_progress(s, job_id=job_id, done=1, total=4, message=HOSTILE[4] + " " + HOSTILE[5])
    engine.dispose()


@pytest.fixture
def server(tmp_path):
    data = tmp_path / "data"
    hostile_store(data)
    env = {"CAPSTUDIO_DATA_DIR": str(data), "CAPSTUDIO_TARGET_PER_CLASS": "1"}
    with streamlit_server(env=env, log_path=tmp_path / "streamlit.log") as url:
        yield url


# page path -> a piece of hostile text it must show literally
PAGES = {"": None, "review": "evil.example", "browse": None, "export": "[ann](http://evil.example/u)",
         "jobs": "<http://evil.example/auto>", "lineage": "[ann](http://evil.example/u)", "playground": None}


def test_no_page_turns_hostile_text_into_links_or_images(server):
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    fetched = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.on("request", lambda r: fetched.append(r.url) if "evil" in r.url else None)
        for path, shown in PAGES.items():
            page.goto(f"{server}/{path}")
            page.locator('[data-testid="stApp"]').wait_for(timeout=30_000)
            page.wait_for_timeout(500)
            settle(page)
            if path == "review":
                page.get_by_text("Guidelines and reject reasons").first.click()
                page.get_by_text("Be brief.").first.wait_for(timeout=20_000)
            if path == "playground":
                page.get_by_text("Upload", exact=True).first.click()
                settle(page)
                page.locator('input[type="file"]').set_input_files(
                    files=[{"name": HOSTILE_FILE, "mimeType": "image/png",
                            "buffer": (BUNDLED / "dog" / "dog_0001.png").read_bytes()}])
                page.get_by_text("32×32", exact=False).first.wait_for(timeout=30_000)
                settle(page)
            page.screenshot(path=str(OUT / f"{path or 'home'}.png"), full_page=True)
            bad = page.locator(BAD)
            assert bad.count() == 0, (path, "\n".join(bad.nth(i).evaluate("e => e.parentElement.outerHTML")
                                                      for i in range(bad.count())))
            if shown:
                text = page.locator("body").inner_text().replace(WORD_JOINER, "")  # invisible: see pipeline/markup.py
                assert shown in text, (path, text[:3000])
        browser.close()
    assert fetched == []
