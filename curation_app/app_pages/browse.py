"""Browse: the items with their thumbnails, filtered, a page at a time; states and rates per class;
open one to review."""
from __future__ import annotations

from dataclasses import replace

import streamlit as st

from curation_app.resources import get_engine
from curation_app.signin import current_actor
from db.models import ReviewState
from db.review import MAX_CAPTION_CHARS
from pipeline.classes import CLASSES
from pipeline.identity import Role
from pipeline.services.browse import BrowseFilters, browse_view, flag_choices

st.title("Browse")
flags = flag_choices()
with st.expander("Filters", expanded=True, icon=":material/filter_list:"):
    c1, c2, c3 = st.columns(3)
    labels = c1.multiselect("Class", CLASSES, key="browse_labels")
    states = c2.multiselect("State", list(ReviewState), format_func=lambda s: s.value, key="browse_states")
    reviewer = c3.text_input("Reviewer", key="browse_reviewer", placeholder="any")
    c4, c5, c6 = st.columns(3)
    flag = c4.selectbox("Auto-flag", [None, *flags], format_func=lambda f: flags.get(f, "Any"), key="browse_flag")
    text = c5.text_input("Caption contains", key="browse_text")
    lo, hi = c6.slider("Caption length (characters)", 0, MAX_CAPTION_CHARS, (0, MAX_CAPTION_CHARS),
                       key="browse_len")

filters = BrowseFilters(labels=tuple(labels), states=tuple(states), reviewer=reviewer.strip() or None,
                        flag=flag, text=text.strip(), min_chars=lo,
                        max_chars=None if hi >= MAX_CAPTION_CHARS else hi)
if st.session_state.get("browse_filters") != filters:  # new filters: back to the first page
    st.session_state["browse_filters"], st.session_state["browse_pages"] = filters, [(0, 0)]
pages = st.session_state["browse_pages"]  # (after_id, items on the pages before) of each page seen so far
after_id, shown_before = pages[-1]
view = browse_view(get_engine(), filters=replace(filters, after_id=after_id))

left, right = st.columns(2)
with left:
    st.subheader("States per class")
    if view.states.empty:
        st.info("No items yet.")
    else:
        st.bar_chart(view.states, x="label", y="n", color="state", stack=True)
with right:
    st.subheader("Approval and edit rates")
    st.dataframe(view.rates, hide_index=True, column_config={
        "approval_rate": st.column_config.ProgressColumn("approved / decided", min_value=0, max_value=1),
        "edit_rate": st.column_config.ProgressColumn("edited / approved", min_value=0, max_value=1),
    })

more = "" if view.next_after_id is None else " (more on the next page)"
st.subheader(f"Items {shown_before + 1 if len(view.items) else 0}–{shown_before + len(view.items)}{more}")
if view.searched_to is not None:
    st.caption(f"Few items match: this page looked at the items up to id {view.searched_to}. "
               "Next page searches on from there.")
prev_col, next_col = st.columns(2)
prev_col.button("Previous page", disabled=len(pages) == 1, key="browse_prev", icon=":material/chevron_left:",
                on_click=pages.pop)  # callbacks run before the script: one run per click
next_col.button("Next page", disabled=view.next_after_id is None, key="browse_next",
                icon=":material/chevron_right:", on_click=pages.append,
                args=((view.next_after_id, shown_before + len(view.items)),))
event = st.dataframe(
    view.items, hide_index=True, key="browse_table", on_select="rerun", selection_mode="single-row",
    row_height=70, column_config={
        "thumbnail": st.column_config.ImageColumn("image", width="small"),
        "caption": st.column_config.TextColumn("caption (final, else draft)", width="large"),
        "draft": st.column_config.TextColumn("teacher draft", width="medium"),
    })
rows = event.selection.rows if event is not None else []
if rows and current_actor().can(Role.reviewer):  # only reviewers have the Review page
    image_id = int(view.items.iloc[rows[0]]["image_id"])
    if st.button(f"Review item {image_id}", type="primary", icon=":material/rate_review:", key="browse_open"):
        st.session_state["open_item"] = image_id
        st.switch_page("app_pages/review.py")
elif current_actor().can(Role.reviewer):
    st.caption("Select a row to open that item on the Review page.")
