"""Evaluation of a student against approved captions, with image-ablation controls.

    python -m pipeline evaluate --student data/students/<name> [--snapshot DIR | --images DIR]

Conditions: `real` images, `blank` (uniform grey) images, and `shuffled` images (each caption
paired with another item's image). A student that looks at the image scores well only on
`real`. Writes evaluation.json, report.md, chart.png and predictions.jsonl under
<student>/evaluations/<name>/.
"""
from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image

from pipeline.classes import CLASSES, mentions_class
from pipeline.data.images import IMAGE_SUFFIXES
from pipeline.generation import GenerationConfig
from pipeline.student.generate import generate_captions
from pipeline.student.metrics import mean_bleu
from pipeline.student.model import Student, blank_image

CONDITIONS = ("real", "blank", "shuffled")
LABEL_CAPTION = "a photo of a {label}."


@dataclass(frozen=True)
class EvalItem:
    image: Image.Image
    references: tuple[str, ...]  # approved caption(s)
    label: str  # CIFAR-10 class
    item_id: str = ""


def items_from_snapshot(snapshot_dir: Path, *, split: str = "validation",
                        expected_hash: str | None = None) -> list[EvalItem]:
    from pipeline.data.snapshot import verify_snapshot

    snap = verify_snapshot(Path(snapshot_dir), expected_hash=expected_hash)  # refuses an edited or swapped file
    recs = getattr(snap, split)
    return [EvalItem(r.image(), (r.text,), r.label, r.item_id) for r in recs]


def items_from_folder(folder: Path) -> list[EvalItem]:
    """A labelled image folder: imagefolder `metadata.jsonl` (file_name, text, label) or one
    sub-folder per class (references then read "a photo of a {label}.")."""
    folder = Path(folder)
    meta = folder / "metadata.jsonl"
    if meta.is_file():
        from pipeline.data.snapshot import contained_file

        rows = [json.loads(x) for x in meta.read_text().splitlines() if x.strip()]
        return [EvalItem(Image.open(contained_file(folder, r["file_name"], where=f"{meta}, line {n}")).convert("RGB"),
                         (r["text"],), r["label"], r.get("item_id", r["file_name"])) for n, r in enumerate(rows, 1)]
    items = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        for f in sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            items.append(EvalItem(Image.open(f).convert("RGB"), (LABEL_CAPTION.format(label=sub.name),),
                                  sub.name, f"{sub.name}/{f.name}"))
    if not items:
        raise ValueError(f"{folder} holds no metadata.jsonl and no class sub-folders of images")
    return items


def _tokens(text: str) -> str:
    """Lower-case, strip punctuation: the tokenisation pycocoevalcap expects (no Java PTB)."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def caption_metrics(predictions: list[str], references: list[tuple[str, ...]]) -> dict[str, float]:
    """Mean sentence BLEU (0-100, the Compare page's), ROUGE-L and CIDEr (pycocoevalcap scorers)."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    res = {i: [_tokens(p)] for i, p in enumerate(predictions)}
    gts = {i: [_tokens(r) for r in refs] for i, refs in enumerate(references)}
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    return {"bleu": mean_bleu(predictions, references), "rouge_l": float(rouge), "cider": float(cider)}


def class_mention(predictions: list[str], labels: list[str]) -> dict:
    """Fraction of captions naming their image's class (or a synonym), overall and per class."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for p, lab in zip(predictions, labels):
        hits[lab].append(mentions_class(p, lab))
    per_class = {c: sum(v) / len(v) for c in CLASSES if (v := hits.get(c))}
    flat = [h for v in hits.values() for h in v]
    return {"accuracy": sum(flat) / len(flat) if flat else 0.0, "per_class": per_class}


def derangement(n: int, *, seed: int) -> list[int]:
    """A permutation with no fixed point (n >= 2), so no caption keeps its own image."""
    rng = random.Random(seed)
    while True:
        perm = list(range(n))
        rng.shuffle(perm)
        if n < 2 or all(i != p for i, p in enumerate(perm)):
            return perm


def condition_images(items: list[EvalItem], condition: str, *, seed: int) -> list[Image.Image]:
    if condition == "real":
        return [it.image for it in items]
    if condition == "blank":
        return [blank_image(it.image.size[0]) for it in items]
    if condition == "shuffled":
        return [items[j].image for j in derangement(len(items), seed=seed)]
    raise ValueError(f"unknown condition {condition!r}")


def evaluate(
    *,
    student: Student,
    items: list[EvalItem],
    out_dir: Path | None = None,
    generation: GenerationConfig = GenerationConfig(),
    conditions: tuple[str, ...] = CONDITIONS,
    seed: int = 0,
    source: str = "",
    on_progress: Callable[[int, int, dict], None] | None = None,
    batch_size: int = 32,
) -> dict:
    """Caption every item under each condition and score; write the report when out_dir is set."""
    if not items:
        raise ValueError("nothing to evaluate")
    total, done = len(items) * len(conditions), 0
    result = {"source": source, "n_items": len(items), "generation": asdict(generation),
              "seed": seed, "created_at": datetime.now(UTC).isoformat(), "conditions": {}}
    predictions: dict[str, list[str]] = {}
    refs, labels = [it.references for it in items], [it.label for it in items]
    for cond in conditions:
        images = condition_images(items, cond, seed=seed)
        preds: list[str] = []
        for s in range(0, len(images), batch_size):
            chunk = images[s:s + batch_size]
            if cond == "blank" and not generation.do_sample:  # greedy: one blank says it all
                preds += generate_captions(student, chunk[:1], config=generation) * len(chunk)
            else:
                preds += generate_captions(student, chunk, config=generation)
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, total, {"condition": cond})
        predictions[cond] = preds
        result["conditions"][cond] = {**caption_metrics(preds, refs), "class_mention": class_mention(preds, labels)}
    if out_dir is not None:
        from pipeline.student.report import write_report

        write_report(Path(out_dir), result=result, items=items, predictions=predictions)
    return result


def evaluation_dir(student_dir: Path, name: str | None = None) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Path(student_dir) / "evaluations" / (name or f"eval-{stamp}")
