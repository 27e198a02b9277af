"""Auto-flags on teacher drafts: cheap checks that point reviewers at the captions most likely wrong.

`compute_flags(text, label, others=...)` is pure; `flags_for_draft(session, ...)` adds the
store's other drafts of the same class as near-duplicate candidates.
"""
from __future__ import annotations

import enum
import re
from collections import Counter
from collections.abc import Iterable
from difflib import SequenceMatcher

from sqlmodel import Session, select

from db.models import Draft, Image
from pipeline.classes import SYNONYMS, mentioned_classes, mentions_class

MIN_WORDS = 4  # "A cat." says too little to train on
MAX_WORDS = 50  # a 32x32 image does not support a paragraph
NEAR_DUPLICATE_RATIO = 0.9  # difflib ratio on normalised text
NEAR_DUPLICATE_POOL = 500  # newest drafts of the same class compared against


class Flag(str, enum.Enum):
    no_class_mention = "no_class_mention"
    other_class = "other_class"
    hedging = "hedging"
    too_short = "too_short"
    too_long = "too_long"
    repetition = "repetition"
    near_duplicate = "near_duplicate"


FLAG_LABELS: dict[Flag, str] = {
    Flag.no_class_mention: "Does not name the class",
    Flag.other_class: "Names another class",
    Flag.hedging: "Hedging or refusal",
    Flag.too_short: f"Too short (< {MIN_WORDS} words)",
    Flag.too_long: f"Too long (> {MAX_WORDS} words)",
    Flag.repetition: "Repeated words",
    Flag.near_duplicate: "Near-duplicate of another draft",
}

_HEDGES = (
    r"appears? to be", r"seems? to be", r"looks? like it", r"it is (?:hard|difficult) to",
    r"hard to (?:tell|say|see)", r"difficult to (?:tell|say|see|determine)", r"not (?:sure|clear)",
    r"unclear", r"i (?:cannot|can ?not|can't|am unable|'m unable|am not able)", r"unable to",
    r"i'm sorry", r"i am sorry", r"as an ai", r"(?:might|may|could) be", r"possibly", r"perhaps",
    r"probably", r"blurry", r"blurred", r"pixelated", r"low[- ]resolution", r"out of focus",
    r"too small to",
)
_HEDGE_RE = re.compile(r"(?<![\w])(?:" + "|".join(_HEDGES) + r")(?![\w])", re.IGNORECASE)
_WORD_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_STOPWORDS = frozenset(
    "a an the of on in at to and or with its it is are was be by for from near next this that "
    "there some two three one as into over under while his her their".split()
)


def words(text: str) -> list[str]:
    """Lower-case word tokens of a caption."""
    return _WORD_RE.findall((text or "").lower())


def normalise(text: str) -> str:
    """The form near-duplicates are compared in: lower case, words only, single spaces."""
    return " ".join(words(text))


def has_repetition(tokens: list[str]) -> bool:
    """A doubled word ("the the"), a repeated 3-word phrase, or a content word said 4+ times."""
    if any(a == b for a, b in zip(tokens, tokens[1:])):
        return True
    trigrams = Counter(zip(tokens, tokens[1:], tokens[2:]))
    if any(n >= 2 for n in trigrams.values()):
        return True
    content = Counter(t for t in tokens if t not in _STOPWORDS)
    return any(n >= 4 for n in content.values())


def is_near_duplicate(text: str, others: Iterable[str], *, ratio: float = NEAR_DUPLICATE_RATIO) -> bool:
    """Whether text equals, or is ≥ `ratio` similar to, any of `others` (after normalising)."""
    mine = normalise(text)
    if not mine:
        return False
    matcher = SequenceMatcher(autojunk=False)
    matcher.set_seq2(mine)
    for other in others:
        theirs = normalise(other)
        if not theirs:
            continue
        if theirs == mine:
            return True
        matcher.set_seq1(theirs)
        # the quick bounds are upper limits of ratio(): skip the full diff when they fail
        if matcher.real_quick_ratio() >= ratio and matcher.quick_ratio() >= ratio and matcher.ratio() >= ratio:
            return True
    return False


def compute_flags(text: str, label: str, *, others: Iterable[str] = ()) -> list[str]:
    """Flag values (in Flag order) that apply to a draft `text` for an image of class `label`.

    `others` are other drafts' texts (not this one) to check near-duplicates against.
    """
    tokens = words(text)
    found: set[Flag] = set()
    named = mentioned_classes(text)
    if label in SYNONYMS and not mentions_class(text, label):
        found.add(Flag.no_class_mention)
    if named - {label}:
        found.add(Flag.other_class)
    if _HEDGE_RE.search(text or ""):
        found.add(Flag.hedging)
    if len(tokens) < MIN_WORDS:
        found.add(Flag.too_short)
    if len(tokens) > MAX_WORDS:
        found.add(Flag.too_long)
    if has_repetition(tokens):
        found.add(Flag.repetition)
    if is_near_duplicate(text, others):
        found.add(Flag.near_duplicate)
    return [f.value for f in Flag if f in found]


def draft_texts_for_class(
    session: Session, *, label: str, exclude_image_id: int | None = None, limit: int = NEAR_DUPLICATE_POOL
) -> list[str]:
    """Texts of the newest drafts of other images of class `label` (near-duplicate candidates)."""
    stmt = select(Draft.text).join(Image, Image.id == Draft.image_id).where(Image.label == label)
    if exclude_image_id is not None:
        stmt = stmt.where(Draft.image_id != exclude_image_id)
    return list(session.exec(stmt.order_by(Draft.id.desc()).limit(limit)).all())


def flags_for_draft(session: Session, *, image_id: int, text: str, label: str,
                    extra_others: Iterable[str] = ()) -> list[str]:
    """compute_flags against the store's drafts of the same class (plus `extra_others`,
    e.g. drafts of the same batch not written yet)."""
    others = [*draft_texts_for_class(session, label=label, exclude_image_id=image_id), *extra_others]
    return compute_flags(text, label, others=others)


def flag_label(value: str) -> str:
    """Human-readable label of a flag value (the value itself when unknown)."""
    try:
        return FLAG_LABELS[Flag(value)]
    except ValueError:
        return value


def flag_choices() -> dict[str, str]:
    """Flag value -> human label, for filters and badges."""
    return {f.value: text for f, text in FLAG_LABELS.items()}
