"""CIFAR-10 class names, their synonyms, and the matcher behind class-mention accuracy.

`mentioned_classes("Two jets over a car park")` -> {"airplane", "automobile"}.
"""
from __future__ import annotations

import re
from functools import lru_cache

CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

# Words that name the class in a caption. Plurals are handled by the matcher (see _plural).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "airplane": ("airplane", "aeroplane", "plane", "aircraft", "jet", "airliner", "jetliner",
                 "biplane", "seaplane", "warplane", "fighter jet"),
    "automobile": ("automobile", "car", "sedan", "coupe", "hatchback", "convertible",
                   "suv", "minivan", "station wagon", "sports car", "taxi", "cab", "motorcar"),
    "bird": ("bird", "sparrow", "finch", "robin", "ostrich", "eagle", "hawk", "owl", "parrot",
             "pigeon", "duck", "goose", "swan", "heron", "crow", "songbird", "emu", "peacock"),
    "cat": ("cat", "kitten", "kitty", "tabby", "feline", "housecat"),
    "deer": ("deer", "doe", "stag", "fawn", "elk", "moose", "reindeer", "antelope", "buck"),
    "dog": ("dog", "puppy", "pup", "hound", "canine", "terrier", "retriever", "poodle",
            "spaniel", "beagle", "bulldog", "chihuahua", "labrador", "doggy"),
    "frog": ("frog", "toad", "tadpole", "bullfrog", "amphibian"),
    "horse": ("horse", "pony", "foal", "stallion", "mare", "colt", "equine", "racehorse"),
    "ship": ("ship", "boat", "vessel", "steamship", "freighter", "tanker", "liner",
             "cruise ship", "sailboat", "yacht", "ferry", "tugboat", "battleship", "warship"),
    "truck": ("truck", "lorry", "pickup", "pickup truck", "semi", "tractor trailer",
              "fire truck", "firetruck", "dump truck", "tow truck", "eighteen-wheeler", "van"),
}


def _plural(word: str) -> str:
    """Regex for a word and its regular or irregular plural (one word of a phrase)."""
    irregular = {"deer": "deer", "moose": "moose", "elk": "elks?", "goose": "geese",
                 "mouse": "mice", "ox": "oxen"}
    if word in irregular:
        alt = irregular[word]
        return f"(?:{re.escape(word)}|{alt})"
    if word.endswith(("s", "x", "ch", "sh")):
        return re.escape(word) + "(?:es)?"
    if word.endswith("y") and len(word) > 2 and word[-2] not in "aeiou":
        return re.escape(word[:-1]) + "(?:y|ies)"
    return re.escape(word) + "s?"


@lru_cache(maxsize=1)
def _patterns() -> dict[str, re.Pattern]:
    out = {}
    for label, words in SYNONYMS.items():
        alts = []
        for phrase in sorted(words, key=len, reverse=True):
            parts = re.split(r"[\s-]+", phrase)
            head = [re.escape(p) for p in parts[:-1]]
            alts.append(r"[\s-]+".join(head + [_plural(parts[-1])]))
        out[label] = re.compile(r"(?<![\w-])(?:" + "|".join(alts) + r")(?![\w-])", re.IGNORECASE)
    return out


def mentioned_classes(text: str) -> set[str]:
    """The CIFAR-10 classes a text names (word-boundary, case-insensitive, plurals allowed)."""
    return {label for label, pat in _patterns().items() if pat.search(text or "")}


def mentions_class(text: str, label: str) -> bool:
    """Whether the text names `label` (a CIFAR-10 class) or one of its synonyms."""
    if label not in SYNONYMS:
        raise ValueError(f"unknown CIFAR-10 class {label!r}; expected one of {CLASSES}")
    return bool(_patterns()[label].search(text or ""))


__all__ = ["CLASSES", "SYNONYMS", "mentioned_classes", "mentions_class"]
