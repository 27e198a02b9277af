"""Data-parallel student training with torchrun: launching it, the process group, averaged gradients.

    python -m pipeline train --snapshot DIR --out DIR --nproc N      # N processes on this machine
    torchrun --nnodes M --nproc-per-node N --rdzv-endpoint HEAD:29500 -m pipeline train --snapshot DIR --out DIR

Each rank loads its own (4-bit) base with the same seed, takes every world-th example of each
micro-batch, and the LoRA and projector gradients are summed across ranks with one all-reduce per
optimizer step, weighted by label tokens so that the step equals the one-process step on the same
global batch. Only rank 0 writes checkpoints, the loss curve and the student folder; every rank
resumes from the same checkpoint. gloo on the CPU, nccl on GPUs. One process: nothing here runs.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.student.model import IGNORE_INDEX


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job (torchrun's RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def ranks_from_env(env: dict | None = None) -> Ranks:
    """torchrun's contract is the environment: read it here, at the process's entry."""
    env = os.environ if env is None else env
    return Ranks(rank=int(env.get("RANK", 0)), world=int(env.get("WORLD_SIZE", 1)),
                 local_rank=int(env.get("LOCAL_RANK", 0)))


def torchrun_argv(argv: list[str], *, nproc: int, out: Path) -> list[str]:
    """`python -m torch.distributed.run ... -m pipeline <argv>` without --nproc, with a fixed --out
    (the default folder name has a timestamp: every rank must get the same one)."""
    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        if a == "--out" or a.startswith("--out="):
            skip = a == "--out"
            continue
        args.append(a)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "pipeline", *args, "--out", str(out)]


def launch(argv: list[str], *, nproc: int, out: Path) -> int:
    """Run the same train command under torchrun on `nproc` local processes; returns its exit code."""
    if nproc < 2:
        raise ValueError("launch() is for 2 or more processes")
    return subprocess.call(torchrun_argv(argv, nproc=nproc, out=out))


def setup(device: str) -> tuple[Ranks, str]:
    """Join the process group when torchrun started us; returns (ranks, this rank's device)."""
    ranks = ranks_from_env()
    if not ranks.active:
        return ranks, device
    import torch.distributed as dist

    if device.startswith("cuda"):
        torch.cuda.set_device(ranks.local_rank)
        device = f"cuda:{ranks.local_rank}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return ranks, device


def shard(idx: list[int], ranks: Ranks) -> list[int]:
    """This rank's part of a global micro-batch."""
    return idx[ranks.rank::ranks.world] if ranks.active else idx


def label_tokens(labels: torch.Tensor) -> int:
    """Tokens the causal-LM loss averages over (labels are shifted inside the loss)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def loss_weight(labels: torch.Tensor, ranks: Ranks, device: str) -> float:
    """world * local tokens / global tokens: scaled so that the average over ranks of the local
    mean losses is the global mean loss (ranks' captions differ in length)."""
    import torch.distributed as dist

    local = label_tokens(labels)
    total = torch.tensor([local], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return ranks.world * local / float(total.item())


def average_gradients(params: list[torch.nn.Parameter], ranks: Ranks) -> None:
    """Average the trainable parameters' gradients over the ranks (one flat fp32 all-reduce)."""
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    flat /= ranks.world
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(g).to(g.dtype)
        offset += n


def average(value: float, ranks: Ranks, device: str) -> float:
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / ranks.world


def broadcast_params(params: list[torch.nn.Parameter]) -> None:
    """Make every rank start from rank 0's trainable weights (they are seeded alike anyway)."""
    import torch.distributed as dist

    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def agree(flag: bool, device: str) -> bool:
    """Rank 0's decision (a cancel polled from the job row), sent to every rank."""
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def teardown(ranks: Ranks) -> None:
    if ranks.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
