"""Training resumes: a run killed midway (SIGKILL) or stopped by its job finishes from its last
checkpoint with the same optimizer steps, data order and losses as an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.data.snapshot import write_snapshot
from pipeline.student.config import StudentConfig, TrainConfig
from pipeline.student.train import train
from tests.conftest_student import TINY_STUDENT, cifar20_records

REPO = Path(__file__).resolve().parent.parent
TC = TrainConfig(max_steps=24, batch_size=4, lr_lora=3e-3, lr_projector=3e-3, checkpoint_every=4, seed=1)


@pytest.fixture(scope="module")
def small_snapshot(tmp_path_factory) -> Path:
    return write_snapshot(cifar20_records()[:10], tmp_path_factory.mktemp("snaps"), snapshot_id="s10",
                          val_fraction=0.2)


def _cli(snapshot: Path, out: Path, base: Path) -> list[str]:
    s = TINY_STUDENT
    return [sys.executable, "-m", "pipeline.cli.student", "train", "--snapshot", str(snapshot),
            "--out", str(out), "--base-model", str(base), "--lora-r", str(s["lora_r"]),
            "--lora-alpha", str(s["lora_alpha"]), "--lora-dropout", str(s["lora_dropout"]),
            "--projector-hidden", str(s["projector_hidden"]), "--max-steps", str(TC.max_steps),
            "--batch-size", str(TC.batch_size), "--lr-lora", str(TC.lr_lora),
            "--lr-projector", str(TC.lr_projector), "--checkpoint-every", str(TC.checkpoint_every),
            "--seed", str(TC.seed), "--device", "cpu"]


def _curve(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "loss_curve.jsonl").read_text().splitlines()]


def test_killed_run_resumes_to_the_same_steps_and_losses(tmp_path, small_snapshot, tiny_phi3):
    sc = StudentConfig(base_model=str(tiny_phi3), **TINY_STUDENT)
    ref = train(snapshot_dir=small_snapshot, out_dir=tmp_path / "ref", student_config=sc,
                train_config=TC, device="cpu", show_progress=False)

    out = tmp_path / "killed"
    env = {**os.environ, "CAPSTUDIO_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.Popen(_cli(small_snapshot, out, tiny_phi3), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not list((out / "checkpoints").glob("step-*/state.json")) and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists(), "the run finished before it could be killed"
    killed_at = json.loads(next((out / "checkpoints").glob("step-*/state.json")).read_text())["step"]
    assert 0 < killed_at < TC.max_steps

    resumed = subprocess.run(_cli(small_snapshot, out, tiny_phi3), cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["optimizer_steps"] == ref["optimizer_steps"] == TC.max_steps
    assert metrics["optimizer_state_steps"] == ref["optimizer_state_steps"] == TC.max_steps
    assert [s["start_step"] for s in metrics["sessions"]][0] == 0 and len(metrics["sessions"]) == 2
    curve, ref_curve = _curve(out), _curve(tmp_path / "ref")
    assert [r["step"] for r in curve] == list(range(1, TC.max_steps + 1))
    for a, b in zip(curve, ref_curve):  # same batches, same restored optimizer and RNG state
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3, abs=1e-3)
    assert metrics["final_val_loss"] == pytest.approx(ref["final_val_loss"], rel=1e-3)


def test_stop_request_checkpoints_and_a_second_call_finishes(tmp_path, small_snapshot, tiny_phi3):
    sc = StudentConfig(base_model=str(tiny_phi3), **TINY_STUDENT)
    tc = TrainConfig(max_steps=10, batch_size=4, checkpoint_every=0, seed=1)
    seen: list[tuple[int, int]] = []
    first = train(snapshot_dir=small_snapshot, out_dir=tmp_path / "s", student_config=sc, train_config=tc,
                  on_progress=lambda step, total, m: seen.append((step, total)),
                  should_stop=lambda: len(seen) >= 6, show_progress=False)
    assert first == {"status": "stopped", "step": 6, "total_steps": 10}
    assert seen == [(i, 10) for i in range(1, 7)]
    with pytest.raises(ValueError, match="different train.json"):
        train(snapshot_dir=small_snapshot, out_dir=tmp_path / "s", student_config=sc,
              train_config=TrainConfig(max_steps=12, batch_size=4, seed=1), show_progress=False)
    done = train(snapshot_dir=small_snapshot, out_dir=tmp_path / "s", student_config=sc, train_config=tc,
                 on_progress=lambda step, total, m: seen.append((step, total)), show_progress=False)
    assert done["status"] == "completed" and done["optimizer_steps"] == done["optimizer_state_steps"] == 10
    assert seen[6:] == [(i, 10) for i in range(7, 11)]
    with pytest.raises(FileExistsError):
        train(snapshot_dir=small_snapshot, out_dir=tmp_path / "s", student_config=sc, train_config=tc,
              show_progress=False)
