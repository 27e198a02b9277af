"""Lineage: which snapshot every student was trained on, and which reviewed items and reviewers
every snapshot holds; a snapshot a student was trained on cannot be deleted."""
from __future__ import annotations

import streamlit as st

from curation_app.components import md_escape
from curation_app.resources import get_engine, get_settings
from curation_app.signin import current_actor
from pipeline.identity import PermissionDenied, Role
from pipeline.services.lineage import delete_snapshot, lineage_view

settings, engine, actor = get_settings(), get_engine(), current_actor()
st.title("Lineage")

if "lineage_message" in st.session_state:
    ok, message = st.session_state.pop("lineage_message")
    (st.success if ok else st.error)(md_escape(message))


def _delete(snapshot_id: str) -> None:
    try:
        st.session_state["lineage_message"] = delete_snapshot(settings, engine, actor=actor, snapshot_id=snapshot_id)
    except PermissionDenied as err:
        st.session_state["lineage_message"] = (False, str(err))


view = lineage_view(settings, engine)
st.subheader("Students")
if view.students.empty:
    st.info("No trained students yet: train one on the Train page.")
else:
    st.dataframe(view.students, hide_index=True, key="lineage_students")

st.subheader("Snapshots")
if not view.snapshots:
    st.info("No snapshots yet: export one on the Export page.")
for snap in view.snapshots:
    with st.container(border=True):
        st.markdown(f"**{md_escape(snap.snapshot_id)}** · {snap.n_items} items · {md_escape(snap.created_at)}")
        st.caption(md_escape(f"reviewers: {', '.join(snap.reviewers) or '—'} · "
                             f"students trained on it: {', '.join(snap.students) or 'none'}"))
        with st.expander(f"Reviewed items in {md_escape(snap.snapshot_id)}"):
            st.dataframe(snap.items, hide_index=True)
        if actor.can(Role.admin):  # the service refuses everyone else too
            st.button("Delete snapshot", key=f"del-{snap.snapshot_id}", on_click=_delete, args=(snap.snapshot_id,),
                      icon=":material/delete:",
                      help="Refused while a student was trained on it." if snap.students else None)
