"""The config is the CLI: `train --config FILE` with a field option on top equals the same run given
by options alone, a student folder's own student.json/train.json configure a run as they are,
contradictions are refused in one line with exit code 2, and `--help` shows each field's doc."""
from __future__ import annotations

import json
import re
from dataclasses import asdict, fields
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli.student import build_app
from pipeline.data.snapshot import write_snapshot
from pipeline.generation import GenerationConfig
from pipeline.student.config import StudentConfig, TrainConfig
from tests.conftest_student import TINY_STUDENT, cifar20_records

TWO_STEPS = TrainConfig(max_steps=2, batch_size=4, checkpoint_every=0, lr_lora=1e-3, seed=3)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    return write_snapshot(cifar20_records()[:8], tmp_path_factory.mktemp("snaps"), snapshot_id="s8",
                          val_fraction=0.25)


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPSTUDIO_DATA_DIR", str(tmp_path / "data"))

    def run(*args: str):
        return CliRunner().invoke(build_app(), [str(a) for a in args], env={"COLUMNS": "240"})
    return run


def _folder(out: Path) -> dict:
    return {name: json.loads((out / name).read_text()) for name in ("student.json", "train.json", "metrics.json")}


def test_a_config_file_with_an_override_equals_the_same_run_given_by_options(cli, snapshot, tiny_phi3, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**asdict(StudentConfig(base_model=str(tiny_phi3), **TINY_STUDENT)),
                                  **asdict(TWO_STEPS)}))
    by_file = cli("train", "--snapshot", snapshot, "--out", tmp_path / "a", "--config", config,
                  "--lr-lora", "0.003", "--lora-r", "4", "--device", "cpu")
    assert by_file.exit_code == 0, by_file.output
    by_options = cli("train", "--snapshot", snapshot, "--out", tmp_path / "b", "--base-model", tiny_phi3,
                     "--lora-r", "4", "--lora-alpha", TINY_STUDENT["lora_alpha"],
                     "--lora-dropout", TINY_STUDENT["lora_dropout"],
                     "--projector-hidden", TINY_STUDENT["projector_hidden"], "--max-steps", 2, "--batch-size", 4,
                     "--checkpoint-every", 0, "--lr-lora", "0.003", "--seed", 3, "--device", "cpu")
    assert by_options.exit_code == 0, by_options.output
    a, b = _folder(tmp_path / "a"), _folder(tmp_path / "b")
    assert a["student.json"] == b["student.json"] and a["train.json"] == b["train.json"]
    assert a["train.json"]["lr_lora"] == 0.003 and a["student.json"]["lora_r"] == 4  # the options won
    assert a["train.json"]["seed"] == 3 and a["student.json"]["base_model"] == str(tiny_phi3)  # the file held
    assert a["metrics.json"]["optimizer_steps"] == b["metrics.json"]["optimizer_steps"] == 2
    assert a["metrics.json"]["final_train_loss"] == pytest.approx(b["metrics.json"]["final_train_loss"], rel=1e-5)

    # the folder's own files configure a run as they are (what the Train page passes)
    again = cli("train", "--snapshot", snapshot, "--out", tmp_path / "c", "--device", "cpu",
                "--config", tmp_path / "a" / "student.json", "--config", tmp_path / "a" / "train.json")
    assert again.exit_code == 0, again.output
    c = _folder(tmp_path / "c")
    assert c["student.json"] == a["student.json"] and c["train.json"] == a["train.json"]


@pytest.mark.parametrize(("content", "options", "message"), [
    ({"patch_size": 5}, [], "error: patch_size 5 must divide image_size 32"),
    ({"max_steps": 0}, ["--epochs", "0"], "error: need epochs > 0 or max_steps > 0"),
    ({"learning_rate": 0.1}, [],
     "error: unknown config fields ['learning_rate'] (not fields of StudentConfig or TrainConfig)"),
    ({}, ["--dtype", "float16"], "error: dtype must be one of auto, float32, bfloat16, not 'float16'"),
])
def test_a_contradictory_config_is_refused_in_one_line_with_exit_code_2(cli, snapshot, tmp_path, content,
                                                                       options, message):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps(content))
    result = cli("train", "--snapshot", snapshot, "--out", tmp_path / "never", "--config", config, *options)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [message]
    assert not (tmp_path / "never").exists()


def _plain(text: str) -> str:
    """Help text without the panel borders and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_help_shows_every_field_with_its_documentation(cli):
    train_help = _plain(cli("train", "--help").output)
    for cls in (StudentConfig, TrainConfig):
        for f in fields(cls):
            assert f"--{f.name.replace('_', '-')}" in train_help
            assert " ".join(f.metadata["help"].split()) in train_help, f.name
    evaluate_help = _plain(cli("evaluate", "--help").output)
    for f in fields(GenerationConfig):
        if f.name != "seed":  # evaluate's --seed also seeds the shuffled-image control
            assert " ".join(f.metadata["help"].split()) in evaluate_help, f.name


def test_evaluate_rejects_contradictory_generation_options_in_one_line(cli, tmp_path):
    result = cli("evaluate", "--student", tmp_path, "--images", tmp_path, "--top-p", "0")
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == ["error: top_p must be in (0, 1]"]
