"""How well two reviewers agree: exact agreement (db/qc.py's rule), caption similarity (ROUGE-L from
rouge-score) for partial agreement, Cohen's kappa (scikit-learn) on approve/reject, and edit size.

Figures are computed per reviewer (every compared item they decided, first or second) and overall.
"""
from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import lru_cache

from db.models import Verdict
from db.qc import normalise_caption, verdicts_agree


@dataclass(frozen=True)
class Pair:
    """Two decisions on one item."""

    image_id: int
    first_reviewer: str
    first_verdict: Verdict
    first_caption: str | None
    second_reviewer: str
    second_verdict: Verdict
    second_caption: str | None

    @property
    def agree(self) -> bool:
        return verdicts_agree(self.first_verdict, self.first_caption, self.second_verdict, self.second_caption)

    @property
    def both_approve(self) -> bool:
        return Verdict.reject not in (self.first_verdict, self.second_verdict)


@dataclass(frozen=True)
class AgreementFigures:
    """Agreement over a set of compared items; None where a figure is undefined (no items, or
    kappa when every decision was the same)."""

    n_items: int
    n_agreed: int
    agreement_rate: float | None
    kappa: float | None
    mean_similarity: float | None  # ROUGE-L F over items both approved (1.0 for equal captions)

    def as_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)  # stateless: safe to share


def similarity(a: str | None, b: str | None) -> float:
    """ROUGE-L F-measure of two captions after normalisation (1.0 when they agree exactly)."""
    a, b = normalise_caption(a), normalise_caption(b)
    if a == b:
        return 1.0
    return float(_scorer().score(a, b)["rougeL"].fmeasure)


def words_changed(before: str, after: str) -> int:
    """Words changed from `before` to `after`: per differing run, the larger of removed and added."""
    a, b = before.split(), after.split()
    ops = difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes()
    return sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in ops if tag != "equal")


def kappa(first: list[bool], second: list[bool]) -> float | None:
    """Cohen's kappa of two raters' approve (True) / reject (False); None when undefined."""
    from sklearn.metrics import cohen_kappa_score

    if not first or len(set(first) | set(second)) < 2:
        return None  # one category only: chance agreement is 1 and kappa is 0/0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's UndefinedMetricWarning for the remaining 0/0 cases
        value = float(cohen_kappa_score(first, second, labels=[False, True]))
    return None if math.isnan(value) else value


def figures(pairs: Iterable[Pair]) -> AgreementFigures:
    pairs = list(pairs)
    if not pairs:
        return AgreementFigures(0, 0, None, None, None)
    agreed = sum(p.agree for p in pairs)
    approved = [similarity(p.first_caption, p.second_caption) for p in pairs if p.both_approve]
    return AgreementFigures(
        n_items=len(pairs), n_agreed=agreed, agreement_rate=agreed / len(pairs),
        kappa=kappa([p.first_verdict != Verdict.reject for p in pairs],
                    [p.second_verdict != Verdict.reject for p in pairs]),
        mean_similarity=sum(approved) / len(approved) if approved else None,
    )


def per_reviewer(pairs: Iterable[Pair]) -> dict[str, AgreementFigures]:
    """Figures over the items each reviewer decided (as first or second reviewer)."""
    pairs = list(pairs)
    names = sorted({p.first_reviewer for p in pairs} | {p.second_reviewer for p in pairs})
    return {n: figures(p for p in pairs if n in (p.first_reviewer, p.second_reviewer)) for n in names}


def pairs_of(opinions: Iterable) -> list[Pair]:  # SecondOpinion rows with both decisions
    return [Pair(o.image_id, o.first_reviewer, Verdict(o.first_verdict), o.first_caption, o.second_reviewer,
                 Verdict(o.second_verdict), o.second_caption) for o in opinions if o.second_verdict is not None]
