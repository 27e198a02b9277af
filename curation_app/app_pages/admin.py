"""Users (admin only): add accounts, change roles, disable, reset passwords. The same actions as
`python -m pipeline users ...`; every one is checked again by the service."""
from __future__ import annotations

import streamlit as st

from curation_app.components import md_escape
from curation_app.resources import get_engine
from curation_app.signin import current_actor
from db.errors import StoreError
from pipeline.identity import PermissionDenied, Role
from pipeline.services import auth

engine, actor = get_engine(), current_actor()
ROLE_CHOICES = [None, *Role]
st.title("Users")

if "admin_message" in st.session_state:
    ok, message = st.session_state.pop("admin_message")
    (st.success if ok else st.error)(md_escape(message))


def _do(call, **kwargs) -> None:
    try:
        st.session_state["admin_message"] = (True, call(engine, actor=actor, **kwargs))
    except (PermissionDenied, StoreError, auth.AccountError) as err:
        st.session_state["admin_message"] = (False, str(err))


try:
    users = auth.users_view(engine, actor=actor)
except PermissionDenied as err:
    st.error(md_escape(str(err)))
    st.stop()
st.dataframe(users, hide_index=True, key="admin_users")

role_text = {None: "no role", **{r: r.value for r in Role}}
with st.form("admin_add", clear_on_submit=True):
    st.markdown("**Add a user** (leave the password empty for an OIDC user: they sign in at the provider)")
    c1, c2, c3 = st.columns(3)
    name = c1.text_input("Name (OIDC users: their email)", key="admin_new_name")
    role = c2.selectbox("Role", ROLE_CHOICES, index=2, format_func=role_text.get, key="admin_new_role")
    password = c3.text_input("Password", type="password", key="admin_new_password")
    if st.form_submit_button("Add user", type="primary"):
        _do(auth.add_account, name=name, role=role, password=password or None)
        st.rerun()

def _on_selected(call, **fields) -> None:
    _do(call, name=st.session_state["admin_who"], **{k: st.session_state.get(v, v) for k, v in fields.items()})


if not users.empty:
    st.markdown("**Change a user**")
    who = st.selectbox("User", list(users.name), key="admin_who")
    c1, c2 = st.columns(2)
    c1.selectbox("New role", ROLE_CHOICES, format_func=role_text.get, key="admin_role")
    c1.button("Set role", key="admin_set_role", on_click=_on_selected, args=(auth.change_role,),
              kwargs={"role": "admin_role"})
    disabled = bool(users.set_index("name").loc[who, "disabled"])
    c1.button("Enable" if disabled else "Disable", key="admin_disable", on_click=_do,
              args=(auth.disable_account,), kwargs={"name": who, "disabled": not disabled})
    c2.text_input("New password", type="password", key="admin_password")
    c2.button("Reset password", key="admin_reset", on_click=_on_selected, args=(auth.reset_password,),
              kwargs={"password": "admin_password"})
