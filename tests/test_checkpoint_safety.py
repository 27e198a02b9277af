"""Resuming never unpickles code (issue 12, item 7): optimizer.pt is read with
torch.load(weights_only=True), and a checkpoint that does not load that way is refused with a
message saying what to do. A planted pickle must not run."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data.snapshot import write_snapshot
from pipeline.student.checkpoint import UnsafeCheckpointError, load_optimizer_state
from pipeline.student.config import StudentConfig, TrainConfig
from tests.conftest_student import TINY_STUDENT, cifar20_records

REPO = Path(__file__).resolve().parent.parent


class Planted:
    """Unpickling this runs a shell command: what a hostile optimizer.pt would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant_checkpoint(out_dir: Path, marker: Path) -> Path:
    """A checkpoint folder whose optimizer.pt runs code when unpickled the unsafe way."""
    ckpt = out_dir / "checkpoints" / "step-000004"
    ckpt.mkdir(parents=True)
    torch.save({"optimizer": Planted(marker), "scheduler": {}, "torch_rng": torch.get_rng_state()},
               ckpt / "optimizer.pt")
    (ckpt / "state.json").write_text(json.dumps({"step": 4}))
    return ckpt


def test_the_planted_pickle_really_runs_code_when_loaded_unsafely(tmp_path):
    """The test's own premise: this file is dangerous under weights_only=False (the old resume)."""
    marker = tmp_path / "ran"
    ckpt = plant_checkpoint(tmp_path / "out", marker)
    torch.load(ckpt / "optimizer.pt", weights_only=False)
    assert marker.exists()


def test_loading_a_planted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    ckpt = plant_checkpoint(tmp_path / "out", marker)
    with pytest.raises(UnsafeCheckpointError, match="weights_only=True") as refused:
        load_optimizer_state(ckpt / "optimizer.pt")
    assert str(ckpt) in str(refused.value) and "Delete" in str(refused.value)
    assert not marker.exists()


def test_any_garbage_file_is_refused_with_the_same_message(tmp_path):
    """Random bytes fail inside torch.load in many ways (UnpicklingError, EOFError, AssertionError,
    UnicodeDecodeError...): every one of them must come out as the one refusal, never a traceback.
    CI once drew 512 random bytes that raised a bare AssertionError."""
    rng = random.Random(20261206)
    kinds = set()
    path = tmp_path / "optimizer.pt"
    for n in range(400):
        blob = bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 2, 7, 64, 512])))
        if n % 4 == 0:  # a pickle protocol header makes the unpickler read further before failing
            blob = b"\x80\x02" + blob
        path.write_bytes(blob)
        try:
            torch.load(path, weights_only=True, map_location="cpu")
        except Exception as exc:  # recording which ways torch.load fails
            kinds.add(type(exc).__name__)
        with pytest.raises(UnsafeCheckpointError, match="Delete"):
            load_optimizer_state(path)
    assert len(kinds) >= 2, kinds  # the draw really exercised more than one way of failing


def test_a_genuine_checkpoint_blob_loads_safely(tmp_path):
    """What save_checkpoint writes (tensors, numbers, numpy's and Python's RNG state) loads."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state(),
                "numpy_rng": np.random.get_state(), "python_rng": random.getstate(), "cuda_rng": None},
               tmp_path / "optimizer.pt")
    blob = load_optimizer_state(tmp_path / "optimizer.pt")
    np.random.set_state(blob["numpy_rng"])
    random.setstate(blob["python_rng"])
    assert torch.equal(blob["optimizer"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_resuming_training_from_a_planted_checkpoint_is_refused(tmp_path, tiny_phi3):
    """The user's path: `python -m pipeline train --out <folder with a planted checkpoint>`."""
    snap = write_snapshot(cifar20_records()[:4], tmp_path / "snaps", snapshot_id="s4", val_fraction=0.0)
    out, marker = tmp_path / "student", tmp_path / "ran"
    plant_checkpoint(out, marker)
    s = TINY_STUDENT
    env = {**os.environ, "CAPSTUDIO_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "train", "--snapshot", str(snap), "--out", str(out),
         "--base-model", str(tiny_phi3), "--lora-r", str(s["lora_r"]), "--lora-alpha", str(s["lora_alpha"]),
         "--projector-hidden", str(s["projector_hidden"]), "--max-steps", "8", "--batch-size", "4",
         "--device", "cpu"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert not marker.exists()
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: refusing to resume from") and "optimizer.pt" in line, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not (out / "metrics.json").exists()


def test_train_function_refuses_before_touching_the_student(tmp_path, tiny_phi3):
    from pipeline.student.train import train

    snap = write_snapshot(cifar20_records()[:4], tmp_path / "snaps", snapshot_id="s4", val_fraction=0.0)
    out, marker = tmp_path / "student", tmp_path / "ran"
    plant_checkpoint(out, marker)
    with pytest.raises(UnsafeCheckpointError):
        train(snapshot_dir=snap, out_dir=out, student_config=StudentConfig(base_model=str(tiny_phi3), **TINY_STUDENT),
              train_config=TrainConfig(max_steps=8, batch_size=4), device="cpu", show_progress=False)
    assert not marker.exists()
