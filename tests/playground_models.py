"""Helpers for the playground/train/compare tests: a store with approved pairs, a snapshot of
them, a tiny teacher and a tiny trained student registered against that snapshot."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from db.engine import session_scope
from db.models import ReviewAction
from db.review import decide, get_item
from pipeline.data.export import export_snapshot
from pipeline.settings import Settings
from pipeline.student.config import StudentConfig, TrainConfig
from pipeline.tiny import build_tiny_phi3, build_tiny_teacher
from tests.app_store import engine_for, fill_store

REPO = Path(__file__).resolve().parent.parent
SMOLVLM_ASSETS = REPO / "tests" / "assets" / "smolvlm_processor"
CLASSES3 = ("cat", "dog", "ship")


def approved_caption(label: str, n: int) -> str:
    return f"a small {label} photo number {n}."


def tiny_teacher(folder: Path) -> Path:
    return build_tiny_teacher(folder, processor_dir=SMOLVLM_ASSETS)


def tiny_student_config(base: Path) -> StudentConfig:
    return StudentConfig(base_model=str(base), projector_hidden=64, lora_r=8, lora_alpha=16,
                         lora_dropout=0.0, quantize_4bit=False)


def approve_all(engine, ids: dict[str, list[int]], *, reviewer: str = "ann") -> None:
    """Edit-approve every item with approved_caption(label, n)."""
    with session_scope(engine) as s:
        for label, image_ids in ids.items():
            for n, image_id in enumerate(image_ids):
                item = get_item(s, image_id=image_id)
                decide(s, image_id=image_id, reviewer=reviewer, action=ReviewAction.edit_approve,
                       expected_version=item.version, caption=approved_caption(label, n))


def store_with_snapshot(data_dir: Path, *, per_class: int = 2, classes=CLASSES3) -> tuple[dict, str]:
    """Fill a store, approve everything, export a snapshot; returns (ids by class, snapshot id)."""
    ids = fill_store(data_dir, per_class=per_class, classes=classes)
    engine = engine_for(data_dir)
    approve_all(engine, ids)
    settings = Settings(data_dir=data_dir, _env_file=None)
    result = export_snapshot(settings, engine, override_balance=True, val_fraction=0.34, seed=0,
                             exported_by="ann")
    engine.dispose()
    return ids, result.snapshot_id


def train_tiny_student(data_dir: Path, *, snapshot_id: str, base: Path, name: str = "tiny-student",
                       steps: int = 2) -> Path:
    """Train a tiny student for `steps` optimizer steps into data/students/<name>."""
    from pipeline.student.train import train

    settings = Settings(data_dir=data_dir, _env_file=None)
    out = settings.students_dir / name
    train(snapshot_dir=settings.exports_dir / snapshot_id, out_dir=out, student_config=tiny_student_config(base),
          train_config=TrainConfig(max_steps=steps, batch_size=4, checkpoint_every=0, warmup_ratio=0.0),
          device="cpu", show_progress=False)
    return out


def tiny_base(folder: Path, *, init_std: float = 0.02) -> Path:
    """A tiny random Phi-3. init_std ~0.5 lets a frozen random LM head reach confident logits,
    so a few dozen steps of LoRA + projector memorise a handful of captions."""
    return build_tiny_phi3(folder, init_std=init_std)


@dataclass(frozen=True)
class PlaygroundModels:
    """A store with an exported snapshot, a tiny teacher and a tiny student trained on that snapshot."""

    data: Path
    ids: dict
    snapshot_id: str
    teacher: Path
    student: Path


def playground_models(root: Path) -> PlaygroundModels:
    """Everything the playground needs, built under `root` (data/, teacher/, base/)."""
    data = root / "data"
    ids, snapshot_id = store_with_snapshot(data)
    teacher = tiny_teacher(root / "teacher")
    student = train_tiny_student(data, snapshot_id=snapshot_id, base=tiny_base(root / "base"))
    return PlaygroundModels(data, ids, snapshot_id, teacher, student)
