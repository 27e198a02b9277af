"""SQLModel tables: images, teacher drafts, review state, the review event log, jobs, lineage."""
from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import JSON, Column, Index, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class SourceKind(str, enum.Enum):
    bundled = "bundled"
    cifar10 = "cifar10"
    folder = "folder"
    upload = "upload"


class ReviewState(str, enum.Enum):
    pending = "pending"
    approved = "approved"
    rejected = "rejected"
    skipped = "skipped"


class ReviewAction(str, enum.Enum):
    approve = "approve"
    edit_approve = "edit_approve"
    reject = "reject"
    skip = "skip"
    undo = "undo"
    reopen = "reopen"
    adjudicate = "adjudicate"  # a curator settled a disputed second opinion (db/qc.py)


class RejectReason(str, enum.Enum):
    wrong_object = "wrong_object"
    hallucination = "hallucination"
    too_vague = "too_vague"
    unreadable_image = "unreadable_image"
    refusal = "refusal"
    other = "other"


class Verdict(str, enum.Enum):
    """One reviewer's outcome on an item, as quality control compares them."""

    approve = "approve"  # the teacher's draft as it is
    edit = "edit"  # approved with a caption of their own
    reject = "reject"


class OpinionState(str, enum.Enum):
    waiting = "waiting"  # routed to a second reviewer, not decided yet
    agreed = "agreed"  # both approve the same caption (normalised), or both reject
    disputed = "disputed"  # waits for a curator's adjudication
    adjudicated = "adjudicated"
    withdrawn = "withdrawn"  # the item went back to review (undone or sent back) while open: nothing to compare


class RouteReason(str, enum.Enum):
    sample = "sample"  # drawn in the sample fraction
    edited = "edited"  # the first reviewer edited the draft (and the policy routes every edit)


class Adjudication(str, enum.Enum):
    first = "first"  # keep the first reviewer's decision
    second = "second"  # keep the second reviewer's decision
    merged = "merged"  # approve a caption the curator wrote from both
    rejected = "rejected"


class JobKind(str, enum.Enum):
    caption = "caption"
    export = "export"
    train = "train"
    evaluate = "evaluate"
    compare = "compare"


class JobStatus(str, enum.Enum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"
    interrupted = "interrupted"  # its process died (no heartbeat, or its pid is gone): resumable


class Image(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    source_kind: SourceKind = Field(index=True)
    source_key: str = Field(index=True)  # e.g. "cifar10:test:123", "bundled:cat/cat_0001.png", a file path
    label: str = Field(index=True)
    content_hash: str = Field(unique=True, index=True)  # sha256 of the decoded RGB pixels
    width: int
    height: int
    png: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class Draft(SQLModel, table=True):
    """A teacher caption; never edited in place (a regeneration is a new row)."""

    id: int | None = Field(default=None, primary_key=True)
    image_id: int = Field(foreign_key="image.id", index=True)
    text: str
    model_id: str
    model_revision: str | None = None
    prompt: str
    generation_params: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    processor_params: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    flags: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class Review(SQLModel, table=True):
    """The review state of one image; `version` refuses stale writes."""

    # the queue asks "first free pending item of class X": one index answers it
    __table_args__ = (Index("ix_review_queue", "state", "label", "image_id"),)

    image_id: int = Field(foreign_key="image.id", primary_key=True)
    label: str = Field(index=True)  # copy of the image's class, for fast balanced queues
    state: ReviewState = Field(default=ReviewState.pending, index=True)
    draft_id: int | None = Field(default=None, foreign_key="draft.id")
    final_caption: str | None = None
    reviewer: str | None = Field(default=None, index=True)
    reject_reason: RejectReason | None = None
    note: str | None = None
    flag_count: int = Field(default=0, index=True)
    decided_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)
    version: int = 1
    claimed_by: str | None = None
    claim_expires_at: datetime | None = Field(default=None, index=True)


class ReviewTally(SQLModel, table=True):
    """How many review rows have each (class, state, edited): written only by the database's triggers
    on `review` (migration 0008), read through db/tally.py. On PostgreSQL a key may have several rows
    (signed deltas): its count is their sum."""

    __tablename__ = "review_tally"
    __table_args__ = (Index("ix_review_tally_key", "label", "state", "edited"),)

    id: int | None = Field(default=None, primary_key=True)
    label: str
    state: str  # a ReviewState value
    edited: bool  # approved with a caption other than the draft's text
    n: int


class ReviewEvent(SQLModel, table=True):
    """Append-only log of every review decision."""

    id: int | None = Field(default=None, primary_key=True)
    image_id: int = Field(foreign_key="image.id", index=True)
    reviewer: str = Field(index=True)
    action: ReviewAction
    before_state: ReviewState
    after_state: ReviewState
    before_caption: str | None = None
    after_caption: str | None = None
    reject_reason: RejectReason | None = None
    note: str | None = None
    undone: bool = False
    created_at: datetime = Field(default_factory=utcnow, index=True)


class Job(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    kind: JobKind = Field(index=True)
    params: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: JobStatus = Field(default=JobStatus.queued, index=True)
    done: int = 0
    total: int = 0
    message: str | None = None
    error: str | None = None
    log_path: str | None = None
    result: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    pid: int | None = None
    host: str | None = None  # the machine the worker process runs on (its pid means something there)
    heartbeat_at: datetime | None = None  # the worker writes it every few seconds while it lives
    cancel_requested: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class SnapshotRecordRow(SQLModel, table=True):
    """An export snapshot known to the store (the files live on disk, immutable)."""

    __tablename__ = "snapshot"
    id: str = Field(primary_key=True)  # the snapshot id, also its folder name
    path: str
    content_hash: str = Field(index=True)
    n_items: int
    reviewers: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    image_ids: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class Student(SQLModel, table=True):
    """A trained student folder and the snapshot it came from (lineage)."""

    __table_args__ = (UniqueConstraint("path"),)
    id: int | None = Field(default=None, primary_key=True)
    path: str
    snapshot_id: str = Field(foreign_key="snapshot.id", index=True)
    metrics: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


# "Most auto-flags first" within a class reads this index in order (no sort over the class).
Index("ix_review_risk", Review.state, Review.label, Review.flag_count.desc(), Review.image_id)


class User(SQLModel, table=True):
    """A person who may sign in (password or OIDC mode). `role` is one of pipeline.identity.Role's
    values, or None until an admin grants one; `password_hash` is None for OIDC-only accounts."""

    __tablename__ = "user_account"  # "user" is a reserved word in PostgreSQL
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    role: str | None = None
    password_hash: str | None = None
    disabled: bool = False
    failed_sign_ins: int = 0
    locked_until: datetime | None = None
    password_changed_at: datetime | None = None
    last_sign_in_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)


class QcPolicyRow(SQLModel, table=True):
    """The quality-control policy a curator set (one row, id 1); absent: the settings' defaults."""

    __tablename__ = "qc_policy"
    id: int = Field(default=1, primary_key=True)
    enabled: bool = False
    sample_fraction: float = 0.2
    route_edited: bool = True
    updated_by: str | None = None
    updated_at: datetime = Field(default_factory=utcnow)


class SecondOpinion(SQLModel, table=True):
    """A blind second review of one decided item, and its adjudication. The first decision is
    copied here when the item is routed; the second never changes the item's Review row."""

    __tablename__ = "second_opinion"
    __table_args__ = (Index("ix_second_opinion_queue", "state", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    image_id: int = Field(foreign_key="image.id", unique=True)
    draft_id: int | None = Field(default=None, foreign_key="draft.id")
    routed_because: RouteReason
    state: OpinionState = Field(default=OpinionState.waiting)
    first_reviewer: str = Field(index=True)
    first_verdict: Verdict
    first_caption: str | None = None
    first_reason: RejectReason | None = None
    first_decided_at: datetime | None = None
    second_reviewer: str | None = Field(default=None, index=True)
    second_verdict: Verdict | None = None
    second_caption: str | None = None
    second_reason: RejectReason | None = None
    second_note: str | None = None
    second_decided_at: datetime | None = None
    claimed_by: str | None = None
    claim_expires_at: datetime | None = None
    adjudicator: str | None = None
    adjudication: Adjudication | None = None
    adjudicated_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    version: int = 1
