"""Services behind the playground: the models on offer, the input as each model sees it, and
the store's approved caption for an image (streamed captions with timings: pipeline/services/playground.py).

Models are opened by `load_playground_teacher` / `load_playground_student` (the app wraps each in st.cache_resource);
a model that cannot be opened raises ModelUnavailable with the next step to take.
"""
from __future__ import annotations

import enum
import io
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image as PILImage
from sqlalchemy.engine import Engine

from db.catalog import find_image_by_hash
from db.engine import session_scope
from db.models import Review, ReviewState
from pipeline.data.images import decode_upload, pixel_hash, square_resize, to_png
from pipeline.data.sources import BUNDLED_DIR
from pipeline.services.lineage import sync_students
from pipeline.settings import Settings
from pipeline.teacher.model import Teacher

BUNDLED = BUNDLED_DIR
STUDENT_EDGE = 32
TRAIN_HINT = "train one on the Train page (or `python -m pipeline train ...`)"


class ModelKind(str, enum.Enum):
    teacher = "teacher"
    student = "student"


class ModelUnavailable(RuntimeError):
    """A model that cannot be opened; the message says what to do next."""


@dataclass(frozen=True)
class ModelOption:
    """One model the playground can run, with where it came from."""

    kind: ModelKind
    path: str  # teacher: hub id or folder; student: the student folder
    snapshot_id: str | None = None
    metrics: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.kind == ModelKind.teacher:
            return f"Teacher · {self.path}"
        bits = [f"Student · {Path(self.path).name}", f"snapshot {self.snapshot_id or '?'}"]
        for key in ("real_class_mention", "blank_class_mention", "bleu", "final_val_loss"):
            if isinstance(self.metrics.get(key), (int, float)):
                bits.append(f"{key} {self.metrics[key]:.3g}")
        return " · ".join(bits)


@dataclass(frozen=True)
class StoreMatch:
    """The store's record of an image with the same pixels."""

    image_id: int
    label: str
    state: ReviewState
    approved_caption: str | None
    reviewer: str | None


@dataclass(frozen=True)
class PlaygroundInput:
    """The chosen image, the 32x32 both models receive, and the store's record of it."""

    name: str
    original_png: bytes
    size: tuple[int, int]
    model_png: bytes  # 32x32 RGB: what the student (and the teacher) is given
    match: StoreMatch | None
    label: str | None = None  # the CIFAR-10 class of a bundled example

    def model_image(self) -> PILImage.Image:
        return PILImage.open(io.BytesIO(self.model_png)).convert("RGB")


@dataclass(frozen=True)
class Example:
    """A bundled CIFAR-10 image for the gallery."""

    key: str  # "<class>/<file>.png" under pipeline/assets/cifar10
    label: str
    png: bytes


def bundled_examples(*, per_class: int = 2) -> list[Example]:
    """The first `per_class` bundled CIFAR-10 images of each class."""
    out = []
    for folder in sorted(p for p in BUNDLED.iterdir() if p.is_dir()):
        for f in sorted(folder.glob("*.png"))[:per_class]:
            out.append(Example(key=f"{folder.name}/{f.name}", label=folder.name, png=f.read_bytes()))
    return out


def example_png(key: str) -> bytes:
    path = (BUNDLED / key).resolve()
    if BUNDLED.resolve() not in path.parents or not path.is_file():
        raise FileNotFoundError(f"no bundled example {key!r}")
    return path.read_bytes()


def prepare_input(engine: Engine, *, data: bytes | None = None, name: str = "upload",
                  example: str | None = None) -> PlaygroundInput:
    """Decode an upload (or read a bundled example) and look it up in the store.

    Raises UploadError (a clear message) for empty, non-image, truncated or oversized files.
    """
    label = None
    if example is not None:
        data, name, label = example_png(example), example, example.split("/", 1)[0]
    image = decode_upload(data or b"", name)
    match = find_in_store(engine, image=image)
    return PlaygroundInput(name=name, original_png=to_png(image), size=image.size,
                           model_png=to_png(square_resize(image, STUDENT_EDGE)), match=match,
                           label=label or (match.label if match else None))


def find_in_store(engine: Engine, *, image: PILImage.Image) -> StoreMatch | None:
    """The store's image with exactly these pixels (same content hash), and its review."""
    with session_scope(engine) as s:
        row = find_image_by_hash(s, content_hash=pixel_hash(image))
        if row is None:
            return None
        review = s.get(Review, row.id)
        state = ReviewState(review.state) if review else ReviewState.pending
        approved = review.final_caption if review and state == ReviewState.approved else None
        return StoreMatch(image_id=row.id, label=row.label, state=state, approved_caption=approved,
                          reviewer=review.reviewer if review else None)


def list_models(settings: Settings, engine: Engine) -> list[ModelOption]:
    """The teacher, then every trained student (newest first) with its snapshot and metrics."""
    options = [ModelOption(kind=ModelKind.teacher, path=str(settings.teacher_model))]
    for row in sync_students(settings, engine):
        options.append(ModelOption(kind=ModelKind.student, path=row.path, snapshot_id=row.snapshot_id,
                                   metrics=dict(row.metrics)))
    return options


def load_playground_teacher(model: str, *, device: str = "auto") -> Teacher:
    from pipeline.teacher.model import TeacherError, load_teacher

    try:
        return load_teacher(model, device=device)
    except TeacherError as exc:
        raise ModelUnavailable(f"The teacher is not available: {exc}") from exc
    except (OSError, ValueError, KeyError, RuntimeError) as exc:  # e.g. a folder of another model
        raise ModelUnavailable(
            f"The teacher {model!r} could not be loaded ({type(exc).__name__}: {exc}). Point "
            "CAPSTUDIO_TEACHER_MODEL at a SmolVLM folder, or build a tiny test model with "
            "`python -m pipeline build-tiny teacher <folder>`."
        ) from exc


def load_playground_student(folder: str, *, device: str = "cpu", native_kernels: bool = True,
                            cpu_path: str | None = None):
    """The student on the inference path chosen for this CPU (limited to Settings.cpu_path) and
    its memory; `student_path(student)` says which and why."""
    from pipeline.student.loader import load_student

    try:
        return load_student(Path(folder), device=device, native_kernels=native_kernels, cpu_path=cpu_path)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelUnavailable(
            f"The student in {folder} cannot be loaded ({type(exc).__name__}: {exc}). Check that its "
            f"base model is available offline, or {TRAIN_HINT}."
        ) from exc


def student_path(student) -> str:
    """One line for the page: the path the student's base runs on, and why (inference_path.py)."""
    choice = student.inference
    return "inference path: not recorded" if choice is None else f"{choice.path.value} · {choice.reason}"


def no_student_message() -> str:
    return f"No student has been trained yet: {TRAIN_HINT}."


@dataclass(frozen=True)
class PlaygroundView:
    """Everything the playground page renders before anything runs."""

    examples: list[Example]
    models: list[ModelOption]
    input: PlaygroundInput | None
    error: str | None = None

    @property
    def teacher(self) -> ModelOption:
        return next(m for m in self.models if m.kind == ModelKind.teacher)

    @property
    def students(self) -> list[ModelOption]:
        return [m for m in self.models if m.kind == ModelKind.student]


def open_playground(settings: Settings, engine: Engine, *, data: bytes | None = None,
                    name: str = "upload", example: str | None = None) -> PlaygroundView:
    """The gallery, the models on offer, and the chosen input (or why it cannot be used)."""
    from pipeline.data.images import UploadError

    models = list_models(settings, engine)
    examples = bundled_examples(per_class=2)
    if data is None and example is None:
        return PlaygroundView(examples=examples, models=models, input=None)
    try:
        return PlaygroundView(examples=examples, models=models,
                              input=prepare_input(engine, data=data, name=name, example=example))
    except UploadError as err:
        return PlaygroundView(examples=examples, models=models, input=None, error=str(err))
