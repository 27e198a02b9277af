"""Jobs: import and caption more images in the background; live progress, cancel; nothing is
lost on a browser refresh because every job lives in the store."""
from __future__ import annotations

import streamlit as st

from curation_app.components import md_escape
from curation_app.resources import get_engine, get_settings
from curation_app.signin import current_actor
from pipeline.data.sources import ImportSource
from pipeline.identity import PermissionDenied
from pipeline.services.jobs import cancel_job, jobs_view, start_caption_job

settings, engine, actor = get_settings(), get_engine(), current_actor()
st.title("Jobs")

with st.form("caption_job"):
    st.markdown("**Import images and draft their captions with the teacher**")
    st.caption(md_escape(f"Teacher model: {settings.teacher_model} · device: {settings.device}"))
    c1, c2 = st.columns(2)
    source = c1.selectbox("Source", list(ImportSource), format_func=lambda s: s.value, key="job_source")
    path = c2.text_input(md_escape(f"Folder inside {settings.import_root} (folder source, or the CIFAR-10 root)"),
                         key="job_path")
    c3, c4 = st.columns(2)
    n_per_class = c3.number_input("Images per class to have in the store", 1, 5000, 10, key="job_n")
    limit = c4.number_input("Caption at most this many (0: every image without a draft)", 0, 100000, 0,
                            key="job_limit")
    if st.form_submit_button("Import and caption", type="primary", icon=":material/play_arrow:"):
        try:
            started = start_caption_job(settings, engine, actor=actor, source=source.value,
                                        n_per_class=int(n_per_class), path=path.strip() or None,
                                        limit=int(limit) or None)
            (st.success if started.ok else st.error)(md_escape(started.message))
        except PermissionDenied as err:
            st.error(md_escape(str(err)))


def _cancel(job_id: int) -> None:
    try:
        st.session_state["job_cancel_message"] = cancel_job(engine, actor=actor, job_id=job_id, settings=settings)
    except PermissionDenied as err:
        st.session_state["job_cancel_message"] = str(err)


@st.fragment(run_every="2s")
def live_jobs() -> None:
    """Re-read the job rows every two seconds; only this part of the page reruns."""
    jobs = jobs_view(engine, settings=settings)
    if message := st.session_state.pop("job_cancel_message", None):
        st.info(md_escape(message))
    if jobs.empty:
        st.info("No jobs yet.")
        return
    for job in jobs[jobs.active].itertuples():
        with st.container(border=True):
            text = md_escape(f"Job {job.id} ({job.kind}): {job.done}/{job.total or '?'} · {job.message}")
            st.progress(min(float(job.progress), 1.0), text=text)
            st.button("Cancel", key=f"cancel-{job.id}", on_click=_cancel, args=(job.id,),
                      disabled=bool(job.cancel_requested), icon=":material/stop:")
    st.dataframe(jobs.drop(columns=["active"]), hide_index=True, column_config={
        "progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=1)})


st.subheader("Jobs")
live_jobs()
