"""Train: start a student training job on a snapshot with the hyperparameters in a form, watch
its train/validation loss live, cancel and resume it, and read its evaluation report."""
from __future__ import annotations

from datetime import UTC, datetime

import altair as alt
import streamlit as st

from curation_app.components import md_escape
from curation_app.resources import get_engine, get_settings
from curation_app.signin import current_actor
from db.models import JobStatus
from pipeline.identity import PermissionDenied
from pipeline.services.train import (
    BLEU_LABEL,
    ablation_table,
    cancel_training,
    per_class_table,
    resume_training,
    start_training,
    train_view,
    training_runs,
)
from pipeline.student.config import PROJECTORS, WEAK_MODES, StudentConfig, TrainConfig

settings, engine, actor = get_settings(), get_engine(), current_actor()
st.title("Train")

if "train_message" in st.session_state:
    ok, message = st.session_state.pop("train_message")
    (st.success if ok else st.error)(message)

page = train_view(settings, engine)
sd, td = page.student_defaults, page.train_defaults
if not page.snapshots:
    st.info("No snapshot yet: approve captions and export a snapshot on the Export page first.")
else:
    with st.form("train_form"):
        c1, c2 = st.columns([2, 1])
        snapshot = c1.selectbox("Snapshot", page.snapshots, key="tr_snapshot")
        st.session_state.setdefault("tr_name", f"student-{datetime.now(UTC):%Y%m%d-%H%M%S}")
        name = c2.text_input("Student name", key="tr_name")
        base = st.text_input("Base model (hub id or folder)", sd.base_model, key="tr_base")
        a = st.columns(5)
        lora_r = a[0].number_input("LoRA r", 1, 256, sd.lora_r, key="tr_lora_r")
        lora_alpha = a[1].number_input("LoRA alpha", 1, 1024, sd.lora_alpha, key="tr_lora_alpha")
        projector_hidden = a[2].number_input("Projector width", 8, 8192, sd.projector_hidden, key="tr_proj")
        patch = a[3].selectbox("Patch size", [4, 8], index=[4, 8].index(sd.patch_size), key="tr_patch")
        qlora = a[4].checkbox("4-bit base (QLoRA)", sd.quantize_4bit, key="tr_4bit")
        b = st.columns(6)
        epochs = b[0].number_input("Epochs", 0.0, 1000.0, td.epochs, key="tr_epochs")
        max_steps = b[1].number_input("Max steps (0: epochs)", 0, 1_000_000, td.max_steps, key="tr_steps")
        batch = b[2].number_input("Batch size", 1, 512, td.batch_size, key="tr_batch")
        lr_lora = b[3].number_input("LR (LoRA)", 1e-6, 1.0, td.lr_lora, format="%.2e", key="tr_lr_lora")
        lr_proj = b[4].number_input("LR (projector)", 1e-6, 1.0, td.lr_projector, format="%.2e", key="tr_lr_proj")
        ckpt = b[5].number_input("Checkpoint every", 0, 100_000, td.checkpoint_every, key="tr_ckpt")
        w = st.columns(3)
        weak_mode = w[0].selectbox(
            "Unreviewed drafts (weak split)", WEAK_MODES, index=WEAK_MODES.index(td.weak_mode), key="tr_weak_mode",
            help="Needs a snapshot exported with the weak drafts. warmup: train on the drafts first; "
                 "mix: every step adds the drafts' loss with a lower weight. Rejected drafts are never used.")
        weak_steps = w[1].number_input("Warmup steps on drafts", 0, 1_000_000, td.weak_steps, key="tr_weak_steps")
        weak_weight = w[2].number_input("Weight of drafts (mix)", 0.01, 1.0, td.weak_weight, key="tr_weak_weight")
        with st.expander("Few examples: augmentation, image path, regularisation", icon=":material/tune:"):
            st.caption("Measured on 100 pairs with `bench/learnability.py` (README, issue 15): each helped some "
                       "seeds and not others, so all are off by default.")
            f = st.columns(4)
            augment = f[0].checkbox("Augment (flips, 2-px shifts)", td.augment, key="tr_augment")
            jitter = f[1].number_input("Colour jitter", 0.0, 0.95, td.color_jitter, step=0.1, key="tr_jitter",
                                       help="With augment: brightness, contrast and saturation in [1-x, 1+x].")
            crop = f[2].number_input("Crop scale", 0.05, 1.0, td.crop_scale, step=0.1, key="tr_crop",
                                     help="With augment: random crops of this much of the area up to all of it.")
            projector = f[3].selectbox("Image path", PROJECTORS, index=PROJECTORS.index(sd.projector),
                                       key="tr_projector", help="mlp: each patch's pixels; conv: a small "
                                       "convolutional stem trained from scratch (patch size 4 or 8).")
            g = st.columns(4)
            decay = g[0].number_input("Weight decay", 0.0, 1.0, td.weight_decay, step=0.01, key="tr_decay")
            stopping = g[1].checkbox("Early stopping (keep the best)", td.early_stopping, key="tr_early",
                                     help="Keeps the weights with the lowest validation loss; needs a validation "
                                          "split in the snapshot.")
            eval_every = g[2].number_input("Validate every (steps)", 0, 100_000, td.eval_every, key="tr_eval_every",
                                           help="0: at each checkpoint and at the end.")
            patience = g[3].number_input("Patience (evaluations)", 0, 1000, td.patience, key="tr_patience",
                                         help="Early stopping: stop after this many evaluations without a new best "
                                              "(0: run every step).")
        if st.form_submit_button("Start training", key="tr_start", type="primary", icon=":material/play_arrow:"):
            try:
                student = StudentConfig(**{**sd.__dict__, "base_model": base, "lora_r": int(lora_r),
                                           "lora_alpha": int(lora_alpha), "projector_hidden": int(projector_hidden),
                                           "patch_size": int(patch), "quantize_4bit": qlora,
                                           "projector": projector})
                train = TrainConfig(**{**td.__dict__, "epochs": float(epochs), "max_steps": int(max_steps),
                                       "batch_size": int(batch), "lr_lora": lr_lora, "lr_projector": lr_proj,
                                       "checkpoint_every": int(ckpt), "weak_mode": weak_mode,
                                       "weak_steps": int(weak_steps), "weak_weight": float(weak_weight),
                                       "augment": bool(augment), "color_jitter": float(jitter),
                                       "crop_scale": float(crop), "weight_decay": float(decay),
                                       "early_stopping": bool(stopping), "eval_every": int(eval_every),
                                       "patience": int(patience)})
            except ValueError as err:
                st.session_state["train_message"] = (False, f"Check the form: {err}")
            else:
                try:
                    started = start_training(settings, engine, actor=actor, snapshot_id=snapshot,
                                             name=name.strip(), student=student, train=train)
                    st.session_state["train_message"] = (started.ok, started.message)
                except PermissionDenied as err:
                    st.session_state["train_message"] = (False, str(err))
            st.rerun()


def _cancel(job_id: int) -> None:
    try:
        message = cancel_training(engine, actor=actor, job_id=job_id, settings=settings)
        st.session_state["train_message"] = (True, message)
    except PermissionDenied as err:
        st.session_state["train_message"] = (False, str(err))


def _resume(job_id: int) -> None:
    try:
        started = resume_training(settings, engine, actor=actor, job_id=job_id)
        st.session_state["train_message"] = (started.ok, started.message)
    except PermissionDenied as err:
        st.session_state["train_message"] = (False, str(err))


def report_panel(run) -> None:
    st.markdown("**Evaluation report** (validation split)")
    if not run.report:
        status, error = run.evaluation or (None, None)
        if status in (JobStatus.failed, JobStatus.cancelled):
            st.error(md_escape(f"The evaluation {status.value}: {error or 'see the Jobs page'}"))
        else:
            st.caption("Evaluating the student on its snapshot's validation split…")
        return
    st.markdown("Image ablation: the same items with a blank grey image and with shuffled images; "
                "a student that reads the image scores clearly higher on `real`.")
    st.dataframe(ablation_table(run.report), hide_index=True, key=f"tr_ablation_{run.job_id}",
                 column_config={"bleu": st.column_config.NumberColumn(BLEU_LABEL, format="%.1f")})
    per_class = per_class_table(run.report)
    if not per_class.empty:
        st.markdown("Class-mention accuracy per class")
        st.bar_chart(per_class, stack=False, height=260)


@st.fragment(run_every="2s")
def runs_panel() -> None:
    runs = training_runs(settings, engine, actor=actor, limit=5)
    if not runs:
        st.info("No training runs yet.")
        return
    for run in runs:
        with st.container(border=True):
            st.markdown(f"**Job {run.job_id}** · " + md_escape(
                f"student {run.student_dir.rsplit('/', 1)[-1]} · snapshot {run.snapshot_id} · {run.status.value}"))
            frac = min(run.done / run.total, 1.0) if run.total else 0.0
            st.progress(frac, text=md_escape(f"step {run.done}/{run.total or '?'} · {run.message or ''}"))
            if run.error:
                st.error(md_escape(run.error))
            if not run.curve.empty:
                long = run.curve.melt("step", var_name="loss", value_name="value").dropna()
                st.altair_chart(alt.Chart(long, height=220).mark_line(point=True).encode(
                    x="step:Q", y=alt.Y("value:Q", title="loss"), color="loss:N"))
            if run.active:
                st.button("Cancel", key=f"tr_cancel_{run.job_id}", on_click=_cancel, args=(run.job_id,),
                          icon=":material/stop:")
            elif run.resumable:
                st.button("Resume", key=f"tr_resume_{run.job_id}", on_click=_resume, args=(run.job_id,),
                          icon=":material/play_arrow:")
            if run.metrics and run.status == JobStatus.done:
                st.caption(" · ".join(f"{k} {v:.4g}" for k, v in run.metrics.items()
                                      if isinstance(v, float)))
                report_panel(run)


st.subheader("Runs")
runs_panel()
