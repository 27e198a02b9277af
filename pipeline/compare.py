"""Batch compare: run a student over a snapshot split, score each caption against the approved
one (sentence BLEU, ROUGE-L), and send the worst disagreements back to the review queue.

    python -m pipeline compare --student data/students/<name> --snapshot <snapshot id or folder>

Results go to <data_dir>/compare/<student>--<snapshot>--<split>.json (one row per item).
"""
from __future__ import annotations

import base64
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import typer
from sqlalchemy.engine import Engine

from db.engine import init_store, session_scope
from db.errors import StoreError
from db.models import JobKind, Review, ReviewAction, ReviewState
from db.review import decide
from pipeline.classes import mentions_class
from pipeline.jobs import JobReporter, launch_job
from pipeline.settings import Settings
from pipeline.snapshot import SPLITS, read_snapshot
from pipeline.student.config import GenerationConfig

Progress = Callable[[int, int], None]
COLUMNS = ("item_id", "label", "image", "approved", "teacher", "student", "bleu", "rouge_l",
           "exact", "class_mentioned", "teacher_rouge_l", "disagreement")


@dataclass(frozen=True)
class SendBackResult:
    reopened: list[int] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        text = f"Sent {len(self.reopened)} item(s) back to the review queue."
        return text + (" Not sent: " + " ".join(self.refused) if self.refused else "")


def score_pair(candidate: str, reference: str) -> dict:
    """Sentence BLEU (0-100), ROUGE-L F1 (0-1) and exact match of a caption against a reference."""
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = scorer.score(reference, candidate)["rougeL"].fmeasure if candidate.strip() else 0.0
    bleu = sacrebleu.sentence_bleu(candidate, [reference]).score if candidate.strip() else 0.0
    return {"bleu": round(bleu, 2), "rouge_l": round(rouge, 4),
            "exact": candidate.strip() == reference.strip()}


def snapshot_folder(settings: Settings, snapshot: str) -> Path:
    """A snapshot id (under exports_dir) or a folder path."""
    path = Path(snapshot)
    return path if (path / "manifest.json").is_file() else Path(settings.exports_dir) / snapshot


def results_path(settings: Settings, *, student_dir: Path, snapshot_id: str, split: str) -> Path:
    return Path(settings.data_dir) / "compare" / f"{Path(student_dir).name}--{snapshot_id}--{split}.json"


def run_compare(settings: Settings, *, student_dir: Path, snapshot: str, split: str = "validation",
                config: GenerationConfig = GenerationConfig(), batch_size: int = 8,
                progress: Progress | None = None) -> Path:
    """Caption every item of the split with the student, score it, write the results file."""
    from pipeline.student.generate import generate_captions
    from pipeline.student.loader import load_student

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    snap = read_snapshot(snapshot_folder(settings, snapshot))
    records = getattr(snap, split)
    if not records:
        raise ValueError(f"snapshot {snap.snapshot_id} has no {split} items")
    student = load_student(Path(student_dir))
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


def _row(record, text: str) -> dict:  # noqa: ANN001 - a SnapshotRecord
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


def load_results(path: Path) -> pd.DataFrame:
    """The results table, most disagreeing first."""
    rows = json.loads(Path(path).read_text())["rows"]
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    return df.sort_values(["disagreement", "item_id"], ascending=[False, True], ignore_index=True)


def list_results(settings: Settings) -> list[Path]:
    folder = Path(settings.data_dir) / "compare"
    return sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True) if folder.is_dir() else []


def start_compare(settings: Settings, *, student_dir: str, snapshot: str, split: str = "validation",
                  max_new_tokens: int = 40) -> int:
    """Run the compare as a job (a `python -m pipeline compare` process); returns the job id."""
    argv = ["compare", "--student", str(student_dir), "--snapshot", snapshot, "--split", split,
            "--max-new-tokens", str(max_new_tokens)]
    params = {"student": str(student_dir), "snapshot": snapshot, "split": split,
              "max_new_tokens": max_new_tokens}
    return launch_job(settings, kind=JobKind.compare, argv=argv, params=params)


def send_back(engine: Engine, *, image_ids: list[int], reviewer: str) -> SendBackResult:
    """Reopen decided items (approved/rejected/skipped) so they return to the review queue."""
    reopened, refused = [], []
    for image_id in image_ids:
        try:
            with session_scope(engine) as s:
                review = s.get(Review, int(image_id))
                if review is None:
                    refused.append(f"item {image_id} is not in the store.")
                    continue
                if review.state == ReviewState.pending:
                    refused.append(f"item {image_id} is already pending.")
                    continue
                decide(s, image_id=review.image_id, reviewer=reviewer, action=ReviewAction.reopen,
                       expected_version=review.version, note="sent back from batch compare")
            reopened.append(int(image_id))
        except StoreError as err:
            refused.append(str(err))
    return SendBackResult(reopened=reopened, refused=refused)


def compare(
    student: Path = typer.Option(..., help="Trained student folder."),
    snapshot: str = typer.Option(..., help="Snapshot id (under the exports folder) or snapshot folder."),
    split: str = typer.Option("validation", help="Which split to caption: train or validation."),
    max_new_tokens: int = typer.Option(40, help="Longest caption, in tokens."),
    batch_size: int = typer.Option(8, help="Images per generation batch."),
    job_id: int | None = typer.Option(None, help="Job row to report progress into (set by the app)."),
) -> None:
    """Caption a snapshot split with a student and score it against the approved captions."""
    settings = Settings()
    init_store(settings.resolved_database_url).dispose()
    with JobReporter(settings, job_id) as job:
        out = run_compare(settings, student_dir=student, snapshot=snapshot, split=split,
                          config=GenerationConfig(max_new_tokens=max_new_tokens), batch_size=batch_size,
                          progress=lambda done, total: job.progress(done, total, "captioning", force=True))
        df = load_results(out)
        job.result = {"path": str(out), "n_items": len(df), "mean_bleu": round(float(df.bleu.mean()), 2),
                      "mean_rouge_l": round(float(df.rouge_l.mean()), 4),
                      "exact_match": round(float(df.exact.mean()), 4)}
    typer.echo(json.dumps(job.result))


@dataclass(frozen=True)
class CompareView:
    """What the batch-compare page offers: students, snapshots, compare jobs and their results."""

    students: dict[str, tuple[str, str]]  # label -> (student folder, its snapshot id)
    snapshots: list[str]
    jobs: pd.DataFrame  # id, status, done, total, message, error
    results: list[Path]


def compare_view(settings: Settings, engine: Engine) -> CompareView:
    from db.jobs import list_jobs
    from db.lineage import list_snapshot_rows
    from pipeline.students import sync_students

    students = {f"{Path(r.path).name} · trained on {r.snapshot_id}": (r.path, r.snapshot_id)
                for r in sync_students(settings, engine)}
    with session_scope(engine) as s:
        snapshots = [r.id for r in list_snapshot_rows(s)]
        jobs = pd.DataFrame(
            [{"id": j.id, "status": j.status.value, "done": j.done, "total": j.total,
              "message": j.message, "error": j.error} for j in list_jobs(s, kind=JobKind.compare, limit=10)],
            columns=["id", "status", "done", "total", "message", "error"])
    return CompareView(students=students, snapshots=snapshots, jobs=jobs, results=list_results(settings))
