"""Resumable training checkpoints inside a student folder: `checkpoints/step-NNNNNN/`.

Each holds what `load_student` reads (adapter, projector, student.json) plus optimizer,
scheduler and RNG state; it is written to a temporary folder and renamed, so a kill at any
moment leaves either the previous or the new checkpoint, never half of one. Resuming reads
optimizer.pt with `torch.load(weights_only=True)` only: a file that needs more (a planted pickle
that would run code) is refused, never executed.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from pipeline.student.loader import save_student
from pipeline.student.model import Student

CHECKPOINTS = "checkpoints"


class UnsafeCheckpointError(ValueError):
    """A checkpoint file that does not load as plain tensors and numbers (weights_only)."""


def _numpy_rng_globals() -> list:
    """What np.random.get_state()'s array needs besides weights_only's defaults (data, no code)."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_optimizer_state(path: Path) -> dict:
    """optimizer.pt loaded with weights_only=True (on the CPU), or UnsafeCheckpointError."""
    try:
        with torch.serialization.safe_globals(_numpy_rng_globals()):
            blob = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # arbitrary bytes fail in many ways (Unpickling/EOF/Assertion/...)
        if isinstance(exc, OSError) and not path.is_file():
            raise
        first = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
        raise UnsafeCheckpointError(
            f"refusing to resume from {path}: it does not load as plain tensors (weights_only=True: {first}); "
            f"it may have been tampered with. Delete {path.parent} to resume from an earlier checkpoint, "
            "or train into a new --out folder") from None
    if not isinstance(blob, dict) or not {"optimizer", "scheduler", "torch_rng"} <= set(blob):
        raise UnsafeCheckpointError(f"refusing to resume from {path}: not a training checkpoint; "
                                    f"delete {path.parent} or train into a new --out folder")
    return blob


def latest_checkpoint(out_dir: Path) -> Path | None:
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return None
    done = sorted(d for d in root.iterdir() if d.name.startswith("step-") and (d / "state.json").is_file())
    return done[-1] if done else None


def save_checkpoint(*, student: Student, optimizer, scheduler, step: int, out_dir: Path,
                    extra: dict, keep: int = 1) -> Path:
    root = Path(out_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    for stale in root.glob(".tmp-step-*"):  # left by a run killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    save_student(student, tmp)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),
                "python_rng": random.getstate(),  # + the GPU's: LoRA dropout draws from it there
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
               tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **extra}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    for old in sorted(d for d in root.iterdir() if d.name.startswith("step-"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def restore_weights(student: Student, folder: Path) -> None:
    """Load a saved student's adapter and projector weights (save_student's files) into `student`."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    adapter = load_file(Path(folder) / "adapter" / "adapter_model.safetensors")
    result = set_peft_model_state_dict(student.lm, adapter)
    if getattr(result, "unexpected_keys", None):
        raise RuntimeError(f"{folder}: adapter has unexpected keys: {result.unexpected_keys[:3]}")
    student.projector.load_state_dict(load_file(Path(folder) / "projector.safetensors"))


def restore_checkpoint(*, ckpt: Path, student: Student, optimizer, scheduler) -> dict:
    """Load adapter, projector, optimizer, scheduler and RNG state; returns state.json."""
    # map to the CPU: a GPU-written checkpoint must resume on a CPU-only machine too
    # (load_state_dict moves the optimizer state to the parameters' device); refused before any change
    blob = load_optimizer_state(Path(ckpt) / "optimizer.pt")  # never unpickles code
    restore_weights(student, Path(ckpt))
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["torch_rng"])
    np.random.set_state(blob["numpy_rng"])
    random.setstate(blob["python_rng"])
    cuda_rng = blob.get("cuda_rng")
    if cuda_rng is not None and torch.cuda.is_available() and len(cuda_rng) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_rng)
    return json.loads((ckpt / "state.json").read_text())
