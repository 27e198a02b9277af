"""Issue 15, part 2: options for learning from few examples (bench/learnability.py measures them):
class-preserving augmentation, the conv-stem projector, early stopping on the validation split."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline.data.snapshot import write_snapshot
from pipeline.student.augment import augment_pixels
from pipeline.student.config import StudentConfig, TrainConfig
from pipeline.student.generate import generate_captions
from pipeline.student.loader import load_student
from pipeline.student.model import CIFAR_MEAN, CIFAR_STD, ConvProjector, PatchProjector, images_to_pixels
from pipeline.student.train import train
from tests.conftest_student import MEMORISE, TINY_STUDENT, cifar20_records

REPO = Path(__file__).resolve().parent.parent
RELOAD = """
import json, sys
from pipeline.student.generate import generate_captions
from pipeline.student.loader import load_student
from tests.conftest_student import cifar20_records
print(json.dumps(generate_captions(load_student(sys.argv[1]), [r.image() for r in cifar20_records()])))
"""


def _pixels() -> torch.Tensor:
    return images_to_pixels([r.image() for r in cifar20_records()], image_size=32)


def _flips_and_shifts(x: torch.Tensor, shift: int = 2) -> torch.Tensor:
    """The augmentation as it was before color_jitter and crop_scale existed."""
    b, _, h, w = x.shape
    flip = torch.rand(b) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    padded = torch.nn.functional.pad(x, (shift,) * 4, mode="reflect")
    dy, dx = torch.randint(0, 2 * shift + 1, (2, b)).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


def test_augmentation_keeps_shape_and_range_and_repeats_per_seed():
    x = _pixels()
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)

    def aug(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return augment_pixels(x, color_jitter=0.4, crop_scale=0.5)

    a, b, c = aug(0), aug(0), aug(1)
    assert a.shape == x.shape and a.dtype == x.dtype
    rgb = a * std + mean
    assert rgb.min() >= -1e-5 and rgb.max() <= 1 + 1e-5  # still pixels in [0, 1] once un-normalised
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.allclose(a, x)
    torch.manual_seed(3)  # options off: the very draws (and pixels) of the flips-and-shifts path
    plain = augment_pixels(x)
    torch.manual_seed(3)
    assert torch.equal(plain, _flips_and_shifts(x))


def test_colour_jitter_and_crops_each_change_images_but_not_their_size():
    x = _pixels()
    for kw in ({"color_jitter": 0.3}, {"crop_scale": 0.6}):
        torch.manual_seed(0)
        plain = augment_pixels(x)
        torch.manual_seed(0)
        out = augment_pixels(x, **kw)
        assert out.shape == x.shape and not torch.allclose(out, plain), kw


@pytest.fixture(scope="module")
def conv_student(tmp_path_factory, tiny_phi3, cifar20_snapshot) -> Path:
    out = tmp_path_factory.mktemp("conv") / "student"
    sc = StudentConfig(base_model=str(tiny_phi3), projector="conv", conv_channels=16, **TINY_STUDENT)
    train(snapshot_dir=cifar20_snapshot, out_dir=out, student_config=sc, train_config=MEMORISE,
          device="cpu", show_progress=False)
    return out


def test_conv_projector_trains_saves_and_reloads_identically(conv_student):
    assert json.loads((conv_student / "student.json").read_text())["projector"] == "conv"
    rows = [json.loads(x) for x in (conv_student / "loss_curve.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] / 4
    student = load_student(conv_student)
    assert isinstance(student.projector, ConvProjector)
    saved = load_file(conv_student / "projector.safetensors")
    assert saved.keys() == student.projector.state_dict().keys()
    assert all(torch.equal(v, student.projector.state_dict()[k].float()) for k, v in saved.items())
    records = cifar20_records()
    here = generate_captions(student, [r.image() for r in records])
    assert sum(h.strip() == r.text for h, r in zip(here, records)) >= 10  # it learned from the pixels
    proc = subprocess.run([sys.executable, "-c", RELOAD, str(conv_student)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == here


def test_student_folder_without_the_projector_field_loads_as_mlp(memorised_student, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(memorised_student, old, ignore=shutil.ignore_patterns("checkpoints", "evaluations"))
    cfg = json.loads((old / "student.json").read_text())
    assert cfg.pop("projector") == "mlp"
    cfg.pop("conv_channels")
    (old / "student.json").write_text(json.dumps(cfg))  # as written before the field existed
    images = [r.image() for r in cifar20_records()[:6]]
    student = load_student(old)
    assert isinstance(student.projector, PatchProjector)
    assert generate_captions(student, images) == generate_captions(load_student(memorised_student), images)


@pytest.fixture(scope="module")
def val_snapshot(tmp_path_factory) -> Path:
    return write_snapshot(cifar20_records(), tmp_path_factory.mktemp("snaps"), snapshot_id="s20v",
                          val_fraction=0.3, seed=0)


def _early(tmp_path: Path, base: Path, snap: Path, name: str, **kw) -> tuple[Path, dict]:
    tc = TrainConfig(max_steps=40, batch_size=7, lr_lora=1e-2, lr_projector=1e-2, checkpoint_every=0,
                     eval_every=4, early_stopping=True, seed=0, **kw)
    out = tmp_path / name
    metrics = train(snapshot_dir=snap, out_dir=out, student_config=StudentConfig(base_model=str(base), **TINY_STUDENT),
                    train_config=tc, device="cpu", show_progress=False)
    return out, metrics


def test_early_stopping_keeps_the_lowest_validation_loss_weights(tmp_path, tiny_phi3, val_snapshot):
    out, metrics = _early(tmp_path, tiny_phi3, val_snapshot, "keep")
    rows = [json.loads(x) for x in (out / "loss_curve.jsonl").read_text().splitlines()]
    vals = {r["step"]: r["val_loss"] for r in rows if r.get("val_loss") is not None}
    best = metrics["early_stopping"]
    assert metrics["optimizer_steps"] == 40 and best["stopped_at"] is None
    assert best["best_step"] == min(vals, key=vals.get) < 40  # the unseen captions' loss rose again
    assert best["best_val_loss"] == pytest.approx(min(vals.values()))
    kept = load_file(out / "projector.safetensors")
    last = load_file(out / "checkpoints" / "step-000040" / "projector.safetensors")  # the last weights
    at_best = load_file(out / "best" / "projector.safetensors")
    assert all(torch.equal(kept[k], at_best[k]) for k in kept)
    assert not all(torch.equal(kept[k], last[k]) for k in kept)

    out, metrics = _early(tmp_path, tiny_phi3, val_snapshot, "patience", patience=2)
    stop = metrics["early_stopping"]
    assert stop["best_step"] == best["best_step"]  # the same run up to there
    assert stop["stopped_at"] == metrics["optimizer_steps"] == best["best_step"] + 2 * 4


def test_early_stopping_needs_a_validation_split(tmp_path, tiny_phi3, cifar20_snapshot):
    with pytest.raises(ValueError, match="validation split"):
        _early(tmp_path, tiny_phi3, cifar20_snapshot, "noval")


@pytest.mark.parametrize("make, msg", [
    (lambda: StudentConfig(projector="vit"), "projector must be one of"),
    (lambda: StudentConfig(projector="conv", patch_size=2, image_size=32), "multiple of 4"),
    (lambda: TrainConfig(early_stopping=True, checkpoint_every=0), "early_stopping needs validation"),
    (lambda: TrainConfig(color_jitter=1.5), "color_jitter"),
    (lambda: TrainConfig(crop_scale=0.0), "crop_scale"),
])
def test_few_shot_options_reject_bad_values(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()
