"""QLoRA training of the student on an export snapshot, resumable, one student folder out.

    python -m pipeline train --snapshot data/exports/<id> --out data/students/<name>

The folder gets adapter/, projector.safetensors, student.json, train.json, snapshot.json,
metrics.json, loss_curve.jsonl (+ .png), checkpoints/ (the latest, for resuming) and, with early
stopping, best/ (the weights of the lowest validation loss, which become the student's at the end).
"""
from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from pipeline.data.snapshot import SnapshotRecord, verify_snapshot
from pipeline.hardware import cpu_has_bf16, resolve_device
from pipeline.student import distributed as ddp
from pipeline.student.augment import augment_pixels
from pipeline.student.checkpoint import latest_checkpoint, restore_checkpoint, restore_weights, save_checkpoint
from pipeline.student.config import StudentConfig, TrainConfig
from pipeline.student.loader import build_student, save_student
from pipeline.student.model import Student, build_example, collate

__all__ = ["augment_pixels", "train"]

BEST = "best"  # early stopping: the weights of the lowest validation loss so far
ProgressFn = Callable[[int, int, dict], None]
StopFn = Callable[[], bool]


def compute_dtype(tc: TrainConfig, device: str) -> torch.dtype:
    """bf16 on a GPU, and on a CPU with native bf16 matmuls (AVX512-BF16 or AMX, where bf16 QLoRA
    steps are faster: bench/student.py measures both); fp32 on other CPUs."""
    if tc.dtype != "auto":
        return getattr(torch, tc.dtype)
    if device.startswith("cuda"):  # pre-Ampere cards (T4, V100) have no bf16: fp32, not fp16
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def lr_lambda(total_steps: int, tc: TrainConfig) -> Callable[[int], float]:
    """Linear warmup to the peak, then cosine decay to min_lr_ratio of it."""
    warmup = int(round(tc.warmup_ratio * total_steps))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def total_steps_for(n_train: int, tc: TrainConfig) -> int:
    if tc.max_steps:
        return tc.max_steps
    micro_per_epoch = math.ceil(n_train / tc.batch_size)
    return max(1, math.ceil(tc.epochs * micro_per_epoch / tc.grad_accum))


def micro_batch(step: int, k: int, n: int, tc: TrainConfig) -> list[int]:
    """Indices of micro-batch k of optimizer step `step`: a pure function of the step, so a
    resumed run sees exactly the batches the uninterrupted run would have seen."""
    per_epoch = math.ceil(n / tc.batch_size)
    m = step * tc.grad_accum + k
    epoch, j = divmod(m, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(tc.seed * 100003 + epoch))
    return perm[j * tc.batch_size:(j + 1) * tc.batch_size].tolist()


class _Data:
    """Pre-tokenised pairs and their pixel tensors (a few hundred 32x32 images at most)."""

    def __init__(self, student: Student, records: list[SnapshotRecord]):
        self.examples = [build_example(student.tokenizer, student.layout, r.text) for r in records]
        self.pixels = student.pixels([r.image() for r in records]) if records else None
        self.pad_id = student.tokenizer.pad_token_id

    def batch(self, idx: list[int], device: str, *, tc: TrainConfig | None = None) -> dict:
        """Micro-batch `idx`; augmented as tc says (tc None or tc.augment off: the pixels as they are)."""
        b = collate([self.examples[i] for i in idx], pad_id=self.pad_id)
        px = self.pixels[idx]
        if tc is not None and tc.augment:
            px = augment_pixels(px, color_jitter=tc.color_jitter, crop_scale=tc.crop_scale)
        b["pixels"] = px
        return {k: v.to(device) for k, v in b.items()}


@torch.no_grad()
def validation_loss(student: Student, data: _Data, *, device: str, batch_size: int) -> float | None:
    if not data.examples:
        return None
    student.eval()
    total, count = 0.0, 0
    for s in range(0, len(data.examples), batch_size):
        idx = list(range(s, min(s + batch_size, len(data.examples))))
        loss = student(**data.batch(idx, device))
        total, count = total + loss.item() * len(idx), count + len(idx)
    student.train()
    return total / count


def train(
    *,
    snapshot_dir: Path,
    out_dir: Path,
    student_config: StudentConfig,
    train_config: TrainConfig = TrainConfig(),
    device: str = "auto",
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    show_progress: bool = True,
    expected_hash: str | None = None,
) -> dict:
    """Train (or resume) a student on a snapshot's train split; returns metrics.json's content.

    A stopped run (should_stop() -> True) checkpoints and returns {"status": "stopped", ...};
    calling train again with the same out_dir resumes from the latest checkpoint. Under torchrun
    each rank trains on its share of every micro-batch (pipeline/student/distributed.py).
    """
    from tqdm.auto import tqdm

    tc, sc = train_config, student_config
    out_dir = Path(out_dir)
    snap = verify_snapshot(Path(snapshot_dir), expected_hash=expected_hash)  # refuses an edited or swapped file
    if not snap.train:
        raise ValueError(f"snapshot {snap.snapshot_id} has an empty train split")
    if tc.early_stopping and not snap.validation:
        raise ValueError(f"early_stopping needs a validation split; snapshot {snap.snapshot_id} has none")
    if tc.weak_mode != "off" and not snap.weak:
        raise ValueError(f"weak_mode={tc.weak_mode} but snapshot {snap.snapshot_id} has no weak split: "
                         "export it with the weak drafts (`python -m pipeline export --include-weak-drafts`)")
    ranks, device = ddp.setup(resolve_device(device))
    if ranks.active and tc.batch_size < ranks.world:
        raise ValueError(f"batch_size {tc.batch_size} is smaller than the {ranks.world} processes")
    if ranks.is_main:
        _claim_folder(out_dir, snap, sc, tc)
    if ranks.active:
        ddp.barrier()
    random.seed(tc.seed), np.random.seed(tc.seed), torch.manual_seed(tc.seed)
    student = build_student(sc, dtype=compute_dtype(tc, device), device=device)
    if tc.gradient_checkpointing:
        student.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    train_data, val_data = _Data(student, snap.train), _Data(student, snap.validation)
    weak_data = _Data(student, snap.weak) if tc.weak_mode != "off" else None
    lora_params = [p for p in student.lm.parameters() if p.requires_grad]
    trainable = lora_params + list(student.projector.parameters())
    if ranks.active:
        ddp.broadcast_params(trainable)
    optimizer = torch.optim.AdamW(
        [{"params": list(student.projector.parameters()), "lr": tc.lr_projector},
         {"params": lora_params, "lr": tc.lr_lora}], weight_decay=tc.weight_decay)
    total = total_steps_for(len(snap.train), tc) + (tc.weak_steps if tc.weak_mode == "warmup" else 0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, tc))
    step, sessions, best = 0, [], {"step": None, "val_loss": None, "since": 0}
    ckpt = latest_checkpoint(out_dir)
    if ckpt is not None:
        state = restore_checkpoint(ckpt=ckpt, student=student, optimizer=optimizer, scheduler=scheduler)
        step, sessions = state["step"], state.get("sessions", [])
        best = state.get("best", best)
    curve = _LossCurve(out_dir / "loss_curve.jsonl", keep_until=step, write=ranks.is_main)
    sessions.append({"start_step": step, "started_at": time.time()})
    student.train()
    bar = tqdm(total=total, initial=step, desc="train", disable=not (show_progress and ranks.is_main))
    status, last_val, halted = "completed", None, False

    def checkpoint() -> None:
        sessions[-1]["end_step"] = step
        if ranks.is_main:
            save_checkpoint(student=student, optimizer=optimizer, scheduler=scheduler, step=step,
                            out_dir=out_dir, extra={"sessions": sessions, "total_steps": total, "best": best})
            curve.plot(out_dir / "loss_curve.png")
        if ranks.active:
            ddp.barrier()

    while step < total:
        stop = should_stop is not None and ranks.is_main and should_stop()
        if ranks.active:
            stop = ddp.agree(stop, device)
        if stop:
            status = "stopped"
            break
        t0, loss_sum = time.perf_counter(), 0.0
        for k in range(tc.grad_accum):
            loss = _step_loss(student, step, k, train_data, weak_data, tc, device, ranks)
            (loss / tc.grad_accum).backward()
            loss_sum += loss.item() / tc.grad_accum
        if ranks.active:
            ddp.average_gradients(trainable, ranks)
            loss_sum = ddp.average(loss_sum, ranks, device)
        if tc.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(trainable, tc.max_grad_norm)
        optimizer.step(), scheduler.step(), optimizer.zero_grad(set_to_none=True)
        step += 1
        row = {"step": step, "train_loss": loss_sum, "lr_projector": scheduler.get_last_lr()[0],
               "lr_lora": scheduler.get_last_lr()[1], "seconds": time.perf_counter() - t0}
        at_ckpt = tc.checkpoint_every and step % tc.checkpoint_every == 0
        if step == total or (tc.eval_every and step % tc.eval_every == 0) or (not tc.eval_every and at_ckpt):
            last_val = row["val_loss"] = validation_loss(student, val_data, device=device,
                                                         batch_size=tc.batch_size) if ranks.is_main else None
            if tc.early_stopping:
                _keep_if_best(student, last_val, step, best, out_dir, ranks)
                halted = bool(tc.patience) and best["since"] >= tc.patience  # rank 0's, sent to all below
                halted = ddp.agree(halted, device) if ranks.active else halted
        curve.append(row)
        bar.update(1), bar.set_postfix(loss=f"{loss_sum:.3f}")
        if on_progress is not None:
            on_progress(step, total, row)
        if halted:
            break
        if at_ckpt and step < total:
            checkpoint()
    bar.close()
    checkpoint()
    if status == "stopped" or not ranks.is_main:
        ddp.teardown(ranks)
        return {"status": status, "step": step, "total_steps": total} | ({"rank": ranks.rank} if ranks.active else {})
    if tc.early_stopping and best["step"] is not None:
        restore_weights(student, out_dir / BEST)  # the lowest validation loss seen, not the last weights
    save_student(student, out_dir)
    metrics = {
        "status": status, "optimizer_steps": step, "total_steps": total,
        "optimizer_state_steps": _adam_steps(optimizer), "sessions": sessions,
        "final_train_loss": curve.rows[-1]["train_loss"] if curve.rows else None,
        "final_val_loss": last_val, "n_train": len(snap.train), "n_validation": len(snap.validation),
        "weak": {"mode": tc.weak_mode, "n_weak": len(snap.weak) if weak_data else 0,
                 "steps": tc.weak_steps if tc.weak_mode == "warmup" else 0,
                 "weight": tc.weak_weight if tc.weak_mode == "mix" else 0.0},
        "device": device, "dtype": str(compute_dtype(tc, device)).replace("torch.", ""),
    }
    if tc.early_stopping:
        metrics["early_stopping"] = {"best_step": best["step"], "best_val_loss": best["val_loss"],
                                     "stopped_at": step if halted else None}
    if ranks.active:
        metrics["processes"] = ranks.world
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    ddp.teardown(ranks)
    return metrics


def _batch_loss(student: Student, data: _Data, idx: list[int], tc: TrainConfig, device: str, ranks) -> torch.Tensor:
    """The loss of one micro-batch (this rank's shard of it under torchrun)."""
    batch = data.batch(ddp.shard(idx, ranks), device, tc=tc)
    loss = student(**batch)
    if ranks.active:  # so that the ranks' average is the global batch's mean loss
        loss = loss * ddp.loss_weight(batch["labels"], ranks, device)
    return loss


def _step_loss(student: Student, step: int, k: int, gold: _Data, weak: _Data | None, tc: TrainConfig,
               device: str, ranks) -> torch.Tensor:
    """The loss of micro-batch k of `step`: approved pairs, weak drafts during a warmup, or both (mix)."""
    if tc.weak_mode == "warmup" and step < tc.weak_steps:
        return _batch_loss(student, weak, micro_batch(step, k, len(weak.examples), tc), tc, device, ranks)
    gold_step = step - tc.weak_steps if tc.weak_mode == "warmup" else step
    loss = _batch_loss(student, gold, micro_batch(gold_step, k, len(gold.examples), tc), tc, device, ranks)
    if tc.weak_mode == "mix":
        idx = micro_batch(step, k, len(weak.examples), tc)
        loss = loss + tc.weak_weight * _batch_loss(student, weak, idx, tc, device, ranks)
    return loss


def _keep_if_best(student: Student, val: float | None, step: int, best: dict, out_dir: Path, ranks) -> None:
    """Early stopping: save the weights to best/ on a new lowest validation loss (main process),
    else count one more evaluation without one."""
    if not ranks.is_main or val is None:
        return
    if best["val_loss"] is None or val < best["val_loss"]:
        save_student(student, out_dir / BEST)
        best.update(step=step, val_loss=val, since=0)
    else:
        best["since"] += 1


def _adam_steps(optimizer) -> int:
    """AdamW's own step counter: equals the optimizer steps only if resuming restored it."""
    states = [s["step"] for s in optimizer.state.values() if "step" in s]
    return int(max(float(s) for s in states)) if states else 0


def _claim_folder(out_dir: Path, snap, sc: StudentConfig, tc: TrainConfig) -> None:
    """Write the configs and snapshot identity; refuse to resume with different ones."""
    if (out_dir / "metrics.json").is_file():
        raise FileExistsError(f"{out_dir} already holds a finished student")
    out_dir.mkdir(parents=True, exist_ok=True)
    ident = {"snapshot_id": snap.snapshot_id, "content_hash": snap.content_hash, "path": str(snap.path)}
    wanted = {"snapshot.json": ident, "train.json": asdict(tc), "student.json": asdict(sc)}
    for name, data in wanted.items():
        f = out_dir / name
        if f.is_file() and latest_checkpoint(out_dir) is not None:
            old = json.loads(f.read_text())
            norm = json.loads(json.dumps(data))
            if {k: v for k, v in old.items() if k != "path"} != {k: v for k, v in norm.items() if k != "path"}:
                raise ValueError(f"{out_dir} holds a run with a different {name}; use a new folder")
        f.write_text(json.dumps(data, indent=2) + "\n")


class _LossCurve:
    """loss_curve.jsonl, appended each step; rows past a resumed checkpoint are dropped."""

    def __init__(self, path: Path, *, keep_until: int, write: bool = True):
        self.path, self.write = path, write
        rows = [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []
        self.rows = [r for r in rows if r["step"] <= keep_until]
        if write:
            path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))

    def append(self, row: dict) -> None:
        self.rows.append(row)
        if not self.write:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def plot(self, png: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([r["step"] for r in self.rows], [r["train_loss"] for r in self.rows], label="train")
        val = [r for r in self.rows if r.get("val_loss") is not None]
        if val:
            ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
        ax.set_xlabel("optimizer step"), ax.set_ylabel("loss"), ax.legend(), fig.tight_layout()
        fig.savefig(png, dpi=100)
        plt.close(fig)
