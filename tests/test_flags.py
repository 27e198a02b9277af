"""Auto-flags: each check fires on the captions a reviewer would distrust, and not on good ones;
the review queue can be filtered and ordered by them."""
from __future__ import annotations

import hashlib

import pytest

from db.catalog import add_draft, add_image
from db.engine import session_scope
from db.models import SourceKind
from db.review import QueueOrder, claim_next
from pipeline.teacher.flags import FLAG_LABELS, Flag, compute_flags, flag_label, flags_for_draft
from tests.conftest import BUNDLED

GOOD = "A small brown dog running across a grassy field."


def test_a_good_caption_has_no_flags():
    assert compute_flags(GOOD, "dog") == []
    assert compute_flags("Two horses grazing in a green pasture near a fence.", "horse") == []
    assert compute_flags("A red pickup truck parked beside a brick building.", "truck") == []


@pytest.mark.parametrize("text,label,flag", [
    ("A small animal standing on the grass outside.", "cat", Flag.no_class_mention),
    ("A cat sitting next to a large dog on the sofa.", "cat", Flag.other_class),
    ("A jet flying above a ship on the open sea.", "ship", Flag.other_class),
    ("This appears to be a frog sitting on a leaf.", "frog", Flag.hedging),
    ("I cannot tell what is in this image, sorry.", "bird", Flag.hedging),
    ("A blurry image of a deer in the forest.", "deer", Flag.hedging),
    ("A cat.", "cat", Flag.too_short),
    ("A ship " + "sailing on calm blue water under a clear sky " * 6, "ship", Flag.too_long),
    ("A bird bird perched on a thin branch.", "bird", Flag.repetition),
    ("A white car on the road, a white car on the road.", "automobile", Flag.repetition),
])
def test_each_flag_fires(text, label, flag):
    assert flag.value in compute_flags(text, label)


def test_synonyms_and_plurals_count_as_naming_the_class():
    assert Flag.no_class_mention.value not in compute_flags("Two kittens playing with a ball of yarn.", "cat")
    assert Flag.no_class_mention.value not in compute_flags("A jetliner taking off from a runway.", "airplane")


def test_near_duplicates_need_others():
    text = "A brown horse standing in a field of grass."
    assert Flag.near_duplicate.value not in compute_flags(text, "horse")
    others = ["A frog on a leaf.", "a brown horse standing in a field of grass!"]
    assert Flag.near_duplicate.value in compute_flags(text, "horse", others=others)
    close = ["A brown horse standing in a field of green grass."]
    assert Flag.near_duplicate.value in compute_flags(text, "horse", others=close)
    different = ["A white horse jumping over a wooden fence at a show."]
    assert Flag.near_duplicate.value not in compute_flags(text, "horse", others=different)


def test_flags_come_in_a_stable_order_with_labels():
    flags = compute_flags("It might be a dog dog.", "cat")
    assert flags == [Flag.no_class_mention.value, Flag.other_class.value, Flag.hedging.value,
                     Flag.repetition.value]
    assert set(FLAG_LABELS) == set(Flag)
    assert flag_label("hedging") == "Hedging or refusal"


def _add(session, label: str, i: int, text: str) -> int:
    png = (BUNDLED / label / f"{label}_{i:04d}.png").read_bytes()
    image, _ = add_image(session, source_kind=SourceKind.bundled, source_key=f"{label}/{i}", label=label,
                         png=png, content_hash=hashlib.sha256(png).hexdigest(), width=32, height=32)
    flags = flags_for_draft(session, image_id=image.id, text=text, label=label)
    add_draft(session, image_id=image.id, text=text, model_id="t", prompt="p", flags=flags)
    return image.id


def test_store_drafts_are_near_duplicate_candidates_and_queue_uses_flags(store):
    with session_scope(store) as s:
        clean = _add(s, "cat", 0, "A tabby cat curled up asleep on a blanket.")
        dup = _add(s, "cat", 1, "A tabby cat curled up asleep on a blanket!")
        hedged = _add(s, "cat", 2, "It seems to be a kitten, maybe a dog, hard to tell.")
        other_class = _add(s, "dog", 0, "A tabby cat curled up asleep on a blanket.")
    with session_scope(store) as s:
        first = claim_next(s, reviewer="ann", flag=Flag.near_duplicate.value)
        assert first.image_id == dup and first.flags == (Flag.near_duplicate.value,)
        risky = claim_next(s, reviewer="bob", order=QueueOrder.risk, label="cat")
        assert risky.image_id == hedged and Flag.hedging.value in risky.flags
        assert claim_next(s, reviewer="cy", flag=Flag.too_long.value) is None
    with session_scope(store) as s:
        dog = claim_next(s, reviewer="dee", label="dog")
        # only drafts of the same class are compared: the dog draft copies a cat one, no duplicate
        assert dog.image_id == other_class
        assert set(dog.flags) == {Flag.no_class_mention.value, Flag.other_class.value}
        assert claim_next(s, reviewer="eve", label="cat").image_id == clean
