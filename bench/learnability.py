"""Can a tiny random-base student learn to name CIFAR-10 classes from pixels alone?

    python bench/learnability.py --train ../shared/data/cifar10-sample [--eval DIR]

Each DIR holds one sub-folder of images per class. Without --eval (or with --eval equal to
--train) the last --holdout images of every class are held out for evaluation. Builds a
snapshot with captions "a photo of a {class}.", trains a tiny random Phi-3 (NF4 + LoRA +
patch projector) with the same `train` as the CLI, evaluates with the same `evaluate`, and
prints one JSON line: class-mention accuracy with real, blank and shuffled images.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from pipeline.data.snapshot import SnapshotRecord, write_snapshot
from pipeline.student.config import GenerationConfig, StudentConfig, TrainConfig
from pipeline.student.evaluate import LABEL_CAPTION, EvalItem, evaluate
from pipeline.student.loader import load_student
from pipeline.student.train import train
from pipeline.tiny import build_tiny_phi3, find_phi3_tokenizer_dir

SUFFIXES = {".png", ".jpg", ".jpeg"}


def class_files(folder: Path) -> dict[str, list[Path]]:
    return {d.name: sorted(f for f in d.iterdir() if f.suffix.lower() in SUFFIXES)
            for d in sorted(Path(folder).iterdir()) if d.is_dir()}


def split_files(train_dir: Path, eval_dir: Path | None, holdout: int):
    train_files = class_files(train_dir)
    if eval_dir is None or Path(eval_dir).resolve() == Path(train_dir).resolve():
        eval_files = {c: fs[-holdout:] for c, fs in train_files.items()}
        train_files = {c: fs[:-holdout] for c, fs in train_files.items()}
    else:
        eval_files = class_files(eval_dir)
    return train_files, eval_files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=Path, required=True, help="class sub-folders of training images")
    ap.add_argument("--eval", type=Path, default=None, help="class sub-folders of evaluation images")
    ap.add_argument("--holdout", type=int, default=20, help="images per class held out when --eval is absent")
    ap.add_argument("--max-steps", type=int, default=1000, help="optimizer steps (~150 s on 2 idle cores)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--patch-size", type=int, default=8)
    ap.add_argument("--lr-projector", type=float, default=3e-3)
    ap.add_argument("--lr-lora", type=float, default=3e-3)
    ap.add_argument("--hidden", type=int, default=128, help="width of the tiny random Phi-3")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--init-std", type=float, default=0.1, help="init std of the random base")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32",
                    help="training compute dtype; fp32 measured 2x faster than bf16 at this tiny width")
    ap.add_argument("--no-augment", dest="augment", action="store_false", help="no flips/shifts")
    ap.add_argument("--work", type=Path, default=None, help="keep artefacts here (default: temp dir)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="learnability-"))
    train_files, eval_files = split_files(args.train, args.eval, args.holdout)
    records = [SnapshotRecord(image_png=f.read_bytes(), text=LABEL_CAPTION.format(label=c), label=c,
                              item_id=f"{c}/{f.name}") for c, fs in train_files.items() for f in fs]
    snap = write_snapshot(records, work / "snapshots", val_fraction=0.05, seed=args.seed)
    base = build_tiny_phi3(work / "base", tokenizer_dir=find_phi3_tokenizer_dir(), hidden=args.hidden,
                           layers=args.layers, intermediate=2 * args.hidden, init_std=args.init_std, seed=args.seed)
    sc = StudentConfig(base_model=str(base), patch_size=args.patch_size, projector_hidden=512,
                       lora_r=16, lora_alpha=32, lora_dropout=0.0)
    tc = TrainConfig(max_steps=args.max_steps, batch_size=args.batch_size, lr_lora=args.lr_lora,
                     lr_projector=args.lr_projector, warmup_ratio=0.05, checkpoint_every=0,
                     weight_decay=0.01, augment=args.augment, dtype=args.dtype,
                     seed=args.seed)
    t_train = time.perf_counter()
    metrics = train(snapshot_dir=snap, out_dir=work / "student", student_config=sc, train_config=tc,
                    device="cpu", show_progress=False)
    train_s = time.perf_counter() - t_train
    from PIL import Image

    items = [EvalItem(Image.open(f).convert("RGB"), (LABEL_CAPTION.format(label=c),), c, f"{c}/{f.name}")
             for c, fs in eval_files.items() for f in fs]
    student = load_student(work / "student")
    result = evaluate(student=student, items=items, out_dir=work / "student" / "evaluations" / "learnability",
                      generation=GenerationConfig(max_new_tokens=12), seed=args.seed, source=str(args.eval or args.train))
    acc = {c: round(m["class_mention"]["accuracy"], 4) for c, m in result["conditions"].items()}
    print(json.dumps({"real": acc["real"], "blank": acc["blank"], "shuffled": acc["shuffled"],
                      "n_train": len(records), "n_eval": len(items), "steps": metrics["optimizer_steps"],
                      "final_train_loss": round(metrics["final_train_loss"], 4),
                      "train_seconds": round(train_s, 1), "total_seconds": round(time.perf_counter() - t0, 1),
                      "work": str(work)}))


if __name__ == "__main__":
    main()
