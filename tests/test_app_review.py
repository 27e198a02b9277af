"""The review page (AppTest): every action lands in the review row and the event log, the next
item follows, undo restores, bad input and stale views are refused with a message."""
from __future__ import annotations

import io

import pytest
from PIL import Image as PILImage
from sqlmodel import select

from db.engine import session_scope
from db.errors import ClaimedError
from db.models import Image, RejectReason, Review, ReviewAction, ReviewEvent, ReviewState
from db.review import MAX_CAPTION_CHARS, decide
from pipeline.data.images import upscale_png
from tests.app_store import app_for, engine_for, fill_store

REVIEW = "app_pages/review.py"


@pytest.fixture
def store(tmp_path):
    data = tmp_path / "data"
    ids = fill_store(data, drafts={"cat": "A small cat sits on a red sofa.",
                                   "dog": "A brown dog runs on the grass.",
                                   "ship": "A white ship at sea."})
    engine = engine_for(data)
    yield data, ids, engine
    engine.dispose()


def _open(data, monkeypatch, reviewer="ann"):
    at = app_for(data, monkeypatch, reviewer=reviewer)
    at.run()
    at.switch_page(REVIEW).run()
    assert not at.exception, at.exception
    return at


def _shown(at) -> tuple[int, int]:
    image_id, version, _ = at.session_state["shown"]
    return image_id, version


def _caption_box(at):
    image_id, version = _shown(at)
    return at.text_area(key=f"caption-{image_id}-{version}")


def _row(engine, image_id) -> Review:
    with session_scope(engine) as s:
        return s.get(Review, image_id)


def _events(engine, image_id) -> list[ReviewEvent]:
    with session_scope(engine) as s:
        return list(s.exec(select(ReviewEvent).where(ReviewEvent.image_id == image_id).order_by(ReviewEvent.id)).all())


def test_without_signing_in_nothing_can_be_decided(store, monkeypatch):
    data, _, _ = store
    at = app_for(data, monkeypatch, reviewer=None)
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Caption studio: sign in" and at.text_input(key="sign_in_password")
    assert not [b for b in at.button if b.key and b.key.startswith("btn-")]


def test_approve_saves_the_draft_and_advances(store, monkeypatch):
    data, _, engine = store
    at = _open(data, monkeypatch)
    first, version = _shown(at)
    draft = _caption_box(at).value
    assert draft == "A small cat sits on a red sofa."  # balanced queue, all at 0: first class first
    at.button(key="btn-approve").click().run()
    row = _row(engine, first)
    assert (row.state, row.final_caption, row.reviewer) == (ReviewState.approved, draft, "ann")
    assert row.version == version + 1
    [event] = _events(engine, first)
    assert (event.action, event.reviewer, event.after_caption) == (ReviewAction.approve, "ann", draft)
    assert _shown(at)[0] != first  # auto-advance
    assert "approved: saved" in at.success[0].value


def test_edit_shows_a_word_diff_before_saving(store, monkeypatch):
    data, _, engine = store
    at = _open(data, monkeypatch)
    image_id, _ = _shown(at)
    draft = _caption_box(at).value
    edited = draft.replace("small", "tiny").replace(".", "") + " near a window."
    _caption_box(at).input(edited).run()
    diff = at.code[0].value
    assert "- small" in diff and "+ tiny" in diff
    assert _row(engine, image_id).state == ReviewState.pending  # nothing saved by typing
    at.button(key="btn-edit_approve").click().run()
    row = _row(engine, image_id)
    assert (row.state, row.final_caption) == (ReviewState.approved, edited)
    [event] = _events(engine, image_id)
    assert (event.action, event.before_caption, event.after_caption) == (ReviewAction.edit_approve, None, edited)


def test_a_diff_seen_on_one_item_does_not_save_the_same_text_on_the_next(store, monkeypatch):
    """Typing the same edit on the next item and pressing Ctrl+Enter once shows that item's diff first:
    the diff checked on the item before does not count (teacher drafts repeat, so edits do too)."""
    data, _, engine = store
    at = _open(data, monkeypatch)
    first, _ = _shown(at)
    edited = "An animal near a window in the afternoon sun."
    _caption_box(at).input(edited).run()
    at.button(key="btn-edit_approve").click().run()
    assert _row(engine, first).final_caption == edited
    second, _ = _shown(at)
    assert second != first
    _caption_box(at).set_value(edited)
    at.button(key="btn-edit_approve").click().run()  # text and Ctrl+Enter in one rerun, as in a browser
    assert _row(engine, second).state == ReviewState.pending
    assert any("Check the word diff" in w.value for w in at.warning)
    assert "+ afternoon" in at.code[0].value or "afternoon" in at.code[0].value
    at.button(key="btn-edit_approve").click().run()
    assert (_row(engine, second).state, _row(engine, second).final_caption) == (ReviewState.approved, edited)


def test_approve_refuses_to_drop_an_unsaved_edit(store, monkeypatch):
    data, _, engine = store
    at = _open(data, monkeypatch)
    image_id, _ = _shown(at)
    _caption_box(at).input("Something else entirely.").run()
    at.button(key="btn-approve").click().run()
    assert "save the edit" in at.warning[0].value
    assert _row(engine, image_id).state == ReviewState.pending
    assert _shown(at)[0] == image_id


def test_reject_needs_a_reason_then_records_it(store, monkeypatch):
    data, _, engine = store
    at = _open(data, monkeypatch)
    image_id, version = _shown(at)
    at.button(key="btn-reject").click().run()
    assert "needs a reason" in at.error[0].value
    assert _row(engine, image_id).state == ReviewState.pending and _shown(at)[0] == image_id
    at.selectbox(key=f"reason-{image_id}-{version}").set_value(RejectReason.hallucination)
    at.text_input(key=f"note-{image_id}-{version}").input("there is no sofa")
    at.button(key="btn-reject").click().run()
    row = _row(engine, image_id)
    assert (row.state, row.reject_reason, row.note, row.final_caption) == (
        ReviewState.rejected, RejectReason.hallucination, "there is no sofa", None)
    [event] = _events(engine, image_id)
    assert (event.action, event.reject_reason, event.note) == (
        ReviewAction.reject, RejectReason.hallucination, "there is no sofa")


def test_skip_then_undo_puts_the_item_back_in_hand(store, monkeypatch):
    data, _, engine = store
    at = _open(data, monkeypatch)
    image_id, _ = _shown(at)
    at.button(key="btn-skip").click().run()
    assert _row(engine, image_id).state == ReviewState.skipped
    assert _shown(at)[0] != image_id
    at.button(key="undo").click().run()
    row = _row(engine, image_id)
    assert (row.state, row.reviewer, row.claimed_by) == (ReviewState.pending, None, "ann")
    assert _shown(at)[0] == image_id  # the undone item is shown again
    actions = [(e.action, e.undone) for e in _events(engine, image_id)]
    assert actions == [(ReviewAction.skip, True), (ReviewAction.undo, False)]
    assert "undone" in at.success[0].value


def test_undo_with_nothing_to_undo_says_so(store, monkeypatch):
    data, _, _ = store
    at = _open(data, monkeypatch)
    at.button(key="undo").click().run()
    assert "nothing" in at.error[0].value.lower() or "no decision" in at.error[0].value.lower()


def test_empty_and_too_long_captions_are_refused(store, monkeypatch):
    data, _, engine = store
    at = _open(data, monkeypatch)
    image_id, _ = _shown(at)
    for bad, words in (("   ", "empty"), ("x" * (MAX_CAPTION_CHARS + 1), "limit")):
        _caption_box(at).input(bad).run()
        at.button(key="btn-edit_approve").click().run()
        assert words in at.error[0].value, at.error
        assert _row(engine, image_id).state == ReviewState.pending
        assert _shown(at)[0] == image_id


def test_markup_in_a_caption_is_shown_literally_and_unicode_kept(store, monkeypatch):
    data, _, engine = store
    at = _open(data, monkeypatch)
    image_id, _ = _shown(at)
    nasty = "<script>alert(1)</script> **bold** <b>x</b> 猫がいる café 🐱"
    _caption_box(at).input(nasty).run()
    assert nasty.split()[-1] in at.code[0].value  # the diff is code text, not Markdown
    assert not any("<script>" in m.value for m in at.markdown)
    at.button(key="btn-edit_approve").click().run()
    assert _row(engine, image_id).final_caption == nasty


def test_a_decision_on_a_stale_view_is_refused(store, monkeypatch):
    data, _, engine = store
    at = _open(data, monkeypatch)
    image_id, version = _shown(at)
    with session_scope(engine) as s:  # someone (an admin, another tab) decides it first
        decide(s, image_id=image_id, reviewer="ann", action=ReviewAction.skip, expected_version=version)
    at.button(key="btn-approve").click().run()
    assert "changed since you opened it" in at.error[0].value
    assert _row(engine, image_id).state == ReviewState.skipped


def test_two_reviewers_never_hold_the_same_item(store, monkeypatch):
    data, _, engine = store
    ann = _open(data, monkeypatch, reviewer="ann")
    bob = _open(data, monkeypatch, reviewer="bob")
    assert _shown(bob)[0] != _shown(ann)[0]
    ann_first = _shown(ann)[0]
    ann.run()  # a rerun keeps ann's item in ann's hands
    assert _shown(ann)[0] == ann_first
    ann.button(key="btn-approve").click().run()  # ann's next item is not bob's either
    assert _shown(ann)[0] not in (ann_first, _shown(bob)[0])
    with session_scope(engine) as s:
        with pytest.raises(ClaimedError):
            decide(s, image_id=_shown(bob)[0], reviewer="ann", action=ReviewAction.approve,
                   expected_version=_shown(bob)[1])


def test_the_image_is_enlarged_pixel_for_pixel(store):
    data, ids, engine = store
    with session_scope(engine) as s:
        png = s.get(Image, ids["cat"][0]).png
    small = PILImage.open(io.BytesIO(png)).convert("RGB")
    big = PILImage.open(io.BytesIO(upscale_png(png, size=320))).convert("RGB")
    assert big.size == (320, 320)
    for x, y in ((0, 0), (5, 17), (31, 31)):  # every source pixel becomes a flat 10x10 block
        block = {big.getpixel((x * 10 + dx, y * 10 + dy)) for dx in range(10) for dy in range(10)}
        assert block == {small.getpixel((x, y))}


def test_flag_filter_and_progress(store, monkeypatch):
    data, ids, engine = store
    at = _open(data, monkeypatch)
    at.selectbox(key="queue_flag").set_value("too_short").run()  # none of these drafts is short
    assert at.success[0].value.startswith("Nothing left")
    at.selectbox(key="queue_flag").set_value(None).run()
    at.button(key="btn-approve").click().run()
    assert "1 / 100 approved" in at.get("progress")[0].proto.text
