"""The browser review card (curation_app/review_card/card.js) across mounts, in Chromium without Streamlit:
its module is called as Streamlit calls a v2 component (data, parentElement, setStateValue). Streamlit may
mount the component again in a new element while the old one stays on the page (a fragment rerun cut short
by the next one): the bench saw a second, fresh card appear under a frozen one after 30-100 decisions, and
the frozen one's unacknowledged decisions never reached the store."""
from __future__ import annotations

import base64

import pytest

from tests.app_store import REPO
from tests.browser import CHROMIUM, LAUNCH_ARGS, needs_chromium

pytestmark = needs_chromium

CARD_JS = (REPO / "curation_app" / "review_card" / "card.js").read_text()
DOT = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJ"
       "RU5ErkJggg==")

SETUP = """async ([src, dot]) => {
  const mod = await import("data:text/javascript;base64," + src);
  const item = (id) => ({id, version: 1, label: "cat", state: "pending", caption: `A cat ${id}.`,
                         draft: `A cat ${id}.`, flags: [], png: dot});
  window.sent = [];
  window.data = (acked) => ({reviewer: "ann", items: [item(1), item(2), item(3), item(4)], acked,
                             results: [], reasons: [["wrong_class", "Wrong class"]], empty_text: "none"});
  window.mount = (name, acked = {}) => mod.default({data: window.data(acked),
      parentElement: document.getElementById(name),
      setStateValue: (key, value) => window.sent.push({via: name, key, value: JSON.parse(JSON.stringify(value))})});
  window.settle = () => new Promise((r) => requestAnimationFrame(() => setTimeout(r, 50)));
  window.press = async (key) => { window.dispatchEvent(new KeyboardEvent("keydown", {key})); await window.settle(); };
}"""

STATE = """() => ({cards: [...document.querySelectorAll('[data-testid="reviewCard"]')].map(
  (c) => ({parent: c.parentElement.id, item: c.dataset.item, pending: c.dataset.pending})),
  sent: window.sent})"""


@pytest.fixture()
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        page = browser.new_page()
        page.set_content('<div id="first"></div><div id="second"></div>')
        page.evaluate(SETUP, [base64.b64encode(CARD_JS.encode()).decode(), DOT])
        yield page
        browser.close()


def test_a_second_mount_takes_the_card_over_with_its_unacknowledged_decisions(page):
    page.evaluate("async () => { window.mount('first'); await window.press('a'); await window.press('a'); }")
    state = page.evaluate(STATE)
    assert [s["via"] for s in state["sent"]] == ["first", "first"]
    assert [d["seq"] for d in state["sent"][-1]["value"]["decisions"]] == [1, 2]
    client = state["sent"][-1]["value"]["client"]

    # Streamlit mounts again in a new element; the old one stays and its cleanup is not called
    page.evaluate("async () => { window.mount('second', {}); await window.settle(); }")
    state = page.evaluate(STATE)
    assert state["cards"] == [{"parent": "second", "item": "3", "pending": "2"}]  # one card, moved, still on item 3
    resent = state["sent"][-1]
    assert resent["via"] == "second" and resent["value"]["client"] == client
    assert [d["seq"] for d in resent["value"]["decisions"]] == [1, 2]  # nothing lost with the old mount

    page.evaluate("async () => { await window.press('a'); }")  # one listener: one key, one decision
    state = page.evaluate(STATE)
    last = state["sent"][-1]
    assert last["via"] == "second" and [d["seq"] for d in last["value"]["decisions"]] == [1, 2, 3]
    assert [d["image_id"] for d in last["value"]["decisions"]] == [1, 2, 3]
    assert state["cards"][0]["item"] == "4"

    # Python acknowledges all three: the next update carries them, nothing is pending or re-sent
    page.evaluate("async (client) => { window.mount('second', {[client]: 3}); await window.settle(); }", client)
    state = page.evaluate(STATE)
    assert state["cards"] == [{"parent": "second", "item": "4", "pending": "0"}]
    count = len(state["sent"])
    page.evaluate("async () => { window.mount('second', {}); await window.settle(); }")  # a plain update
    assert len(page.evaluate(STATE)["sent"]) == count


def test_a_mount_after_cleanup_listens_again_and_another_reviewer_gets_a_card_of_their_own(page):
    cleanup = "async () => { window.cleanup = window.mount('first'); await window.press('a'); window.cleanup(); }"
    page.evaluate(cleanup)
    page.evaluate("async () => { await window.press('a'); }")  # unmounted: the key does nothing
    state = page.evaluate(STATE)
    assert [d["seq"] for d in state["sent"][-1]["value"]["decisions"]] == [1]
    page.evaluate("async () => { window.mount('second'); await window.press('a'); }")
    state = page.evaluate(STATE)
    assert [c["parent"] for c in state["cards"]] == ["second"]
    assert [d["seq"] for d in state["sent"][-1]["value"]["decisions"]] == [1, 2]

    page.evaluate("""async () => {
        window.data = ((make) => (acked) => ({...make(acked), reviewer: "bob"}))(window.data);
        window.mount('first'); await window.settle(); }""")
    state = page.evaluate(STATE)
    assert [c["parent"] for c in state["cards"]] == ["first"]  # ann's card is gone, bob's is new
    before = len(state["sent"])
    page.evaluate("async () => { await window.press('a'); }")
    sent = page.evaluate(STATE)["sent"]
    assert len(sent) == before + 1 and [d["seq"] for d in sent[-1]["value"]["decisions"]] == [1]
    assert sent[-1]["value"]["client"] != state["sent"][0]["value"]["client"]
