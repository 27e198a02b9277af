"""Review: one item at a time. Approve (A), save an edit (Ctrl+Enter), reject (X), skip (S),
undo (U); every decision is saved at once and the next item follows. By default the card runs in the
browser (curation_app/review_card: keys handled there, the next items preloaded); with
CAPSTUDIO_REVIEW_CARD=streamlit it is Streamlit widgets in an st.fragment (one script run per key)."""
from __future__ import annotations

import streamlit as st

from curation_app.components import (
    diff_view,
    flag_badges,
    guidelines_panel,
    md_escape,
    pixel_image,
    progress_panel,
    reason_label,
)
from curation_app.resources import get_engine, get_settings
from curation_app.review_card import show_review_card
from curation_app.signin import current_actor
from db.models import RejectReason, ReviewAction, ReviewState
from db.review import QueueOrder
from pipeline.classes import CLASSES
from pipeline.identity import PermissionDenied
from pipeline.services import review as studio
from pipeline.settings import ReviewCard

ORDER_TEXT = {QueueOrder.balanced: "Classes furthest from target first",
              QueueOrder.risk: "Most auto-flags first", QueueOrder.oldest: "Oldest first"}

settings, engine = get_settings(), get_engine()
actor = current_actor()  # every decision records this signed-in user
st.title("Review")

with st.sidebar:
    order = st.radio("Queue order", list(ORDER_TEXT), format_func=ORDER_TEXT.get, key="queue_order")
    label = st.selectbox("Class", [None, *CLASSES], format_func=lambda c: c or "All classes", key="queue_label")
    flags = studio.flag_choices()
    flag = st.selectbox("Auto-flag", [None, *flags], format_func=lambda f: flags.get(f, "Any"), key="queue_flag")
spec = studio.QueueSpec(order=order, label=label, flag=flag,
                        target_per_class=settings.target_per_class, qc_default=settings.qc_default)


def _key(kind: str) -> str:
    image_id, version, _ = st.session_state["shown"]
    return f"{kind}-{image_id}-{version}"


def _decide(action: ReviewAction, spec: studio.QueueSpec) -> None:
    """Button callback: read what the reviewer sees, hand it to the service, keep the result."""
    if "shown" not in st.session_state:
        return
    image_id, version, base = st.session_state["shown"]
    caption = st.session_state.get(_key("caption"), base)
    kwargs: dict = {}
    if action == ReviewAction.approve:
        if caption != base:
            st.session_state["flash"] = "You edited the caption: save the edit with Ctrl+Enter."
            return
        kwargs["caption"] = base
    elif action == ReviewAction.edit_approve:
        if caption == base:
            st.session_state["flash"] = "The caption is unchanged: press A to approve it as it is."
            return
        if (image_id, version, caption) != st.session_state.get("previewed"):  # this item's diff, not an earlier one
            st.session_state["flash"] = "Check the word diff below, then press Ctrl+Enter again to save."
            return
        kwargs["caption"] = caption
    elif action == ReviewAction.reject:
        kwargs["reason"] = st.session_state.get(_key("reason"))
        kwargs["note"] = st.session_state.get(_key("note")) or None
    st.session_state["review_view"] = studio.submit_decision(
        engine, actor=actor, spec=spec, image_id=image_id, expected_version=version, action=action, **kwargs)


def _undo(spec: studio.QueueSpec) -> None:
    st.session_state["review_view"] = studio.undo(engine, actor=actor, spec=spec)


@st.fragment
def classic_card() -> None:
    """The card as Streamlit widgets; a key press reruns only this fragment."""
    view = st.session_state.pop("review_view", None)
    if view is None:
        fresh = st.session_state.get("queue_spec") not in (None, spec)
        wanted = st.session_state.pop("open_item", None)  # set by Browse's "Review this item"
        current = None if fresh else st.session_state.get("current_item")
        try:
            view = studio.open_review(engine, actor=actor, spec=spec, image_id=wanted or current,
                                      fresh=fresh and not wanted)
        except PermissionDenied as err:
            st.error(md_escape(str(err)))
            return
    st.session_state["queue_spec"] = spec

    progress_panel(view.progress, per_class=False)
    if view.message:
        (st.success if view.ok else st.error)(md_escape(view.message))
    if flash := st.session_state.pop("flash", None):
        st.warning(md_escape(flash))

    item = view.item
    if item is None:
        st.session_state.pop("current_item", None)
        st.session_state.pop("shown", None)
        st.success("Nothing left to review with these filters.")
        st.button("Undo last decision", key="undo", shortcut="U", on_click=_undo, args=(spec,))
        return

    base = item.final_caption if item.state == ReviewState.approved and item.final_caption else item.draft_text
    st.session_state["current_item"] = item.image_id
    st.session_state["shown"] = (item.image_id, item.version, base)

    left, right = st.columns([2, 3])
    with left:
        pixel_image(item.png)
    with right:
        st.subheader(md_escape(f"Class: {item.label}"), anchor=False)  # no anchor link made of the label
        st.caption(f"Item {item.image_id} · {item.state.value} · version {item.version}")
        flag_badges(item.flags)
        caption = st.text_area("Caption (the teacher's draft; edit it, then Ctrl+Enter)", value=base,
                               key=_key("caption"), height=110)
        if caption != item.draft_text:
            st.markdown("**Changes against the teacher's draft** (− removed, + added)")
            diff_view(item.draft_text, caption)
            st.session_state["previewed"] = (item.image_id, item.version, caption)
        with st.expander("Draft provenance"):
            st.text("Teacher draft:")
            st.code(item.draft_text, language=None, wrap_lines=True)
            st.json(item.provenance)
        c1, c2 = st.columns(2)
        c1.selectbox("Reject reason", list(RejectReason), index=None, format_func=reason_label,
                     key=_key("reason"), placeholder="choose one to reject")
        c2.text_input("Note (optional)", key=_key("note"))

    buttons = [("Approve", ReviewAction.approve, "A", "primary"),
               ("Save edit", ReviewAction.edit_approve, "Ctrl+Enter", "secondary"),
               ("Reject", ReviewAction.reject, "X", "secondary"),
               ("Skip", ReviewAction.skip, "S", "secondary")]
    cols = st.columns(len(buttons) + 1)
    for col, (text, action, keys, kind) in zip(cols, buttons):
        col.button(text, key=f"btn-{action.value}", shortcut=keys, type=kind, on_click=_decide,
                   args=(action, spec), width="stretch")
    cols[-1].button("Undo", key="undo", shortcut="U", on_click=_undo, args=(spec,), width="stretch")
    st.caption("Keys: A approve · Ctrl+Enter save edit · X reject · S skip · U undo "
               "(letters work when the caption box is not focused: press Tab or click outside it).")


with st.sidebar.expander("Progress per class (as of the last page load)"):
    progress_panel(studio.review_progress(engine, spec=spec))
if settings.review_card == ReviewCard.browser:
    show_review_card(engine, actor=actor, spec=spec, prefetch=settings.review_prefetch)
else:
    classic_card()
guidelines_panel(settings, actor)
