"""Weak supervision: pending teacher drafts exported as a separate `weak` split, and the student
warming up on them or mixing them in, while the approved split and the default path stay as they were."""
from __future__ import annotations

import json

import pytest

from db.models import RejectReason, ReviewAction
from pipeline.data.export import export_snapshot
from pipeline.data.snapshot import read_snapshot, write_snapshot
from pipeline.student.config import StudentConfig, TrainConfig
from tests.conftest_student import TINY_STUDENT, cifar20_records
from tests.test_export import act, seed


def _rows(snap):
    return sorted((r.item_id, r.text, r.label) for r in snap.train + snap.validation)


def test_pending_drafts_go_to_a_separate_weak_split_and_approved_pairs_are_unchanged(settings, engine):
    small, store = settings, engine
    ids = seed(store, {"cat": 4, "dog": 4})
    for i in (ids[0], ids[1], ids[4], ids[5]):
        act(store, i, ReviewAction.approve)
    act(store, ids[2], ReviewAction.reject, reason=RejectReason.hallucination)
    act(store, ids[3], ReviewAction.skip)  # ids[6], ids[7] stay pending
    plain = read_snapshot(export_snapshot(small, store, override_balance=True).path)
    result = export_snapshot(small, store, override_balance=True, include_weak=True)
    snap = read_snapshot(result.path)

    assert _rows(snap) == _rows(plain)  # the approved split is exactly what it is without the option
    assert plain.weak == [] and not (plain.path / "weak").exists()
    assert sorted(r.item_id for r in snap.weak) == [str(ids[6]), str(ids[7])]  # never rejected/skipped
    assert all(r.text.startswith("Draft: a ") and r.extra["unreviewed"] for r in snap.weak)
    m = snap.manifest
    assert m["n_items"] == 4 and m["n_weak"] == 2 and m["split_counts"]["weak"] == 2
    assert m["content_hash"] != plain.manifest["content_hash"]
    card = (snap.path / "README.md").read_text()
    assert "unreviewed teacher drafts (split `weak`, not reviewed by anyone): 2" in card
    assert result.n_weak == 2


def _snapshot(tmp_path, *, weak: bool):
    recs = cifar20_records()
    gold = recs[::2]  # one image per class
    extra = [r.__class__(image_png=r.image_png, text=f"a photo of a {r.label}.", label=r.label,
                         item_id="weak-" + r.item_id) for r in recs[1::2]] if weak else []
    return write_snapshot(gold, tmp_path / "snaps", snapshot_id="w" if weak else "g", val_fraction=0.0,
                          weak_records=extra)


def _train(tmp_path, tiny_phi3, snap, name="student", **kw):
    from pipeline.student.train import train

    out = tmp_path / f"{name}-{kw.get('weak_mode', 'off')}"
    tc = TrainConfig(max_steps=3, batch_size=5, lr_lora=3e-3, lr_projector=3e-3, checkpoint_every=0, seed=0, **kw)
    metrics = train(snapshot_dir=snap, out_dir=out, student_config=StudentConfig(base_model=str(tiny_phi3),
                    **TINY_STUDENT), train_config=tc, device="cpu", show_progress=False)
    curve = [json.loads(x) for x in (out / "loss_curve.jsonl").read_text().splitlines()]
    return out, metrics, curve


def test_warmup_trains_on_the_drafts_first_then_on_the_approved_pairs(tmp_path, tiny_phi3):
    snap = _snapshot(tmp_path, weak=True)
    _, off, off_curve = _train(tmp_path, tiny_phi3, snap)
    out, warm, warm_curve = _train(tmp_path, tiny_phi3, snap, weak_mode="warmup", weak_steps=2)
    assert off["optimizer_steps"] == 3 and off["weak"] == {"mode": "off", "n_weak": 0, "steps": 0, "weight": 0.0}
    assert warm["optimizer_steps"] == 5 and warm["weak"]["n_weak"] == 10 and warm["weak"]["steps"] == 2
    # same seed, same initial weights: the first step differs only because it saw the drafts
    assert warm_curve[0]["train_loss"] != pytest.approx(off_curve[0]["train_loss"])
    assert json.loads((out / "train.json").read_text())["weak_mode"] == "warmup"


def test_mix_adds_weighted_draft_batches_and_a_snapshot_without_drafts_is_refused(tmp_path, tiny_phi3):
    _, mix, _ = _train(tmp_path, tiny_phi3, _snapshot(tmp_path, weak=True), weak_mode="mix", weak_weight=0.3)
    assert mix["optimizer_steps"] == 3 and mix["weak"] == {"mode": "mix", "n_weak": 10, "steps": 0, "weight": 0.3}
    with pytest.raises(ValueError, match="include-weak-drafts"):
        _train(tmp_path, tiny_phi3, _snapshot(tmp_path, weak=False), name="refused", weak_mode="mix")


@pytest.mark.parametrize("kw, msg", [({"weak_mode": "sometimes"}, "weak_mode"),
                                     ({"weak_mode": "warmup"}, "weak_steps"),
                                     ({"weak_weight": 0.0}, "weak_weight")])
def test_contradictory_weak_options_are_refused(kw, msg):
    with pytest.raises(ValueError, match=msg):
        TrainConfig(**kw)
