"""A tiny Phi-3 student trained on 20 real CIFAR-10 images memorises their captions, through
the real path (NF4 base, LoRA, projector), and demonstrably uses the image to do it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from pipeline.cli.student import build_app
from pipeline.student.config import GenerationConfig
from pipeline.student.generate import generate_captions, stream_caption
from pipeline.student.loader import load_student
from pipeline.student.model import blank_image
from tests.conftest_student import cifar20_records

REPO = Path(__file__).resolve().parent.parent


def test_student_reproduces_captions_of_the_images_it_sees(memorised_student):
    recs = cifar20_records()
    student = load_student(memorised_student)
    out = generate_captions(student, [r.image() for r in recs])
    exact = [o == r.text for o, r in zip(out, recs)]
    assert sum(exact) >= 18, list(zip(out, [r.text for r in recs]))

    # blank images: one identical input, so at most one caption can come out right
    blank = generate_captions(student, [blank_image() for _ in recs])
    assert sum(b == r.text for b, r in zip(blank, recs)) <= 1

    # shuffled images: the caption follows the image, not the position in the batch
    order = list(reversed(range(len(recs))))
    shuffled = generate_captions(student, [recs[j].image() for j in order])
    follows_image = sum(s == recs[j].text for s, j in zip(shuffled, order))
    assert follows_image >= 18

    # the other CPU path (NF4 weights dequantised to bf16, LoRA merged) says the same
    merged = generate_captions(load_student(memorised_student, path="bf16"), [r.image() for r in recs])
    assert sum(m == r.text for m, r in zip(merged, recs)) >= 18

    # the stream yields the same caption as greedy generation, in pieces
    pieces = list(stream_caption(student, recs[0].image()))
    assert "".join(pieces).strip() == out[0] and len(pieces) > 1


def test_sampling_is_seeded_and_configurable(memorised_student):
    student = load_student(memorised_student)
    img = [cifar20_records()[3].image()]
    cfg = GenerationConfig(do_sample=True, temperature=1.5, top_p=0.9, top_k=50, seed=7,
                           repetition_penalty=1.2, max_new_tokens=12)
    assert generate_captions(student, img, config=cfg) == generate_captions(student, img, config=cfg)
    assert len(student.tokenizer(generate_captions(student, img, config=cfg)[0])["input_ids"]) <= 13


RELOAD = """
import json, sys
from pipeline.student.loader import load_student
from pipeline.student.generate import generate_captions
from tests.conftest_student import cifar20_records
s = load_student(sys.argv[1])
print(json.dumps(generate_captions(s, [r.image() for r in cifar20_records()])))
"""


def test_reload_in_a_fresh_process_gives_identical_greedy_outputs(memorised_student):
    here = generate_captions(load_student(memorised_student), [r.image() for r in cifar20_records()])
    proc = subprocess.run([sys.executable, "-c", RELOAD, str(memorised_student)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == here


def test_student_folder_holds_everything_the_loader_and_lineage_need(memorised_student, cifar20_snapshot):
    folder = memorised_student
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                 "projector.safetensors", "student.json", "train.json", "snapshot.json",
                 "metrics.json", "loss_curve.jsonl", "loss_curve.png"):
        assert (folder / name).is_file(), name
    manifest = json.loads((cifar20_snapshot / "manifest.json").read_text())
    ident = json.loads((folder / "snapshot.json").read_text())
    assert (ident["snapshot_id"], ident["content_hash"]) == (manifest["snapshot_id"], manifest["content_hash"])
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["optimizer_steps"] == metrics["total_steps"] == 80
    rows = [json.loads(x) for x in (folder / "loss_curve.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 81))
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] / 4


def test_evaluate_command_scores_real_images_above_ablations(memorised_student, cifar20_snapshot):
    result = CliRunner().invoke(build_app(), [
        "evaluate", "--student", str(memorised_student), "--snapshot", str(cifar20_snapshot),
        "--split", "train", "--name", "memorised", "--max-new-tokens", "20"])
    assert result.exit_code == 0, result.output
    out = memorised_student / "evaluations" / "memorised"
    for name in ("evaluation.json", "report.md", "chart.png", "predictions.jsonl"):
        assert (out / name).is_file(), name
    report = json.loads((out / "evaluation.json").read_text())
    real, blank, shuf = (report["conditions"][c] for c in ("real", "blank", "shuffled"))
    assert real["class_mention"]["accuracy"] >= 0.9
    assert blank["class_mention"]["accuracy"] <= 0.2 and shuf["class_mention"]["accuracy"] <= 0.3
    assert real["bleu"] > 80 > blank["bleu"] and real["cider"] > shuf["cider"]
    assert set(real["class_mention"]["per_class"]) == {r.label for r in cifar20_records()}
    assert "| real |" in (out / "report.md").read_text()


def test_evaluate_on_a_labelled_image_folder(memorised_student, tmp_path):
    from tests.conftest_student import CIFAR20

    for label in ("cat", "ship"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in (0, 1):
            name = f"{label}_{i:04d}.png"
            (tmp_path / "imgs" / label / name).write_bytes((CIFAR20 / name).read_bytes())
    result = CliRunner().invoke(build_app(), ["evaluate", "--student", str(memorised_student),
                                              "--images", str(tmp_path / "imgs"), "--name", "folder"])
    assert result.exit_code == 0, result.output
    report = json.loads((memorised_student / "evaluations" / "folder" / "evaluation.json").read_text())
    assert report["n_items"] == 4 and report["conditions"]["real"]["class_mention"]["accuracy"] == 1.0
    predictions = memorised_student / "evaluations" / "folder" / "predictions.jsonl"
    rows = [json.loads(x) for x in predictions.read_text().splitlines()]
    assert rows[0]["references"] == ["a photo of a cat."] and rows[0]["label"] == "cat"
