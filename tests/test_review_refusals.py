"""Review refusals a hostile or careless user meets (issue 12, items 6 and 11): a caption with no
visible character is refused while real text in any script stays exactly as written; a refusal
about an item someone else holds or changed names that person only to a curator."""
from __future__ import annotations

import pytest

from db.engine import session_scope
from db.models import Review, ReviewAction, ReviewState
from db.review import claim_item, decide, get_item, release_claims
from pipeline.identity import Actor, Role
from pipeline.services import review
from tests.conftest import seed_images

ANN = Actor("ann", Role.reviewer)
BOB = Actor("bob", Role.reviewer)
CURATOR = Actor("cara", Role.curator)

INVISIBLE = {
    "zero-width space": "\u200b",
    "zero-width non-joiner": "\u200c\u200c",
    "zero-width joiner": "\u200d",
    "byte-order mark": "\ufeff",
    "all four, with spaces": " \u200b\u200c \u200d\ufeff ",
    "bidi marks": "\u200e\u200f\u202e",
    "word joiner and soft hyphen": "\u2060\u00ad",
}
KEPT = {
    "arabic (RTL)": "قطة رمادية تجلس على بطانية.",
    "hebrew with a RLM": "\u200fחתול אפור יושב על שמיכה.",
    "emoji ZWJ family": "a family 👨\u200d👩\u200d👧 next to a cat 🐈\u200d⬛.",
    "flag and skin tone": "a boat flying 🇳🇴, a wave 👋🏽.",
    "combining marks": "a cafe\u0301 with a nai\u0308ve cat.",
    "devanagari with ZWJ/ZWNJ": "एक बिल्ली क\u094d\u200dष और क\u094d\u200cष।",
    "only emoji": "🐱",
}


def submit(engine, actor: Actor, image_id: int, caption: str) -> review.ReviewView:
    with session_scope(engine) as s:
        version = get_item(s, image_id=image_id).version
    return review.submit_decision(engine, actor=actor, spec=review.QueueSpec(), image_id=image_id,
                                  expected_version=version, action=ReviewAction.edit_approve, caption=caption)


def stored(engine, image_id: int) -> Review:
    with session_scope(engine) as s:
        r = s.get(Review, image_id)
        s.expunge(r)
        return r


@pytest.mark.parametrize("caption", INVISIBLE.values(), ids=INVISIBLE.keys())
def test_an_invisible_caption_is_refused(store, caption):
    (i,) = seed_images(store, {"cat": 1})
    view = submit(store, ANN, i, caption)
    assert not view.ok and "no visible characters" in view.message
    assert "U+" in view.message  # says which characters it found
    r = stored(store, i)
    assert r.state == ReviewState.pending and r.final_caption is None


def test_control_characters_are_refused(store):
    (i,) = seed_images(store, {"cat": 1})
    view = submit(store, ANN, i, "a cat \x1b[31mred\x1b[0m")
    assert not view.ok and "control character U+001B" in view.message
    assert stored(store, i).final_caption is None


@pytest.mark.parametrize("caption", KEPT.values(), ids=KEPT.keys())
def test_real_text_in_any_script_is_kept_exactly(store, caption):
    (i,) = seed_images(store, {"cat": 1})
    view = submit(store, ANN, i, caption)
    assert view.ok, view.message
    assert stored(store, i).final_caption == caption  # byte for byte: no normalisation


def test_a_claimed_item_refusal_names_the_holder_only_to_a_curator(store):
    (i,) = seed_images(store, {"dog": 1})
    with session_scope(store) as s:
        claim_item(s, image_id=i, reviewer="ann")
    bob = review.open_review(store, actor=BOB, spec=review.QueueSpec(), image_id=i)
    assert not bob.ok and "someone else" in bob.message and "ann" not in bob.message
    cara = review.open_review(store, actor=CURATOR, spec=review.QueueSpec(), image_id=i)
    assert not cara.ok and "by ann" in cara.message
    view = submit(store, BOB, i, "a dog.")
    assert not view.ok and "someone else" in view.message and "ann" not in view.message


def test_a_stale_write_refusal_names_the_other_reviewer_only_to_a_curator(store):
    a, b = seed_images(store, {"ship": 2})
    for image_id, actor in ((a, BOB), (b, CURATOR)):
        with session_scope(store) as s:
            release_claims(s, reviewer="bob")  # bob's refused submit claimed his next item
            seen = get_item(s, image_id=image_id).version
            decide(s, image_id=image_id, reviewer="ann", action=ReviewAction.skip, expected_version=seen)
        view = review.submit_decision(store, actor=actor, spec=review.QueueSpec(), image_id=image_id,
                                      expected_version=seen, action=ReviewAction.approve)
        assert not view.ok and "changed since you opened it" in view.message
        if actor is BOB:
            assert "someone else" in view.message and "ann" not in view.message
        else:
            assert "by ann" in view.message
        assert stored(store, image_id).state == ReviewState.skipped
