"""Typer commands `train` and `evaluate` (registered by pipeline/cli/__init__.py as `python -m pipeline ...`).

Standalone for tests and debugging: `python -m pipeline.cli.student train --help`.
"""
from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import typer

from pipeline.jobs import JobCancelled, JobReporter
from pipeline.student.config import GenerationConfig, StudentConfig, TrainConfig

_D_S, _D_T, _D_G = StudentConfig(), TrainConfig(), GenerationConfig()


def train_command(
    snapshot: Path = typer.Option(..., help="Export snapshot folder to train on (never the live store)."),
    out: Path | None = typer.Option(None, help="Student folder; rerun with the same folder to resume. Default: <students_dir>/student-<snapshot>-<time>."),
    base_model: str | None = typer.Option(None, help="Phi-3 hub id or local folder; default from settings."),
    image_size: int = typer.Option(_D_S.image_size, help="Images are resized to this square size."),
    patch_size: int = typer.Option(_D_S.patch_size, help="Patch side in pixels: 4 -> 64 image tokens, 8 -> 16."),
    projector_hidden: int = typer.Option(_D_S.projector_hidden, help="Hidden width of the patch projector MLP."),
    lora_r: int = typer.Option(_D_S.lora_r, help="LoRA rank."),
    lora_alpha: int = typer.Option(_D_S.lora_alpha, help="LoRA alpha (scale alpha/r)."),
    lora_dropout: float = typer.Option(_D_S.lora_dropout, help="Dropout on LoRA inputs."),
    quantize_4bit: bool = typer.Option(_D_S.quantize_4bit, help="Train on an NF4 double-quantised base (QLoRA)."),
    epochs: float = typer.Option(_D_T.epochs, help="Passes over the train split (ignored with --max-steps)."),
    max_steps: int = typer.Option(_D_T.max_steps, help="Optimizer steps; 0 derives them from --epochs."),
    batch_size: int = typer.Option(_D_T.batch_size, help="Pairs per micro-batch."),
    grad_accum: int = typer.Option(_D_T.grad_accum, help="Micro-batches per optimizer step."),
    lr_lora: float = typer.Option(_D_T.lr_lora, help="Peak learning rate of the LoRA adapters."),
    lr_projector: float = typer.Option(_D_T.lr_projector, help="Peak learning rate of the projector."),
    warmup_ratio: float = typer.Option(_D_T.warmup_ratio, help="Fraction of steps of linear warmup before cosine decay."),
    weight_decay: float = typer.Option(_D_T.weight_decay, help="AdamW weight decay."),
    min_lr_ratio: float = typer.Option(_D_T.min_lr_ratio, help="Cosine decay floor as a fraction of the peak lr."),
    max_grad_norm: float = typer.Option(_D_T.max_grad_norm, help="Gradient clipping norm (0: off)."),
    checkpoint_every: int = typer.Option(_D_T.checkpoint_every, help="Save a resumable checkpoint every N steps (0: only at the end)."),
    eval_every: int = typer.Option(_D_T.eval_every, help="Validation loss every N steps (0: at checkpoints and the end)."),
    gradient_checkpointing: bool = typer.Option(_D_T.gradient_checkpointing, help="Recompute activations in backward to save memory."),
    augment: bool = typer.Option(_D_T.augment, help="Random flips and 2-pixel shifts of training images."),
    dtype: str = typer.Option(_D_T.dtype, help="Compute dtype: auto (bf16 on GPU and AVX512-BF16 CPUs, else fp32), float32, bfloat16."),
    seed: int = typer.Option(_D_T.seed, help="Random seed."),
    device: str | None = typer.Option(None, help="cpu, cuda or auto; default from settings."),
    prompt: str = typer.Option(_D_S.prompt, help="User instruction placed after the image tokens."),
    job_id: int | None = typer.Option(None, help="Job row to report progress to (set by the app)."),
    nproc: int = typer.Option(1, min=1, help="Data-parallel processes here (torchrun; gloo on CPU, nccl on GPU)."),
) -> None:
    """Train a student (QLoRA + patch projector) on an export snapshot; resumes if interrupted."""
    from pipeline.data.snapshot import read_snapshot
    from pipeline.settings import Settings
    from pipeline.student.train import train

    settings = Settings()
    sc = StudentConfig(base_model=base_model or settings.student_base_model, image_size=image_size,
                       patch_size=patch_size,
                       projector_hidden=projector_hidden, lora_r=lora_r, lora_alpha=lora_alpha,
                       lora_dropout=lora_dropout, quantize_4bit=quantize_4bit, prompt=prompt)
    tc = TrainConfig(epochs=epochs, max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum,
                     lr_lora=lr_lora, lr_projector=lr_projector, warmup_ratio=warmup_ratio,
                     weight_decay=weight_decay, min_lr_ratio=min_lr_ratio, max_grad_norm=max_grad_norm,
                     checkpoint_every=checkpoint_every, eval_every=eval_every, augment=augment, gradient_checkpointing=gradient_checkpointing,
                     dtype=dtype, seed=seed)
    if out is None:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        out = settings.students_dir / f"student-{read_snapshot(snapshot).snapshot_id}-{stamp}"
    if nproc > 1:  # re-run this command under torchrun; rank 0 reports to the job row
        import sys

        from pipeline.student.distributed import launch

        raise typer.Exit(launch(sys.argv[1:], nproc=nproc, out=out))
    from pipeline.student.distributed import ranks_from_env

    main = ranks_from_env().is_main  # under torchrun: only rank 0 talks to the job row and prints
    with JobReporter(settings, job_id if main else None) as job:
        def report(step: int, total: int, row: dict) -> None:
            loss = row.get("train_loss")
            job.progress(step, total, f"step {step}/{total}" + (f" · loss {loss:.3f}" if loss is not None else ""),
                         raise_on_cancel=False)  # train() polls should_stop and checkpoints first

        metrics = train(snapshot_dir=snapshot, out_dir=out, student_config=sc, train_config=tc,
                        device=device or settings.resolved_device(), on_progress=report,
                        should_stop=job.should_stop)
        job.result = {"student": str(out), "status": metrics.get("status")}
        if metrics.get("status") == "stopped" and main:
            raise JobCancelled(f"training stopped at step {metrics.get('optimizer_steps')}; resume with --out {out}")
    if not main:
        return
    typer.echo(json.dumps({"student": str(out), **{k: metrics.get(k) for k in
                           ("status", "optimizer_steps", "total_steps", "final_val_loss")}}))


def evaluate_command(
    student: Path = typer.Option(..., help="Trained student folder."),
    snapshot: Path | None = typer.Option(None, help="Snapshot folder whose split to evaluate on."),
    images: Path | None = typer.Option(None, help="Labelled image folder (metadata.jsonl or one sub-folder per class)."),
    split: str = typer.Option("validation", help="Snapshot split: validation or train."),
    name: str | None = typer.Option(None, help="Name of the evaluation folder under <student>/evaluations/."),
    inference_path: str = typer.Option("nf4", help="Inference path: nf4 (4-bit base as trained; fastest on CPU) or bf16 (dequantised, LoRA merged)."),
    max_new_tokens: int = typer.Option(_D_G.max_new_tokens, help="Most tokens per caption."),
    do_sample: bool = typer.Option(_D_G.do_sample, help="Sample instead of greedy decoding."),
    temperature: float = typer.Option(_D_G.temperature, help="Sampling temperature."),
    top_p: float = typer.Option(_D_G.top_p, help="Nucleus sampling mass."),
    top_k: int = typer.Option(_D_G.top_k, help="Top-k sampling (0: off)."),
    repetition_penalty: float = typer.Option(_D_G.repetition_penalty, help="Penalty (>1) on repeated tokens."),
    seed: int = typer.Option(0, help="Seed for shuffling and sampling."),
    limit: int = typer.Option(0, help="Evaluate only the first N items (0: all)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    job_id: int | None = typer.Option(None, help="Job row to report progress to (set by the app)."),
) -> None:
    """Score a student against approved captions, with blank- and shuffled-image controls."""
    from pipeline.settings import Settings
    from pipeline.student.evaluate import evaluate, evaluation_dir, items_from_folder, items_from_snapshot
    from pipeline.student.loader import load_student

    if (snapshot is None) == (images is None):
        raise typer.BadParameter("give exactly one of --snapshot or --images")
    items = items_from_snapshot(snapshot, split=split) if snapshot else items_from_folder(images)
    items = items[:limit] if limit else items
    gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                           top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty, seed=seed)
    with JobReporter(Settings(), job_id) as job:
        model = load_student(student, path=inference_path, device=device)
        out_dir = evaluation_dir(student, name)
        result = evaluate(student=model, items=items, out_dir=out_dir, generation=gen, seed=seed,
                          source=f"{snapshot}:{split}" if snapshot else str(images),
                          on_progress=lambda done, total, info: job.progress(
                              done, total, f"{info.get('condition', '')} images"))
        job.result = {"evaluation": str(out_dir)}
    summary = {c: round(m["class_mention"]["accuracy"], 4) for c, m in result["conditions"].items()}
    typer.echo(json.dumps({"evaluation": str(out_dir), "class_mention": summary}))


def build_app() -> typer.Typer:
    app = typer.Typer(add_completion=False, no_args_is_help=True)
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
    return app


if __name__ == "__main__":
    build_app()()
