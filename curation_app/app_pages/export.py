"""Export: check the balance, write an immutable snapshot of the approved pairs, download it."""
from __future__ import annotations

from functools import partial

import streamlit as st

from curation_app.components import md_escape
from curation_app.resources import get_engine, get_settings
from curation_app.signin import current_actor
from pipeline.identity import PermissionDenied
from pipeline.services.export import export_view, run_export, zip_snapshot

settings, engine = get_settings(), get_engine()
st.title("Export")

if "export_result" in st.session_state:
    ok, message = st.session_state.pop("export_result")
    (st.success if ok else st.error)(md_escape(message))

view = export_view(settings, engine)
st.subheader("Balance check")
(st.success if view.balance.ok else st.warning)(view.balance.message())
st.dataframe(view.balance_table, hide_index=True, column_config={
    "share": st.column_config.ProgressColumn("toward target", min_value=0, max_value=1)})

override = st.checkbox(
    "Export anyway, although some classes are below target", key="override_balance",
    disabled=view.balance.ok, help="The snapshot's manifest records that the balance was overridden.")
include_weak = st.checkbox(
    "Add the pending teacher drafts as a separate weak split", key="include_weak",
    help="Unreviewed drafts go into their own `weak` split, never into train/validation; the student can "
         "warm up on them or mix them in with a lower weight (Train page). Rejected drafts are never used.")
if st.button("Export snapshot", type="primary", icon=":material/archive:", key="export_btn", shortcut="E",
             disabled=view.balance.total == 0):
    try:  # the snapshot records the signed-in user as its exporter
        st.session_state["export_result"] = run_export(settings, engine, actor=current_actor(),
                                                       override_balance=override,
                                                       include_weak=include_weak)
    except PermissionDenied as err:
        st.session_state["export_result"] = (False, str(err))
    st.rerun()

st.subheader("Snapshots")
if not view.snapshots:
    st.info("No snapshots yet.")
for snap in view.snapshots:
    with st.container(border=True):
        c1, c2 = st.columns([3, 1])
        c1.markdown(f"**{md_escape(snap.snapshot_id)}** · {snap.n_items} pairs · {md_escape(snap.created_at[:19])}")
        c1.caption(md_escape(f"hash {snap.content_hash[:16]} · reviewers: {', '.join(snap.reviewers) or '—'} · "
                             f"exported by: {snap.exported_by or '—'} · students trained on it: {snap.n_students}"))
        c1.text(" ".join(f"{k}:{v}" for k, v in sorted(snap.counts_per_class.items())))
        c2.download_button(
            "Download zip", data=partial(zip_snapshot, snap.path), file_name=f"{snap.snapshot_id}.zip",
            mime="application/zip", key=f"dl-{snap.snapshot_id}", on_click="ignore",
            icon=":material/download:")
