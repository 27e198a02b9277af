"""One BLEU: the Compare page's per-caption score and the Train page's evaluation report are the same
function on the same 0-100 scale, so the same captions get the same number from both."""
from __future__ import annotations

import json

from pipeline.generation import GenerationConfig
from pipeline.settings import Settings
from pipeline.student.compare import read_results, run_compare, score_pair
from pipeline.student.evaluate import caption_metrics, evaluate, items_from_snapshot
from pipeline.student.loader import load_student
from pipeline.student.metrics import mean_bleu, sentence_bleu


def test_a_pair_scores_the_same_on_compare_and_in_the_report():
    pairs = [("a small cat on a bed.", "a small cat on a sofa."), ("a red truck.", "a small cat on a sofa."),
             ("a small cat on a sofa.", "a small cat on a sofa.")]
    for cand, ref in pairs:
        assert caption_metrics([cand], [(ref,)])["bleu"] == score_pair(cand, ref)["bleu"] == sentence_bleu(cand, [ref])
    near, off, same = (score_pair(c, r)["bleu"] for c, r in pairs)
    assert same == 100.0 and 100.0 > near > off >= 0.0  # one scale, 0-100
    report = caption_metrics([c for c, _ in pairs], [(r,) for _, r in pairs])["bleu"]
    assert report == round((near + off + same) / 3, 2) == mean_bleu([c for c, _ in pairs], [[r] for _, r in pairs])


def test_a_compare_run_and_an_evaluation_of_the_same_student_show_the_same_bleu(memorised_student,
                                                                               cifar20_snapshot, tmp_path):
    gen = GenerationConfig(max_new_tokens=20)
    settings = Settings(data_dir=tmp_path / "data", _env_file=None)
    table = read_results(run_compare(settings, student_dir=memorised_student, snapshot=str(cifar20_snapshot),
                                     split="train", config=gen))
    report = evaluate(student=load_student(memorised_student), out_dir=tmp_path / "eval", generation=gen,
                      items=items_from_snapshot(cifar20_snapshot, split="train"), conditions=("real",))
    predictions = {r["item_id"]: r["real"] for r in map(json.loads, (tmp_path / "eval" / "predictions.jsonl")
                                                        .read_text().splitlines())}
    assert dict(zip(table.item_id, table.student)) == predictions  # the same captions...
    assert report["conditions"]["real"]["bleu"] == round(float(table.bleu.mean()), 2)  # ...the same BLEU
    assert 0 < report["conditions"]["real"]["bleu"] <= 100
