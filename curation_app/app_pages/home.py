"""Home: the store's counts at a glance and what to do next."""
from __future__ import annotations

import streamlit as st

from curation_app.components import md_escape, progress_panel
from curation_app.resources import get_engine, get_settings
from pipeline.services.overview import overview_view

settings = get_settings()
overview = overview_view(get_engine(), target_per_class=settings.target_per_class)

st.title("Caption studio")
st.caption("Teacher drafts → human review → immutable snapshots → student training.")
st.info(md_escape(overview.next_step), icon=":material/arrow_forward:")

cols = st.columns(6)
cols[0].metric("Images", overview.n_images)
cols[1].metric("Teacher drafts", overview.n_drafts)
for col, (state, n) in zip(cols[2:], overview.states.items()):
    col.metric(state.capitalize(), n)

st.subheader("Progress toward the target")
progress_panel(overview.progress)
st.caption(md_escape(f"Store: {settings.display_database_url} · data folder: {settings.data_dir}"))
