"""The review studio's entry point: `streamlit run curation_app/streamlit_app.py`.

Builds the navigation from PAGES (add a page: one line here, one file in app_pages/) and the
sidebar reviewer picker that every page shares.
"""
from __future__ import annotations

import streamlit as st

from curation_app.components import reviewer_picker

PAGES = [
    st.Page("app_pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("app_pages/review.py", title="Review", icon=":material/rate_review:"),
    st.Page("app_pages/browse.py", title="Browse", icon=":material/table_view:"),
    st.Page("app_pages/export.py", title="Export", icon=":material/archive:"),
    st.Page("app_pages/jobs.py", title="Jobs", icon=":material/work_history:"),
    st.Page("app_pages/playground.py", title="Playground", icon=":material/science:"),
    st.Page("app_pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("app_pages/compare.py", title="Batch compare", icon=":material/compare:"),
    st.Page("app_pages/lineage.py", title="Lineage", icon=":material/account_tree:"),
]

st.set_page_config(page_title="Caption studio", page_icon=":material/photo_library:", layout="wide")
page = st.navigation(PAGES)
reviewer_picker()
page.run()
