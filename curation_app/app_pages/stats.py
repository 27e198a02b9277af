"""Stats: per reviewer and per day, decisions, pace, outcome shares, reject reasons, edit size and
agreement with the second reviewer (the numbers of `python -m pipeline stats`)."""
from __future__ import annotations

import streamlit as st

from curation_app.resources import get_engine
from pipeline.services.stats import stats_view

engine = get_engine()
st.title("Reviewer statistics")

view = stats_view(engine)
fig = view.overall
c1, c2, c3, c4 = st.columns(4)
c1.metric("items reviewed twice", fig.n_items)
c2.metric("agreement", "—" if fig.agreement_rate is None else f"{fig.agreement_rate:.0%}")
c3.metric("Cohen's kappa", "—" if fig.kappa is None else f"{fig.kappa:.2f}")
c4.metric("mean caption similarity", "—" if fig.mean_similarity is None else f"{fig.mean_similarity:.2f}")
if view.per_reviewer.empty:
    st.info("No review decisions yet.")
    st.stop()

percent = st.column_config.NumberColumn(format="percent")
shares = {c: percent for c in ("approve_share", "edit_share", "reject_share", "skip_share", "agreement_rate")}
st.subheader("Per reviewer")
st.dataframe(view.per_reviewer, hide_index=True, column_config=shares, key="stats_reviewers")
for title, chart in view.charts:
    st.subheader(title)
    st.altair_chart(chart, width="stretch")
st.subheader("Per reviewer and day")
st.dataframe(view.per_day, hide_index=True, column_config=shares, key="stats_days")
