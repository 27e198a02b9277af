"""Can a tiny random-base student learn to name CIFAR-10 classes from pixels alone, and how much do
unreviewed teacher drafts add to a few approved captions?

    python bench/learnability.py --train ../shared/data/cifar10-sample --n-per-class 10
    python bench/learnability.py --train ../shared/data/cifar10-sample --n-per-class 10 \
        --weak-per-class 90 --weak-error-rate 0.3 --weak-mode warmup

Each DIR holds one sub-folder of images per class. Without --eval (or with --eval equal to the first
--train) the last --holdout images of every class are held out for evaluation; training images whose
pixels equal a held-out image are dropped. The first --n-per-class images of each class become gold
pairs ("a photo of a {class}."); the next --weak-per-class become the snapshot's weak split, captioned
like a teacher that names a wrong class --weak-error-rate of the time. Trains a tiny random Phi-3
(NF4 + LoRA + patch projector) with the same `train` as the CLI, evaluates with the same `evaluate`, and
prints one JSON line: class-mention accuracy with real, blank and shuffled images, and train seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from pipeline.classes import CLASSES
from pipeline.data.images import IMAGE_SUFFIXES, pixel_hash
from pipeline.data.snapshot import SnapshotRecord, write_snapshot
from pipeline.student.config import GenerationConfig, StudentConfig, TrainConfig
from pipeline.student.evaluate import LABEL_CAPTION, EvalItem, evaluate
from pipeline.student.loader import load_student
from pipeline.student.train import train
from pipeline.tiny import build_tiny_phi3, find_phi3_tokenizer_dir


def class_files(folder: Path) -> dict[str, list[Path]]:
    return {d.name: sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            for d in sorted(Path(folder).iterdir()) if d.is_dir()}


def _hash(f: Path) -> str:
    with Image.open(f) as im:
        return pixel_hash(im)


def split_files(train_dirs: list[Path], eval_dir: Path | None, holdout: int):
    """Training files per class (every --train folder, in order) and held-out files per class.

    Held out: the last `holdout` per class of the first folder, or every file of `eval_dir`. Training
    files showing the same pixels as a held-out image are dropped, so no test image is trained on.
    """
    first = class_files(train_dirs[0])
    if eval_dir is None or Path(eval_dir).resolve() == Path(train_dirs[0]).resolve():
        eval_files = {c: fs[-holdout:] for c, fs in first.items()}
        first = {c: fs[:-holdout] for c, fs in first.items()}
    else:
        eval_files = class_files(eval_dir)
    held = {_hash(f) for fs in eval_files.values() for f in fs}
    train_files: dict[str, list[Path]] = {c: list(fs) for c, fs in first.items()}
    for extra in train_dirs[1:]:
        for c, fs in class_files(extra).items():
            train_files.setdefault(c, []).extend(fs)
    seen: set[str] = set()
    for c, fs in train_files.items():
        keep = []
        for f in fs:
            h = _hash(f)
            if h not in held and h not in seen:
                seen.add(h)
                keep.append(f)
        train_files[c] = keep
    return train_files, eval_files


def weak_caption(label: str, rng: random.Random, error_rate: float) -> str:
    """A simulated teacher draft: the right class, or (error_rate of the time) another one."""
    if rng.random() < error_rate:
        label = rng.choice([c for c in CLASSES if c != label])
    return LABEL_CAPTION.format(label=label)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=Path, nargs="+", required=True,
                    help="folder(s) of class sub-folders of training images (used in order)")
    ap.add_argument("--eval", type=Path, default=None, help="class sub-folders of evaluation images")
    ap.add_argument("--holdout", type=int, default=20, help="images per class held out when --eval is absent")
    ap.add_argument("--n-per-class", type=int, default=0, help="gold pairs per class (0: every training image)")
    ap.add_argument("--weak-per-class", type=int, default=0, help="simulated unreviewed drafts per class")
    ap.add_argument("--weak-error-rate", type=float, default=0.3, help="share of drafts naming a wrong class")
    ap.add_argument("--weak-mode", choices=("warmup", "mix"), default="warmup",
                    help="warmup: --weak-steps on drafts first; mix: every step adds --weak-weight x a draft batch")
    ap.add_argument("--weak-steps", type=int, default=500, help="warmup steps on the drafts")
    ap.add_argument("--weak-weight", type=float, default=0.5, help="loss weight of the drafts in mix mode")
    ap.add_argument("--max-steps", type=int, default=1000, help="optimizer steps (~150 s on 2 idle cores)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--patch-size", type=int, default=8)
    ap.add_argument("--lr-projector", type=float, default=3e-3)
    ap.add_argument("--lr-lora", type=float, default=3e-3)
    ap.add_argument("--hidden", type=int, default=128, help="width of the tiny random Phi-3")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--init-std", type=float, default=0.1, help="init std of the random base")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="one run per seed (one JSON line each), then a summary line with mean and spread")
    ap.add_argument("--dtype", default="float32",
                    help="training compute dtype; fp32 measured 2x faster than bf16 at this tiny width")
    ap.add_argument("--no-augment", dest="augment", action="store_false", help="no flips/shifts (nor jitter, crops)")
    ap.add_argument("--color-jitter", type=float, default=0.0, help="TrainConfig.color_jitter (0: off)")
    ap.add_argument("--crop-scale", type=float, default=1.0, help="TrainConfig.crop_scale (1: off)")
    ap.add_argument("--projector", choices=("mlp", "conv"), default="mlp", help="StudentConfig.projector")
    ap.add_argument("--projector-hidden", type=int, default=512)
    ap.add_argument("--conv-channels", type=int, default=32, help="StudentConfig.conv_channels (conv projector)")
    ap.add_argument("--early-stopping", action="store_true",
                    help="keep the lowest-validation-loss weights (needs --val-per-class)")
    ap.add_argument("--val-per-class", type=int, default=0,
                    help="gold pairs per class (on average) moved to the validation split, out of --n-per-class")
    ap.add_argument("--eval-every", type=int, default=50, help="validation every N steps when there is a split")
    ap.add_argument("--patience", type=int, default=0, help="TrainConfig.patience (evaluations without a new best)")
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--lora-dropout", type=float, default=0.0)
    ap.add_argument("--work", type=Path, default=None, help="keep artefacts here (default: temp dir)")
    args = ap.parse_args()
    rows = []
    for seed in args.seeds:  # one line per run as it finishes: a long sweep shows progress
        rows.append(run(args, seed))
        print(json.dumps(rows[-1]), flush=True)
    if len(rows) > 1:
        summary = {"summary": True, "n_runs": len(rows)}
        for key in ("real", "blank", "shuffled", "train_seconds"):
            vals = [r[key] for r in rows]
            summary[key] = {"mean": round(statistics.mean(vals), 4), "min": min(vals), "max": max(vals),
                            "stdev": round(statistics.stdev(vals), 4)}
        print(json.dumps(summary))


def run(args: argparse.Namespace, seed: int) -> dict:
    """One seeded run: build the snapshot, train, evaluate; returns the JSON row."""
    args = argparse.Namespace(**{**vars(args), "seed": seed})
    t0 = time.perf_counter()
    work = (args.work / f"seed{seed}") if args.work else Path(tempfile.mkdtemp(prefix="learnability-"))
    train_files, eval_files = split_files(args.train, args.eval, args.holdout)
    n_gold = args.n_per_class or max(len(fs) for fs in train_files.values())
    short = {c: len(fs) for c, fs in train_files.items() if len(fs) < n_gold + args.weak_per_class}
    if short:
        raise SystemExit(f"not enough training images for {n_gold} gold + {args.weak_per_class} weak per class: "
                         f"{short} (add folders to --train)")
    rng = random.Random(args.seed)
    records = [SnapshotRecord(image_png=f.read_bytes(), text=LABEL_CAPTION.format(label=c), label=c,
                              item_id=f"{c}/{f.name}") for c, fs in train_files.items() for f in fs[:n_gold]]
    weak = [SnapshotRecord(image_png=f.read_bytes(), text=weak_caption(c, rng, args.weak_error_rate), label=c,
                           item_id=f"weak/{c}/{f.name}")
            for c, fs in train_files.items() for f in fs[n_gold:n_gold + args.weak_per_class]]
    val_fraction = args.val_per_class / n_gold
    snap = write_snapshot(records, work / "snapshots", val_fraction=val_fraction, seed=args.seed, weak_records=weak)
    base = build_tiny_phi3(work / "base", tokenizer_dir=find_phi3_tokenizer_dir(), hidden=args.hidden,
                           layers=args.layers, intermediate=2 * args.hidden, init_std=args.init_std, seed=args.seed)
    sc = StudentConfig(base_model=str(base), patch_size=args.patch_size, projector_hidden=args.projector_hidden,
                       projector=args.projector, conv_channels=args.conv_channels,
                       lora_r=16, lora_alpha=32, lora_dropout=args.lora_dropout)
    tc = TrainConfig(max_steps=args.max_steps, batch_size=args.batch_size, lr_lora=args.lr_lora,
                     lr_projector=args.lr_projector, warmup_ratio=0.05, checkpoint_every=0,
                     eval_every=args.eval_every if val_fraction else 0, early_stopping=args.early_stopping,
                     patience=args.patience, color_jitter=args.color_jitter, crop_scale=args.crop_scale,
                     weight_decay=args.weight_decay, augment=args.augment, dtype=args.dtype, seed=args.seed,
                     weak_mode=args.weak_mode if weak else "off", weak_steps=args.weak_steps if weak else 0,
                     weak_weight=args.weak_weight)
    t_train = time.perf_counter()
    metrics = train(snapshot_dir=snap, out_dir=work / "student", student_config=sc, train_config=tc,
                    device="cpu", show_progress=False)
    train_s = time.perf_counter() - t_train
    items = [EvalItem(Image.open(f).convert("RGB"), (LABEL_CAPTION.format(label=c),), c, f"{c}/{f.name}")
             for c, fs in eval_files.items() for f in fs]
    student = load_student(work / "student")
    result = evaluate(student=student, items=items, out_dir=work / "student" / "evaluations" / "learnability",
                      generation=GenerationConfig(max_new_tokens=12), seed=args.seed,
                      source=str(args.eval or args.train[0]))
    acc = {c: round(m["class_mention"]["accuracy"], 4) for c, m in result["conditions"].items()}
    return {"real": acc["real"], "blank": acc["blank"], "shuffled": acc["shuffled"],
            "n_gold": len(records), "n_weak": len(weak), "weak_error_rate": args.weak_error_rate,
            "weak_mode": args.weak_mode if weak else "off", "seed": args.seed, "augment": args.augment,
            "color_jitter": args.color_jitter, "crop_scale": args.crop_scale, "projector": args.projector,
            "n_val": metrics["n_validation"], "early_stopping": metrics.get("early_stopping"),
            "n_eval": len(items), "steps": metrics["optimizer_steps"],
            "final_train_loss": round(metrics["final_train_loss"], 4), "train_seconds": round(train_s, 1),
            "total_seconds": round(time.perf_counter() - t0, 1),
            "load_avg": [round(x, 2) for x in os.getloadavg()], "work": str(work)}


if __name__ == "__main__":
    main()
