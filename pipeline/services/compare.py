"""Service behind the Batch compare page: start a compare job, list students, snapshots and results,
and send the worst disagreements back to the review queue."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from sqlalchemy.engine import Engine

from db.engine import session_scope
from db.errors import StoreError
from db.jobs import list_jobs
from db.lineage import list_snapshot_rows
from db.models import JobKind, Review, ReviewAction, ReviewState
from db.qc import withdraw_second_opinion
from db.review import decide
from pipeline.identity import Actor, Role, require
from pipeline.jobs import start_job
from pipeline.services.lineage import sync_students
from pipeline.settings import Settings
from pipeline.student.compare import list_results, read_results
from pipeline.student.metrics import BLEU_LABEL

__all__ = ["BLEU_LABEL", "CompareView", "SendBackResult", "compare_view", "read_results", "send_back", "start_compare"]


@dataclass(frozen=True)
class SendBackResult:
    reopened: list[int] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        text = f"Sent {len(self.reopened)} item(s) back to the review queue."
        return text + (" Not sent: " + " ".join(self.refused) if self.refused else "")


def start_compare(settings: Settings, *, actor: Actor, student_dir: str, snapshot: str, split: str = "validation",
                  max_new_tokens: int = 40) -> int:
    """Run the compare as a job (a `python -m pipeline compare` process); returns the job id."""
    require(actor, Role.curator, "start a batch compare")
    argv = ["compare", "--student", str(student_dir), "--snapshot", snapshot, "--split", split,
            "--max-new-tokens", str(max_new_tokens)]
    params = {"student": str(student_dir), "snapshot": snapshot, "split": split,
              "max_new_tokens": max_new_tokens, "started_by": actor.name}
    return start_job(settings, kind=JobKind.compare, argv=argv, params=params)


def send_back(engine: Engine, *, actor: Actor, image_ids: list[int]) -> SendBackResult:
    """Reopen decided items (approved/rejected/skipped) so they return to the review queue; their
    open second opinions (waiting or disputed) are withdrawn."""
    require(actor, Role.curator, "send items back to review")
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
                decide(s, image_id=review.image_id, reviewer=actor.name, action=ReviewAction.reopen,
                       expected_version=review.version, note="sent back from batch compare")
                withdraw_second_opinion(s, image_id=review.image_id)  # out of the adjudication queue
            reopened.append(int(image_id))
        except StoreError as err:
            refused.append(str(err))
    return SendBackResult(reopened=reopened, refused=refused)


@dataclass(frozen=True)
class CompareView:
    """What the batch-compare page offers: students, snapshots, compare jobs and their results."""

    students: dict[str, tuple[str, str]]  # label -> (student folder, its snapshot id)
    snapshots: list[str]
    jobs: pd.DataFrame  # id, status, done, total, message, error
    results: list[Path]


def compare_view(settings: Settings, engine: Engine) -> CompareView:
    students = {f"{Path(r.path).name} · trained on {r.snapshot_id}": (r.path, r.snapshot_id)
                for r in sync_students(settings, engine)}
    with session_scope(engine) as s:
        snapshots = [r.id for r in list_snapshot_rows(s)]
        jobs = pd.DataFrame(
            [{"id": j.id, "status": j.status.value, "done": j.done, "total": j.total,
              "message": j.message, "error": j.error} for j in list_jobs(s, kind=JobKind.compare, limit=10)],
            columns=["id", "status", "done", "total", "message", "error"])
    return CompareView(students=students, snapshots=snapshots, jobs=jobs, results=list_results(settings))
