"""Batch compare: run a student over a snapshot split and score each caption against the approved one
(sentence BLEU 0-100 from pipeline/student/metrics.py, ROUGE-L); the results file is what the Batch
compare page shows.

Results go to <data_dir>/compare/<student>--<snapshot>--<split>.json (one row per item).
"""
from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from pipeline.classes import mentions_class
from pipeline.data.snapshot import SPLITS, contained_file, verify_snapshot
from pipeline.generation import GenerationConfig
from pipeline.settings import Settings
from pipeline.student.metrics import sentence_bleu

Progress = Callable[[int, int], None]
COLUMNS = ("item_id", "label", "image", "approved", "teacher", "student", "bleu", "rouge_l",
           "exact", "class_mentioned", "teacher_rouge_l", "disagreement")


def score_pair(candidate: str, reference: str) -> dict:
    """Sentence BLEU (0-100), ROUGE-L F1 (0-1) and exact match of a caption against a reference."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = scorer.score(reference, candidate)["rougeL"].fmeasure if candidate.strip() else 0.0
    return {"bleu": sentence_bleu(candidate, [reference]), "rouge_l": round(rouge, 4),
            "exact": candidate.strip() == reference.strip()}


def snapshot_folder(settings: Settings, snapshot: str) -> Path:
    """A snapshot folder path, or a snapshot id: a plain name under exports_dir (never `..`)."""
    path = Path(snapshot)
    if (path / "manifest.json").is_file() or path.is_absolute() or len(path.parts) > 1:
        return path  # a folder: verify_snapshot says if it is not a snapshot
    return contained_file(Path(settings.exports_dir), snapshot, where="snapshot id")


def results_path(settings: Settings, *, student_dir: Path, snapshot_id: str, split: str) -> Path:
    return Path(settings.data_dir) / "compare" / f"{Path(student_dir).name}--{snapshot_id}--{split}.json"


def run_compare(settings: Settings, *, student_dir: Path, snapshot: str, split: str = "validation",
                config: GenerationConfig = GenerationConfig(), batch_size: int = 8,
                progress: Progress | None = None, expected_hash: str | None = None) -> Path:
    """Caption every item of the split with the student, score it, write the results file
    (after verify_snapshot: its files, its content hash, and `expected_hash` if the store knows one)."""
    from pipeline.student.generate import generate_captions
    from pipeline.student.loader import load_student

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    snap = verify_snapshot(snapshot_folder(settings, snapshot), expected_hash=expected_hash)
    records = getattr(snap, split)
    if not records:
        raise ValueError(f"snapshot {snap.snapshot_id} has no {split} items")
    student = load_student(Path(student_dir), native_kernels=settings.native_kernels, cpu_path=settings.cpu_path)
    rows: list[dict] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        texts = generate_captions(student, [r.image() for r in chunk], config=config, batch_size=batch_size)
        rows += [_row(r, text) for r, text in zip(chunk, texts)]
        if progress is not None:
            progress(len(rows), len(records))
    out = results_path(settings, student_dir=Path(student_dir), snapshot_id=snap.snapshot_id, split=split)
    _write_json(out, {"student": str(student_dir), "snapshot_id": snap.snapshot_id, "split": split,
                      "generation": asdict(config), "rows": rows})
    return out


def _row(record, text: str) -> dict:
    score = score_pair(text, record.text)
    teacher = score_pair(record.teacher_draft, record.text) if record.teacher_draft else {"rouge_l": None}
    return {
        "item_id": record.item_id, "label": record.label,
        "image": "data:image/png;base64," + base64.b64encode(record.image_png).decode(),
        "approved": record.text, "teacher": record.teacher_draft, "student": text, **score,
        "class_mentioned": mentions_class(text, record.label),
        "teacher_rouge_l": teacher["rouge_l"], "disagreement": round(1.0 - score["rouge_l"], 4),
    }


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, ensure_ascii=False)
    os.replace(tmp, path)


def read_results(path: Path) -> pd.DataFrame:
    """The results table, most disagreeing first."""
    rows = json.loads(Path(path).read_text())["rows"]
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    return df.sort_values(["disagreement", "item_id"], ascending=[False, True], ignore_index=True)


def list_results(settings: Settings) -> list[Path]:
    folder = Path(settings.data_dir) / "compare"
    return sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True) if folder.is_dir() else []
