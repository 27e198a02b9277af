"""Two users in the playground at once (issue 12, item 1): two Chromium contexts (two sessions of one
`streamlit run`, sharing the cached teacher and student) press Run together with different seeds;
each sees exactly the captions that model gives alone for its settings."""
from __future__ import annotations

import pytest

from tests.app_store import REPO
from tests.browser import CHROMIUM, LAUNCH_ARGS, needs_chromium, settle, streamlit_server
from tests.playground_models import playground_models

OUT = REPO / "test-output" / "test_browser_playground_two_users"
EXAMPLE = "cat/cat_0000.png"  # the page's default input
SEEDS = (1, 2)
MAX_NEW = 48

pytestmark = needs_chromium


@pytest.fixture
def world(tmp_path):
    m = playground_models(tmp_path)
    return m.data, m.teacher, m.student


def alone(data, teacher_dir, student_dir) -> dict[int, tuple[str, str]]:
    """(teacher, student) caption of each seed, computed one at a time in this process."""
    from db.engine import init_store
    from pipeline.generation import GenerationConfig
    from pipeline.services.playground import load_playground_student, load_playground_teacher, open_playground
    from pipeline.services.streaming import stream_student, stream_teacher
    from pipeline.settings import Settings

    settings = Settings(data_dir=data, _env_file=None)
    engine = init_store(settings.resolved_database_url)
    image = open_playground(settings, engine, example=EXAMPLE).input.model_image()
    engine.dispose()
    teacher = load_playground_teacher(str(teacher_dir), device="cpu")
    student = load_playground_student(str(student_dir), native_kernels=settings.native_kernels)
    out = {}
    for seed in SEEDS:
        params = GenerationConfig(max_new_tokens=MAX_NEW, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                  repetition_penalty=1.1, seed=seed)
        out[seed] = (stream_teacher(teacher, image, params).run(), stream_student(student, image, params).run())
    return out


def test_two_sessions_generating_together_each_get_their_own_captions(world, tmp_path):
    from playwright.sync_api import sync_playwright

    data, teacher, student = world
    expected = alone(data, teacher, student)
    assert expected[1] != expected[2]
    OUT.mkdir(parents=True, exist_ok=True)
    env = {"CAPSTUDIO_DATA_DIR": str(data), "CAPSTUDIO_TEACHER_MODEL": str(teacher), "CAPSTUDIO_DEVICE": "cpu"}
    with streamlit_server(env=env, log_path=tmp_path / "streamlit.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        pages = [browser.new_context(viewport={"width": 1400, "height": 1100}).new_page() for _ in SEEDS]
        for page, seed in zip(pages, SEEDS, strict=True):
            page.goto(f"{url}/playground")
            page.get_by_role("spinbutton", name="Max new tokens").wait_for(timeout=60_000)
            settle(page)
            page.get_by_role("spinbutton", name="Max new tokens").fill(str(MAX_NEW))
            page.get_by_text("sampling", exact=True).click()
            page.get_by_role("spinbutton", name="Seed").fill(str(seed))
        for page in pages:  # both at once: the server runs the two sessions in parallel threads
            page.get_by_role("button", name="Run").click()
        bodies = []
        for i, page in enumerate(pages):
            page.get_by_text("tokens/s", exact=False).nth(1).wait_for(timeout=180_000)
            settle(page)
            page.screenshot(path=str(OUT / f"user{i + 1}.png"), full_page=True)
            bodies.append(page.locator('[data-testid="stMain"]').inner_text())
        browser.close()
    for body, seed in zip(bodies, SEEDS, strict=True):
        teacher_text, student_text = expected[seed]
        assert teacher_text in body and student_text in body, (seed, expected[seed], body[-1500:])
