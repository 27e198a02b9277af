"""Data-parallel training with torchrun on the CPU (gloo): 2 processes end where 1 process does with
the same global batch, and a 2-process run killed after a checkpoint resumes to the same weights."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline.student.config import StudentConfig, TrainConfig
from pipeline.student.distributed import torchrun_argv
from tests.conftest import REPO
from tests.conftest_student import TINY_STUDENT

# 6 steps of 8 captions (the 20 pairs of different lengths), a checkpoint every 2 steps
TC = TrainConfig(max_steps=6, batch_size=8, lr_lora=3e-3, lr_projector=3e-3, checkpoint_every=2,
                 dtype="float32", seed=0)


def _cli(snapshot: Path, base: Path, out: Path, nproc: int) -> list[str]:
    return [sys.executable, "-m", "pipeline", "train", "--snapshot", str(snapshot), "--out", str(out),
            "--base-model", str(base), "--lora-r", str(TINY_STUDENT["lora_r"]),
            "--lora-alpha", str(TINY_STUDENT["lora_alpha"]), "--lora-dropout", "0",
            "--projector-hidden", str(TINY_STUDENT["projector_hidden"]), "--max-steps", str(TC.max_steps),
            "--batch-size", str(TC.batch_size), "--lr-lora", str(TC.lr_lora), "--lr-projector", str(TC.lr_projector),
            "--checkpoint-every", str(TC.checkpoint_every), "--dtype", TC.dtype, "--device", "cpu",
            "--nproc", str(nproc)]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return {**load_file(folder / "adapter" / "adapter_model.safetensors"),
            **{f"projector.{k}": v for k, v in load_file(folder / "projector.safetensors").items()}}


def _assert_close(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    moved = 0
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-3, atol=2e-5, msg=k)
        moved += int(not torch.equal(want[k], torch.zeros_like(want[k])))
    assert moved > 0


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        try:
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) if p.name.isdigit() else None
        except (OSError, IndexError, ValueError):
            continue
        if ppid is not None:
            children.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _kill_tree(pid: int) -> None:
    """SIGKILL a process we started and everything under it, all at once (like a power cut)."""
    for p in [pid, *_descendants(pid)]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_phi3, cifar20_snapshot) -> Path:
    from pipeline.student.train import train

    out = tmp_path_factory.mktemp("ddp") / "one"
    sc = StudentConfig(base_model=str(tiny_phi3), **TINY_STUDENT)
    metrics = train(snapshot_dir=cifar20_snapshot, out_dir=out, student_config=sc, train_config=TC,
                    device="cpu", show_progress=False)
    assert metrics["status"] == "completed" and "processes" not in metrics
    return out


def test_torchrun_argv_keeps_the_command_and_fixes_the_folder(tmp_path):
    argv = torchrun_argv(["train", "--snapshot", "s", "--nproc", "2", "--out=x", "--seed", "1"], nproc=2,
                         out=tmp_path / "o")
    assert argv[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    assert argv[5:] == ["-m", "pipeline", "train", "--snapshot", "s", "--seed", "1", "--out", str(tmp_path / "o")]


@pytest.mark.timeout(1200)  # two interpreters each load torch, transformers and a 4-bit base
def test_two_processes_match_one_process_on_the_same_global_batch(one_process, tiny_phi3, cifar20_snapshot,
                                                                 tmp_path):
    out = tmp_path / "two"
    run = subprocess.run(_cli(cifar20_snapshot, tiny_phi3, out, 2), cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    assert '"status": "completed"' in run.stdout and run.stdout.count('"student"') == 1  # rank 0 prints
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["optimizer_steps"] == 6
    _assert_close(_weights(out), _weights(one_process))
    one = [json.loads(x)["train_loss"] for x in (one_process / "loss_curve.jsonl").read_text().splitlines()]
    two = [json.loads(x)["train_loss"] for x in (out / "loss_curve.jsonl").read_text().splitlines()]
    assert two == pytest.approx(one, rel=1e-4)  # rank 0 logs the global batch's loss


@pytest.mark.timeout(1200)  # two torchrun launches (killed, resumed) of two ranks each
def test_a_killed_two_process_run_resumes(one_process, tiny_phi3, cifar20_snapshot, tmp_path):
    out = tmp_path / "killed"
    argv = _cli(cifar20_snapshot, tiny_phi3, out, 2)
    first = subprocess.Popen(argv, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True)
    deadline = time.monotonic() + 400
    while not (out / "checkpoints" / "step-000002" / "state.json").is_file() and first.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    _kill_tree(first.pid)  # the launcher, torchrun and both ranks (torchrun gives them their own sessions)
    first.wait()
    assert not (out / "metrics.json").exists(), "the run finished before it could be killed"
    ckpt = sorted((out / "checkpoints").glob("step-*"))
    assert ckpt, first.stderr.read()[-3000:]
    run = subprocess.run(argv, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["optimizer_steps"] == 6
    assert len(metrics["sessions"]) == 2 and metrics["sessions"][1]["start_step"] in (2, 4)
    assert metrics["optimizer_state_steps"] == 6  # AdamW's state came back with the checkpoint
    _assert_close(_weights(out), _weights(one_process))
