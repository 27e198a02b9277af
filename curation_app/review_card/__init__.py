"""The browser review card (a Streamlit v2 component, plain JS in card.js): shows the item in hand and
preloads the next ones, handles the review keys in the browser, and sends decisions as a numbered queue."""
from __future__ import annotations

import base64
from pathlib import Path

import streamlit as st
from sqlalchemy.engine import Engine
from streamlit.components.v2 import component

from curation_app.components import md_escape, progress_panel, reason_label
from db.models import RejectReason, ReviewState
from pipeline.identity import Actor, PermissionDenied
from pipeline.services import review as studio

KEY = "review_card"
HERE = Path(__file__).parent
_mount = component("capstudio_review_card", js=(HERE / "card.js").read_text(), css=(HERE / "card.css").read_text(),
                   isolate_styles=False)  # in the page's DOM: its keys, focus and Tab order are the page's


def _item(item) -> dict:
    base = item.final_caption if item.state == ReviewState.approved and item.final_caption else item.draft_text
    labels = studio.flag_choices()
    return {"id": item.image_id, "version": item.version, "label": item.label, "state": item.state.value,
            "caption": base, "draft": item.draft_text, "flags": [labels.get(f, f) for f in item.flags],
            "png": "data:image/png;base64," + base64.b64encode(item.png).decode()}


@st.fragment
def show_review_card(engine: Engine, *, actor: Actor, spec: studio.QueueSpec, prefetch: int) -> None:
    """The Review page's card in browser mode: only this fragment reruns when the card sends decisions."""
    queue = st.session_state.setdefault("card_queue", studio.CardQueue())
    fresh = st.session_state.get("card_spec") not in (None, spec)
    wanted = st.session_state.pop("open_item", None)  # set by Browse's "Review this item"
    try:
        view = studio.card_view(engine, actor=actor, spec=spec, queue=queue, count=1 + prefetch, fresh=fresh,
                                image_id=wanted)
    except PermissionDenied as err:
        st.error(md_escape(str(err)))
        return
    if view.message:
        st.error(md_escape(view.message))
    st.session_state["card_spec"] = spec
    progress_panel(view.progress, per_class=False)
    data = {"reviewer": actor.name, "items": [_item(i) for i in view.items], "acked": queue.acked,
            "results": [r.__dict__ for r in queue.results],
            "reasons": [[r.value, reason_label(r)] for r in RejectReason],
            "empty_text": "Nothing left to review with these filters."}
    _mount(key=KEY, data=data, on_queue_change=lambda: _apply(engine, actor, spec))


def _apply(engine: Engine, actor: Actor, spec: studio.QueueSpec) -> None:
    """Callback (before the rerun): apply the decisions the card sent that are new."""
    client, decisions = _sent()
    if client:
        queue = st.session_state.setdefault("card_queue", studio.CardQueue())
        studio.apply_card_decisions(engine, actor=actor, spec=spec, queue=queue, client=client, decisions=decisions)


def _sent() -> tuple[str, list[dict]]:
    """The card's latest queue: (its client id, every decision it has not seen acknowledged)."""
    state = st.session_state.get(KEY) or {}
    queue = state.get("queue") if hasattr(state, "get") else None
    if not isinstance(queue, dict) or not isinstance(queue.get("client"), str):
        return "", []
    decisions = queue.get("decisions")
    return queue["client"], [d for d in decisions if isinstance(d, dict)] if isinstance(decisions, list) else []
