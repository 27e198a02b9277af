"""The sign-in layer: the only place the acting user (an Actor) is made. Local mode: the OS user as
admin; password mode: a form checked by pipeline/services/auth.py; OIDC mode: Streamlit's st.login().
The entry point resolves the Actor on every run and pages read it with `current_actor()`."""
from __future__ import annotations

import streamlit as st
from sqlalchemy.engine import Engine

from pipeline.identity import Actor, AuthMode
from pipeline.markup import md_escape
from pipeline.services import auth
from pipeline.settings import Settings

SESSION_KEY = "auth_session"  # (name, signed-in POSIX time) after a password sign-in; server-side only
ACTOR_KEY = "auth_actor"  # the Actor of this run, set by the entry point before the page runs
NOTICE_KEY = "auth_notice"
MODE_TEXT = {AuthMode.local: "local (no sign-in, this machine only)", AuthMode.password: "password sign-in",
             AuthMode.oidc: "single sign-on (OIDC)"}


def auth_secrets() -> dict:
    """The [auth] table of .streamlit/secrets.toml ({} when there is none)."""
    try:
        return st.secrets.get("auth", {}).to_dict()
    except (FileNotFoundError, AttributeError):
        return {}
    except Exception as err:
        st.error(f"Could not read .streamlit/secrets.toml: {err}")
        st.stop()


def resolve_actor(settings: Settings, engine: Engine) -> Actor | None:
    """The signed-in user for this run, or None (then the sign-in page is all there is)."""
    mode = settings.auth_mode
    if mode == AuthMode.local:
        actor = auth.local_actor()
    elif mode == AuthMode.password:
        actor = None
        if session := st.session_state.get(SESSION_KEY):
            actor, why = auth.session_actor(settings, engine, name=session[0], signed_in_at=session[1])
            if actor is None:
                del st.session_state[SESSION_KEY]
                st.session_state[NOTICE_KEY] = why
    else:
        actor = None
        if st.user.is_logged_in:
            actor, why = auth.oidc_actor(settings, engine, claims=st.user.to_dict())
            if actor is None:
                st.session_state[NOTICE_KEY] = why
    st.session_state[ACTOR_KEY] = actor
    return actor


def current_actor() -> Actor:
    """The Actor the entry point resolved for this run (pages only run once there is one)."""
    actor = st.session_state.get(ACTOR_KEY)
    if actor is None:
        st.error("Sign in first.")
        st.stop()
    return actor


def sign_in_page(settings: Settings, engine: Engine) -> None:
    """Shown instead of the app until someone signs in."""
    st.title("Caption studio: sign in")
    if notice := st.session_state.pop(NOTICE_KEY, None):
        st.warning(notice)
    if settings.auth_mode == AuthMode.password:
        with st.form("sign_in"):
            name = st.text_input("Name", key="sign_in_name")
            password = st.text_input("Password", type="password", key="sign_in_password")
            if st.form_submit_button("Sign in", type="primary"):
                result = auth.sign_in(settings, engine, name=name, password=password)
                if result.ok:
                    st.session_state[SESSION_KEY] = (result.name, result.signed_in_at)
                    st.rerun()
                st.error(md_escape(result.message))
        return
    if st.user.is_logged_in:  # signed in at the provider, but refused here (disabled)
        st.button("Sign out", on_click=st.logout, key="oidc_sign_out")
        return
    for provider in _providers():
        label = f"Sign in with {provider}" if provider else "Sign in"
        st.button(label, type="primary", key=f"login-{provider or 'default'}",
                  on_click=st.login, args=(provider,) if provider else ())


def _providers() -> list[str | None]:
    """Named providers ([auth.<name>] tables), or [None] for one provider configured in [auth] itself."""
    named = [k for k, v in auth_secrets().items() if isinstance(v, dict)]
    return named or [None]


def no_role_page() -> None:
    actor = current_actor()
    st.title("Caption studio")
    st.info(md_escape(f"You are signed in as {actor.name}, but have no role yet: ask an admin to grant you one."))


def identity_sidebar(settings: Settings, actor: Actor | None) -> None:
    """Who is acting and how they signed in; sign-out where there is a sign-in."""
    with st.sidebar:
        if actor is not None:
            role = actor.role.value if actor.role else "no role yet"
            st.text(f"Signed in: {actor.name} · {role}")  # a provider's name, shown literally
        st.caption(f"Sign-in: {MODE_TEXT[settings.auth_mode]}")
        if actor is None:
            return
        if settings.auth_mode == AuthMode.password:
            st.button("Sign out", key="sign_out", on_click=_sign_out, icon=":material/logout:")
        elif settings.auth_mode == AuthMode.oidc:
            st.button("Sign out", key="sign_out", on_click=st.logout, icon=":material/logout:")


def _sign_out() -> None:
    for key in (SESSION_KEY, ACTOR_KEY):
        st.session_state.pop(key, None)
    st.session_state[NOTICE_KEY] = "Signed out."
