"""Second review: a blind second opinion on an item someone else decided. The page shows the image
and the teacher's draft, never the first decision; approve, edit or reject as if you were first."""
from __future__ import annotations

import streamlit as st

from curation_app.components import diff_view, flag_badges, pixel_image, reason_label
from curation_app.resources import get_engine
from curation_app.signin import current_actor
from db.models import RejectReason, Verdict
from pipeline.identity import PermissionDenied
from pipeline.services import qc

engine = get_engine()
actor = current_actor()  # every second opinion records this signed-in user
st.title("Second review")
st.caption("Blind review: you see the image and the teacher's draft, not what the first reviewer decided.")


def _submit(verdict: Verdict) -> None:
    """Button callback: hand what the reviewer sees to the service, keep the result."""
    opinion_id, version, draft = st.session_state["second_shown"]
    caption = st.session_state.get(f"second-caption-{opinion_id}-{version}", draft)
    kwargs: dict = {}
    if verdict == Verdict.approve and caption != draft:
        st.session_state["second_flash"] = "You edited the caption: press Save edit to keep your version."
        return
    if verdict == Verdict.edit:
        if caption == draft:
            st.session_state["second_flash"] = "The caption is unchanged: press Approve to keep the draft."
            return
        kwargs["caption"] = caption
    if verdict == Verdict.reject:
        kwargs["reason"] = st.session_state.get(f"second-reason-{opinion_id}-{version}")
        kwargs["note"] = st.session_state.get(f"second-note-{opinion_id}-{version}") or None
    st.session_state["second_view"] = qc.submit_second_opinion(
        engine, actor=actor, opinion_id=opinion_id, expected_version=version, verdict=verdict, **kwargs)


view = st.session_state.pop("second_view", None)
if view is None:
    try:
        view = qc.open_second_review(engine, actor=actor)
    except PermissionDenied as err:
        st.error(str(err))
        st.stop()
if view.message:
    (st.success if view.ok else st.error)(view.message)
if flash := st.session_state.pop("second_flash", None):
    st.warning(flash)

item = view.item
if item is None:
    st.session_state.pop("second_shown", None)
    st.success("No second reviews are waiting for you.")
    st.stop()
st.session_state["second_shown"] = (item.opinion_id, item.version, item.draft_text)
suffix = f"{item.opinion_id}-{item.version}"

left, right = st.columns([2, 3])
with left:
    pixel_image(item.png)
with right:
    st.text(f"Class: {item.label} · item {item.image_id} · second review {item.opinion_id}")
    flag_badges(item.flags)
    caption = st.text_area("Caption (the teacher's draft; edit it if it needs it)", value=item.draft_text,
                           key=f"second-caption-{suffix}", height=110)
    if caption != item.draft_text:
        st.text("Changes against the teacher's draft (- removed, + added):")
        diff_view(item.draft_text, caption)
    c1, c2 = st.columns(2)
    c1.selectbox("Reject reason", list(RejectReason), index=None, format_func=reason_label,
                 key=f"second-reason-{suffix}", placeholder="choose one to reject")
    c2.text_input("Note (optional)", key=f"second-note-{suffix}")

cols = st.columns(3)
for col, (text, verdict, kind) in zip(cols, [("Approve", Verdict.approve, "primary"),
                                             ("Save edit", Verdict.edit, "secondary"),
                                             ("Reject", Verdict.reject, "secondary")]):
    col.button(text, key=f"second-{verdict.value}", type=kind, on_click=_submit, args=(verdict,), width="stretch")
