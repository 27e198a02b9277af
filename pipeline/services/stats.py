"""Service behind the Stats page: reviewer statistics (pipeline/reviewer_stats.py) as tables and
Altair charts. Read only; the same numbers as `python -m pipeline stats`."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import altair as alt
import pandas as pd
from sqlalchemy.engine import Engine

from db.engine import session_scope
from pipeline.agreement import AgreementFigures
from pipeline.reviewer_stats import ReviewerDay, reviewer_stats

COLUMNS = ["reviewer", "day", "decisions", "second_opinions", "active_hours", "decisions_per_hour",
           "approve_share", "edit_share", "reject_share", "skip_share", "top_reject_reasons", "mean_edit_words",
           "qc_items", "agreement_rate", "kappa"]


@dataclass(frozen=True)
class StatsView:
    per_reviewer: pd.DataFrame  # one row per reviewer, all days
    per_day: pd.DataFrame  # one row per reviewer and day
    overall: AgreementFigures
    charts: list[tuple[str, alt.Chart]]  # (title, chart); empty when nobody decided anything


def _frame(rows: list[ReviewerDay]) -> pd.DataFrame:
    return pd.DataFrame([asdict(r) for r in rows], columns=COLUMNS)


def _charts(per_reviewer: pd.DataFrame, per_day: pd.DataFrame) -> list[tuple[str, alt.Chart]]:
    if per_reviewer.empty:
        return []
    daily = alt.Chart(per_day).mark_bar().encode(
        x=alt.X("day:N", title="day"), y=alt.Y("decisions:Q", title="decisions"),
        color=alt.Color("reviewer:N"), xOffset="reviewer:N", tooltip=COLUMNS[:6])
    shares = per_reviewer.melt(id_vars=["reviewer"], value_vars=["approve_share", "edit_share", "reject_share",
                                                                 "skip_share"], var_name="outcome", value_name="share")
    mix = alt.Chart(shares).mark_bar().encode(
        y=alt.Y("reviewer:N"), x=alt.X("share:Q", stack="normalize", axis=alt.Axis(format="%")),
        color=alt.Color("outcome:N"), tooltip=["reviewer", "outcome", alt.Tooltip("share:Q", format=".0%")])
    agree = alt.Chart(per_reviewer.dropna(subset=["agreement_rate"])).mark_bar().encode(
        y=alt.Y("reviewer:N"), x=alt.X("agreement_rate:Q", scale=alt.Scale(domain=[0, 1]), title="agreement rate"),
        tooltip=["reviewer", "qc_items", "agreement_rate", "kappa"])
    return [("Decisions per day", daily), ("Approve / edit / reject / skip", mix),
            ("Agreement with the other reviewer", agree)]


def stats_view(engine: Engine) -> StatsView:
    with session_scope(engine) as s:
        stats = reviewer_stats(s)
    per_reviewer, per_day = _frame(stats.per_reviewer), _frame(stats.per_day)
    return StatsView(per_reviewer=per_reviewer.drop(columns=["day"]), per_day=per_day, overall=stats.overall,
                     charts=_charts(per_reviewer, per_day))
