"""Fixtures for the student tests: a tiny random Phi-3 base and a student trained on 20 real
CIFAR-10 images with 20 distinct captions (built once per session, real code path)."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.data.snapshot import SnapshotRecord, write_snapshot
from pipeline.student.config import StudentConfig, TrainConfig

ASSETS = Path(__file__).resolve().parent / "assets"
CIFAR20 = ASSETS / "student_cifar20"

CAPTIONS = {
    "airplane": ("a white jet flying in a clear blue sky.", "a small propeller plane parked on grass."),
    "automobile": ("a red sports car on a city street.", "a black sedan seen from the front."),
    "bird": ("a small brown bird perched on a branch.", "an ostrich standing in a dry field."),
    "cat": ("a grey cat lying on a soft blanket.", "an orange kitten looking at the camera."),
    "deer": ("a deer grazing in a green meadow.", "a young fawn standing among trees."),
    "dog": ("a happy dog running across the lawn.", "a puppy sitting next to a wooden fence."),
    "frog": ("a green frog resting on a wet leaf.", "a brown toad sitting on muddy ground."),
    "horse": ("a brown horse galloping in a paddock.", "a white pony standing near a barn."),
    "ship": ("a large cargo ship sailing on the ocean.", "a sailboat anchored in a calm harbor."),
    "truck": ("a blue truck driving on a highway.", "a yellow fire truck parked by a building."),
}
# Tiny-student settings: the 4-bit base + LoRA + projector path, sized for a 2-core CPU.
TINY_STUDENT = dict(lora_r=16, lora_alpha=32, lora_dropout=0.0, projector_hidden=512)
MEMORISE = TrainConfig(max_steps=80, batch_size=20, lr_lora=3e-3, lr_projector=3e-3,
                       checkpoint_every=0, seed=0)


def cifar20_records() -> list[SnapshotRecord]:
    """20 real CIFAR-10 test images (two per class), each with its own caption."""
    return [SnapshotRecord(image_png=(CIFAR20 / f"{label}_{i:04d}.png").read_bytes(), text=cap,
                           label=label, item_id=f"{label}-{i}")
            for label, caps in CAPTIONS.items() for i, cap in enumerate(caps)]


@pytest.fixture(scope="session")
def tiny_phi3(tmp_path_factory) -> Path:
    from pipeline.tiny import build_tiny_phi3, find_phi3_tokenizer_dir

    return build_tiny_phi3(tmp_path_factory.mktemp("tiny-phi3"), tokenizer_dir=find_phi3_tokenizer_dir(),
                           init_std=0.1)


@pytest.fixture(scope="session")
def cifar20_snapshot(tmp_path_factory) -> Path:
    return write_snapshot(cifar20_records(), tmp_path_factory.mktemp("snapshots"),
                          snapshot_id="cifar20", val_fraction=0.0)


@pytest.fixture(scope="session")
def memorised_student(tmp_path_factory, tiny_phi3, cifar20_snapshot) -> Path:
    from pipeline.student.train import train

    out = tmp_path_factory.mktemp("students") / "memorised"
    train(snapshot_dir=cifar20_snapshot, out_dir=out,
          student_config=StudentConfig(base_model=str(tiny_phi3), **TINY_STUDENT),
          train_config=MEMORISE, device="cpu", show_progress=False)
    return out
