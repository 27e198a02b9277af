"""Adjudicate: the quality-control policy (blind second review on or off, what is routed) and the
queue of items on which two reviewers disagree: keep one version, merge them by editing, or reject."""
from __future__ import annotations

import streamlit as st

from curation_app.components import diff_view, pixel_image, reason_label
from curation_app.resources import get_engine, get_settings
from curation_app.signin import current_actor
from db.models import Adjudication, RejectReason
from pipeline.identity import PermissionDenied
from pipeline.services import qc

settings, engine = get_settings(), get_engine()
actor = current_actor()
st.title("Adjudicate")


def _act(call, **kwargs) -> None:
    """Button callback: run one service call as the signed-in curator, keep its (ok, message)."""
    try:
        st.session_state["adjudicate_result"] = call(engine, actor=actor, **kwargs)
    except PermissionDenied as err:
        st.session_state["adjudicate_result"] = (False, str(err))


def _save_policy() -> None:
    _act(qc.set_policy, enabled=st.session_state["qc_enabled"], sample_fraction=st.session_state["qc_fraction"],
         route_edited=st.session_state["qc_edited"])


def _settle(choice: Adjudication, opinion_id: int, version: int) -> None:
    """Read what the curator sees now (the merged text, the reason) and adjudicate."""
    suffix = f"{opinion_id}-{version}"
    _act(qc.settle, opinion_id=opinion_id, expected_version=version, choice=choice,
         caption=st.session_state.get(f"adj_merged-{suffix}") if choice == Adjudication.merged else None,
         reason=st.session_state.get(f"adj_reason-{suffix}") if choice == Adjudication.rejected else None)


if "adjudicate_result" in st.session_state:
    ok, message = st.session_state.pop("adjudicate_result")
    (st.success if ok else st.error)(message)

view = qc.adjudication_view(settings, engine)
with st.expander("Quality-control policy", expanded=not view.policy.enabled, icon=":material/tune:"):
    st.toggle("Blind second review on", value=view.policy.enabled, key="qc_enabled")
    st.slider("Share of decided items sent to a second reviewer", 0.0, 1.0,
              value=float(view.policy.sample_fraction), step=0.05, key="qc_fraction")
    st.checkbox("Also every item whose reviewer edited the draft", value=view.policy.route_edited, key="qc_edited")
    c1, c2 = st.columns(2)
    c1.button("Save policy", key="qc_save", type="primary", on_click=_save_policy)
    c2.button("Route items decided before", key="qc_route", disabled=not view.policy.enabled,
              on_click=lambda: _act(lambda e, actor: qc.route_existing(settings, e, actor=actor)))

counts, fig = view.counts, view.figures
cols = st.columns(8)
for col, (name, value) in zip(cols, [
        ("waiting", counts["waiting"]), ("agreed", counts["agreed"]), ("disputed", counts["disputed"]),
        ("adjudicated", counts["adjudicated"]), ("withdrawn", counts["withdrawn"]),
        ("agreement", "—" if fig.agreement_rate is None else f"{fig.agreement_rate:.0%}"),
        ("kappa", "—" if fig.kappa is None else f"{fig.kappa:.2f}"),
        ("similarity", "—" if fig.mean_similarity is None else f"{fig.mean_similarity:.2f}")]):
    col.metric(name, value)

if not view.disputes:
    st.success("No disagreements to adjudicate.")
    st.stop()
d = view.disputes[0]
st.subheader(f"Disagreement on item {d.image_id} ({len(view.disputes)} in the queue)")
left, mid, right = st.columns([2, 3, 3])
with left:
    pixel_image(d.png, size=224)
    st.text(f"Class: {d.label}")
    st.text("Teacher draft:")
    st.code(d.draft_text, language=None, wrap_lines=True)
for col, title, side in ((mid, "First", d.first), (right, "Second", d.second)):
    with col:
        st.text(f"{title} reviewer: {side.reviewer} · {side.verdict.value}")
        st.code(side.caption if side.caption is not None else f"rejected: {side.reason}", language=None,
                wrap_lines=True)
st.text("Word diff, first to second (- only in the first, + only in the second)"
        + ("" if d.similarity is None else f" · ROUGE-L similarity {d.similarity:.2f}"))
diff_view(d.first.caption or "", d.second.caption or "")

b1, b2 = st.columns(2)
b1.button("Keep first", key="adj_first", on_click=_settle, args=(Adjudication.first, d.opinion_id, d.version))
b2.button("Keep second", key="adj_second", on_click=_settle, args=(Adjudication.second, d.opinion_id, d.version))
st.text_area("Merged caption (edit, then approve it)", key=f"adj_merged-{d.opinion_id}-{d.version}",
                      value=d.second.caption or d.first.caption or d.draft_text, height=90)
st.button("Approve merged caption", key="adj_merge", on_click=_settle,
          args=(Adjudication.merged, d.opinion_id, d.version))
st.selectbox("Reject reason", list(RejectReason), index=None, format_func=reason_label,
                      key=f"adj_reason-{d.opinion_id}-{d.version}", placeholder="choose one to reject")
st.button("Reject", key="adj_reject", on_click=_settle, args=(Adjudication.rejected, d.opinion_id, d.version))
