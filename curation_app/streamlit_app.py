"""The review studio's entry point: `streamlit run curation_app/streamlit_app.py`.

Refuses to serve an unsafe configuration, resolves the signed-in user (curation_app/signin.py), and
builds the navigation from PAGES: each page is listed with the least role that may use it, so a
page a role cannot use is not in that role's navigation (the services check the role again).
"""
from __future__ import annotations

from functools import partial

import streamlit as st
from sqlalchemy.exc import DatabaseError

from curation_app.components import damage_page
from curation_app.resources import get_engine, get_settings, get_startup_notes, get_store_damage
from curation_app.signin import auth_secrets, identity_sidebar, no_role_page, resolve_actor, sign_in_page
from pipeline.identity import Role
from pipeline.services.auth import startup_problem
from pipeline.services.health import store_damage, store_files_notice

PAGES = [
    (Role.viewer, st.Page("app_pages/home.py", title="Home", icon=":material/home:", default=True)),
    (Role.reviewer, st.Page("app_pages/review.py", title="Review", icon=":material/rate_review:")),
    (Role.reviewer, st.Page("app_pages/second_review.py", title="Second review", icon=":material/fact_check:")),
    (Role.viewer, st.Page("app_pages/browse.py", title="Browse", icon=":material/table_view:")),
    (Role.curator, st.Page("app_pages/export.py", title="Export", icon=":material/archive:")),
    (Role.curator, st.Page("app_pages/adjudicate.py", title="Adjudicate", icon=":material/gavel:")),
    (Role.curator, st.Page("app_pages/stats.py", title="Stats", icon=":material/monitoring:")),
    (Role.curator, st.Page("app_pages/jobs.py", title="Jobs", icon=":material/work_history:")),
    (Role.viewer, st.Page("app_pages/playground.py", title="Playground", icon=":material/science:")),
    (Role.curator, st.Page("app_pages/train.py", title="Train", icon=":material/model_training:")),
    (Role.curator, st.Page("app_pages/compare.py", title="Batch compare", icon=":material/compare:")),
    (Role.viewer, st.Page("app_pages/lineage.py", title="Lineage", icon=":material/account_tree:")),
    (Role.admin, st.Page("app_pages/admin.py", title="Users", icon=":material/group:")),
]

st.set_page_config(page_title="Caption studio", page_icon=":material/photo_library:", layout="wide")
settings = get_settings()
if problem := startup_problem(settings, address=st.get_option("server.address"), auth_secrets=auth_secrets()):
    st.error(problem)
    st.stop()
if damage := get_store_damage():
    damage_page(damage)  # one clear page instead of pages that render as if all were well
engine = get_engine()
if notice := store_files_notice(settings, engine):  # the -wal or the database deleted under the studio
    if notice.damage:
        damage_page(notice.damage)
    st.warning(notice.message, icon=":material/warning:")
actor = resolve_actor(settings, engine)
if actor is None:
    pages = [st.Page(partial(sign_in_page, settings, engine), title="Sign in", icon=":material/login:",
                     url_path="sign-in")]
elif actor.role is None:
    pages = [st.Page(no_role_page, title="Home", icon=":material/home:")]
else:
    pages = [page for needed, page in PAGES if actor.can(needed)]
page = st.navigation(pages)
identity_sidebar(settings, actor)
if actor is not None and actor.can(Role.curator) and not st.session_state.get("startup_notes_shown"):
    st.session_state["startup_notes_shown"] = True
    for note in get_startup_notes():
        st.toast(note, icon=":material/inventory_2:")
body = st.empty()  # a page that fails on a damaged store is replaced by the damage page
try:
    with body.container():
        page.run()
except DatabaseError:
    if damage := store_damage(settings):  # a failed query: is the file itself damaged?
        body.empty()
        damage_page(damage)
    raise
