"""The one BLEU of the studio: sacrebleu sentence BLEU on a 0-100 scale, per caption, and its mean
over captions. The Compare page's column and the Train page's evaluation report both use it.
"""
from __future__ import annotations

from collections.abc import Sequence

BLEU_LABEL = "BLEU (0-100)"
"""How every table and chart names the score."""


def sentence_bleu(candidate: str, references: Sequence[str]) -> float:
    """Sentence BLEU-4 (sacrebleu defaults: 13a tokens, exp smoothing) of one caption against its
    reference(s), 0-100, rounded to 2 decimals; an empty caption scores 0."""
    import sacrebleu

    if not candidate.strip():
        return 0.0
    return round(sacrebleu.sentence_bleu(candidate, list(references)).score, 2)


def mean_bleu(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """The mean sentence BLEU (0-100, 2 decimals) of captions, each against its own reference(s)."""
    scores = [sentence_bleu(c, refs) for c, refs in zip(candidates, references, strict=True)]
    return round(sum(scores) / len(scores), 2) if scores else 0.0
