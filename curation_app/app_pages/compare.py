"""Batch compare: run a student over a snapshot's validation split as a job, then read the
approved, teacher and student captions side by side, most disagreeing first, and send the
worst back to the review queue."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from curation_app.components import md_escape
from curation_app.resources import get_engine, get_settings
from curation_app.signin import current_actor
from pipeline.identity import PermissionDenied
from pipeline.services.compare import BLEU_LABEL, compare_view, read_results, send_back, start_compare

settings, engine, actor = get_settings(), get_engine(), current_actor()
st.title("Batch compare")

if "compare_message" in st.session_state:
    ok, message = st.session_state.pop("compare_message")
    (st.success if ok else st.error)(md_escape(message))

view = compare_view(settings, engine)
if not view.students:
    st.info("No trained student yet: train one on the Train page, then compare it here.")
else:
    with st.form("cmp_form"):
        label = st.selectbox("Student", list(view.students), key="cmp_student")
        folder, own_snapshot = view.students[label]
        snapshots = view.snapshots or [own_snapshot]
        snapshot = st.selectbox("Snapshot", snapshots, key="cmp_snapshot",
                                index=snapshots.index(own_snapshot) if own_snapshot in snapshots else 0,
                                help="Defaults to the snapshot the student was trained on.")
        c1, c2 = st.columns(2)
        split = c1.radio("Split", ["validation", "train"], horizontal=True, key="cmp_split")
        max_new = c2.number_input("Max new tokens", 1, 256, 40, key="cmp_max_new")
        if st.form_submit_button("Run compare", key="cmp_run", type="primary", icon=":material/play_arrow:"):
            try:
                job_id = start_compare(settings, actor=actor, student_dir=folder, snapshot=snapshot, split=split,
                                       max_new_tokens=int(max_new))
                st.session_state["compare_message"] = (True, f"Started compare job {job_id}.")
            except PermissionDenied as err:
                st.session_state["compare_message"] = (False, str(err))
            st.rerun()


@st.fragment(run_every="2s")
def live_jobs() -> None:
    jobs = compare_view(settings, engine).jobs
    active = jobs[jobs.status.isin(["queued", "running"])]
    for job in active.itertuples():
        text = f"Compare job {job.id}: {job.done}/{job.total or '?'} · {job.message or job.status}"
        st.progress(min(job.done / job.total, 1.0) if job.total else 0.0, text=md_escape(text))
    for job in jobs[jobs.status == "failed"].head(1).itertuples():
        st.error(md_escape(f"Compare job {job.id} failed: {job.error}"))
    if st.session_state.get("cmp_active") and active.empty:
        st.session_state["cmp_active"] = False
        st.rerun(scope="app")  # a job just finished: show its results
    st.session_state["cmp_active"] = not active.empty


live_jobs()
if not view.results:
    st.info("No compare results yet.")
    st.stop()

path = st.selectbox("Results", view.results, format_func=lambda p: Path(p).stem.replace("--", " · "),
                    key="cmp_results")
table = read_results(path)
st.caption(f"{len(table)} items · mean {BLEU_LABEL} {table.bleu.mean():.1f} · mean ROUGE-L {table.rouge_l.mean():.3f} "
           f"· exact {table.exact.mean():.0%} · most disagreeing first (click a header to sort)")
st.dataframe(table, hide_index=True, key="cmp_table", column_config={
    "image": st.column_config.ImageColumn("image", width="small"),
    "disagreement": st.column_config.ProgressColumn("disagreement", min_value=0, max_value=1),
    "bleu": st.column_config.NumberColumn(BLEU_LABEL, format="%.1f"),
})

choices = {f"#{r.item_id} {r.label} · disagreement {r.disagreement:.2f}": int(r.item_id)
           for r in table.itertuples() if str(r.item_id).isdigit()}
picked = st.multiselect("Send these back to the review queue", list(choices), key="cmp_pick")
if st.button("Send back to review", key="cmp_send", disabled=not picked, icon=":material/undo:"):
    try:
        result = send_back(engine, actor=actor, image_ids=[choices[p] for p in picked])
        st.session_state["compare_message"] = (not result.refused, result.message)
    except PermissionDenied as err:
        st.session_state["compare_message"] = (False, str(err))
    st.rerun()
