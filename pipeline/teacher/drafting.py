"""Drafting captions for stored images with the teacher: resumable, batched, one commit per batch.

A run killed at any moment (even kill -9) loses at most the batch in flight; run it again and it
writes the missing drafts only. Entry point: `python -m pipeline caption --help`.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from db.catalog import add_draft, get_images, images_without_draft
from db.engine import session_scope
from db.models import Image
from pipeline.data.images import decode_png
from pipeline.generation import GenerationConfig
from pipeline.settings import Settings
from pipeline.teacher.flags import flags_for_draft
from pipeline.teacher.model import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_PROMPT,
    TEACHER_GENERATION,
    CaptionPlan,
    Teacher,
    caption_plan,
    generate_batch,
    provenance,
)


def job_plan(settings: Settings, *, device: str | None = None, dtype: str = "auto",
             batch_size: int | None = None) -> CaptionPlan:
    """What a captioning job runs with these options (None/auto: the settings, then the hardware):
    the one chooser of the job's dtype, batch size and processor overrides (bench/teacher.py's
    "default" row calls it too)."""
    return caption_plan(device or settings.device, dtype=dtype, batch_size=batch_size or settings.batch_size)


@dataclass(frozen=True)
class CaptionRequest:
    """Which images to caption and how."""

    prompt: str = DEFAULT_PROMPT
    """The captioning instruction given to the teacher with each image."""
    params: GenerationConfig = TEACHER_GENERATION
    """Decoding settings."""
    batch_size: int = DEFAULT_BATCH_SIZE
    """Images per generation batch (and per commit)."""
    limit: int | None = None
    """Caption at most this many images in this run."""
    image_ids: tuple[int, ...] | None = None
    """Only these images (default: every image)."""
    per_prompt: bool = False
    """Caption images lacking a draft for THIS prompt and model (a re-draft with a new prompt);
    by default only images with no draft at all are captioned."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.limit is not None and self.limit < 0:
            raise ValueError("limit must be >= 0")
        if not self.prompt.strip():
            raise ValueError("the prompt must not be empty")


@dataclass(frozen=True)
class CaptionSummary:
    written: int
    total: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {"written": self.written, "total": self.total, "seconds": round(self.seconds, 3),
                "images_per_s": round(self.images_per_s, 4)}


def _missing(session: Session, request: CaptionRequest, model_id: str, ids: list[int] | None,
             limit: int | None = None) -> list[int]:
    if request.per_prompt:
        return images_without_draft(session, prompt=request.prompt, model_id=model_id,
                                    image_ids=ids, limit=limit)
    return images_without_draft(session, image_ids=ids, limit=limit)


def write_drafts(session: Session, *, texts: dict[int, str], provenance: dict,
                 per_prompt: bool = False) -> int:
    """Record teacher drafts {image_id: text} with provenance and auto-flags; returns how many.

    Images that gained a draft meanwhile (another run; for `per_prompt`, one with this prompt
    and model) are skipped, so two runs never write the same draft twice.
    """
    ids = list(texts)
    if per_prompt:
        still = set(images_without_draft(session, prompt=provenance["prompt"],
                                         model_id=provenance["model_id"], image_ids=ids))
    else:
        still = set(images_without_draft(session, image_ids=ids))
    labels = dict(session.exec(select(Image.id, Image.label).where(Image.id.in_(ids))).all())
    written = 0
    for image_id in ids:
        if image_id not in still:
            continue
        text = texts[image_id]
        # drafts added earlier in this loop are flushed, so near-duplicates within a batch count
        flags = flags_for_draft(session, image_id=image_id, text=text, label=labels[image_id])
        add_draft(session, image_id=image_id, text=text, flags=flags, **provenance)
        written += 1
    return written


def run_captioning(engine: Engine, teacher: Teacher, request: CaptionRequest, *,
                   on_progress: Callable[[int, int], None] | None = None) -> CaptionSummary:
    """Draft captions for the images that need one; each batch is committed on its own."""
    ids = list(request.image_ids) if request.image_ids is not None else None
    with session_scope(engine) as s:
        todo = _missing(s, request, teacher.model_id, ids, request.limit)
    t0, written = time.perf_counter(), 0
    if on_progress is not None:
        on_progress(0, len(todo))
    for start in range(0, len(todo), request.batch_size):
        with session_scope(engine) as s:
            rows = get_images(s, ids=todo[start:start + request.batch_size])
        chunk, images = [r.id for r in rows], [decode_png(r.png) for r in rows]
        if not rows:
            continue
        texts, _ = generate_batch(teacher, images, prompt=request.prompt, params=request.params)
        prov = provenance(teacher, prompt=request.prompt, params=request.params,
                          processor_params=CaptionPlan.processor_params(images), batch_size=request.batch_size)
        with session_scope(engine) as s:
            written += write_drafts(s, texts=dict(zip(chunk, texts)), provenance=prov,
                                    per_prompt=request.per_prompt)
        if on_progress is not None:
            on_progress(min(start + request.batch_size, len(todo)), len(todo))
    return CaptionSummary(written=written, total=len(todo), seconds=time.perf_counter() - t0)
