"""Who is signed in: the Actor for each sign-in mode (local, password, OIDC), password sign-in with
argon2id hashes and lock-out, the startup checks a shared server needs, and user admin (the
Admin page and `python -m pipeline users`).

The app keeps only (name, signed-in time) per browser session; every run turns that back into an
Actor from the store, so a role change, a disabled account or a new password applies at once.
"""
from __future__ import annotations

import getpass
import ipaddress
import re
import secrets
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy.engine import Engine

from db.engine import session_scope
from db.errors import StoreError
from db.users import (
    add_user,
    get_user,
    list_users,
    locked_until,
    password_changed_at,
    record_failed_sign_in,
    record_sign_in,
    set_disabled,
    set_password_hash,
    set_role,
)
from pipeline.identity import Actor, AuthMode, PermissionDenied, Role, parse_role, require
from pipeline.settings import Settings

if TYPE_CHECKING:  # pandas is imported where a table is made: every command line starts ~0.35 s sooner
    import pandas as pd

HASHER = PasswordHasher()  # argon2id with the library's RFC 9106 defaults
_DUMMY_HASH = HASHER.hash("not a password")  # verified against for unknown names: same cost either way
MIN_PASSWORD_CHARS = 10
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
COOKIE_SECRET_COMMAND = "python -m pipeline users cookie-secret"


class AccountError(ValueError):
    """A user-admin request that cannot be done as asked (bad name, short password, yourself)."""


def local_actor() -> Actor:
    """Local mode: the person at this machine, as admin."""
    return Actor(name=getpass.getuser() or "local", role=Role.admin)


def is_loopback(address: str | None) -> bool:
    """True for addresses only this machine can reach; Streamlit's empty default listens everywhere."""
    if not address:
        return False
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def startup_problem(settings: Settings, *, address: str | None, auth_secrets: dict) -> str | None:
    """Why the app must not serve with these settings (None: fine). `auth_secrets` is the
    `[auth]` table of .streamlit/secrets.toml."""
    mode = settings.auth_mode
    if mode == AuthMode.local and not is_loopback(address):
        return (f"Refusing to serve on {address or 'every interface'} in local mode: anyone who reaches the port "
                "would be admin. Listen on 127.0.0.1, or turn on sign-in: set CAPSTUDIO_AUTH_MODE=password "
                "(accounts from `python -m pipeline users add`) or CAPSTUDIO_AUTH_MODE=oidc (an [auth] provider "
                f"in .streamlit/secrets.toml), and generate the cookie secret with `{COOKIE_SECRET_COMMAND}`.")
    if mode != AuthMode.local and len(str(auth_secrets.get("cookie_secret", ""))) < 32:
        return (f"{mode.value} mode needs a cookie secret of at least 32 characters in .streamlit/secrets.toml "
                f"([auth] cookie_secret): run `{COOKIE_SECRET_COMMAND}`.")
    if mode == AuthMode.oidc and not auth_secrets.get("redirect_uri"):
        return ("oidc mode needs [auth] redirect_uri (http://<host>:<port>/oauth2callback) and a provider "
                "(client_id, client_secret, server_metadata_url) in .streamlit/secrets.toml.")
    return None


@dataclass(frozen=True)
class SignIn:
    ok: bool
    message: str
    name: str | None = None
    signed_in_at: float | None = None  # POSIX seconds


def sign_in(settings: Settings, engine: Engine, *, name: str, password: str) -> SignIn:
    """Check a password; count failures and lock the account after settings.auth_max_failures."""
    refused = SignIn(False, "Wrong name or password.")
    with session_scope(engine) as s:
        user = get_user(s, name=name.strip())
        if user is None or not user.password_hash:
            _verify(_DUMMY_HASH, password)
            return refused
        if until := locked_until(user):
            return SignIn(False, f"Too many wrong passwords: {user.name} is locked until {until:%H:%M} UTC.")
        if not _verify(user.password_hash, password):
            user = record_failed_sign_in(s, name=user.name, max_failures=settings.auth_max_failures,
                                         lock_for=timedelta(minutes=settings.auth_lockout_minutes))
            if user is not None and locked_until(user):
                return SignIn(False, f"Too many wrong passwords: {user.name} is locked for "
                                     f"{settings.auth_lockout_minutes:g} minutes.")
            return refused
        if user.disabled:
            return SignIn(False, f"The account {user.name} is disabled: ask an admin.")
        if HASHER.check_needs_rehash(user.password_hash):
            set_password_hash(s, name=user.name, password_hash=HASHER.hash(password))
        record_sign_in(s, name=user.name)
        return SignIn(True, f"Signed in as {user.name}.", name=user.name,
                      signed_in_at=datetime.now(UTC).timestamp())


def _verify(password_hash: str, password: str) -> bool:
    try:
        return HASHER.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def session_actor(settings: Settings, engine: Engine, *, name: str, signed_in_at: float) -> tuple[Actor | None, str]:
    """The Actor for a password session, or (None, why it ended): expired, disabled, password changed."""
    started = datetime.fromtimestamp(signed_in_at, UTC)
    if datetime.now(UTC) - started > timedelta(hours=settings.auth_session_hours):
        return None, "Your session expired: sign in again."
    with session_scope(engine) as s:
        user = get_user(s, name=name)
        if user is None or user.disabled:
            return None, "Your account was disabled."
        changed = password_changed_at(user)
        if changed is not None and changed > started:
            return None, "Your password was changed: sign in again."
        return Actor(name=user.name, role=parse_role(user.role)), ""


def role_from_claim(value: object) -> Role | None:
    """The highest role named in a claim value (a list such as groups, or a space/comma separated string)."""
    items = value if isinstance(value, (list, tuple)) else re.split(r"[\s,]+", str(value or ""))
    roles = [Role(v.strip().lower()) for v in map(str, items) if v.strip().lower() in Role._value2member_map_]
    return max(roles, key=lambda r: r.rank) if roles else None


def oidc_actor(settings: Settings, engine: Engine, *, claims: dict) -> tuple[Actor | None, str]:
    """The Actor for an OIDC user (claims of st.user). A first sign-in adds the user with the default
    role (none unless configured); the role then comes from the store, or from settings.auth_role_claim."""
    name = str(claims.get("email") or claims.get("sub") or "").strip()
    if not name:
        return None, "The identity provider sent neither an email nor a subject."
    default = settings.auth_default_role.value if settings.auth_default_role else None
    with session_scope(engine) as s:
        user = get_user(s, name=name)
        if user is None:
            user = add_user(s, name=name, role=default)
            record_sign_in(s, name=name)
        if user.disabled:
            return None, f"The account {name} is disabled: ask an admin."
        role = role_from_claim(claims.get(settings.auth_role_claim)) if settings.auth_role_claim \
            else parse_role(user.role)
        return Actor(name=name, role=role), ""


# --- user admin (admin only) ---------------------------------------------------------------

def users_view(engine: Engine, *, actor: Actor) -> pd.DataFrame:
    require(actor, Role.admin, "list users")
    now = datetime.now(UTC)
    with session_scope(engine) as s:
        rows = [{"name": u.name, "role": u.role or "(none)", "disabled": u.disabled,
                 "password": bool(u.password_hash), "locked": locked_until(u, now=now) is not None,
                 "last_sign_in": str(u.last_sign_in_at or "")[:19], "created": str(u.created_at)[:19]}
                for u in list_users(s)]
    import pandas as pd

    return pd.DataFrame(rows, columns=["name", "role", "disabled", "password", "locked", "last_sign_in", "created"])


def _check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise AccountError(f"Passwords need at least {MIN_PASSWORD_CHARS} characters.")
    return HASHER.hash(password)


def add_account(engine: Engine, *, actor: Actor, name: str, role: Role | None, password: str | None) -> str:
    """A new user; with a password for password mode, without one for an OIDC user granted a role ahead."""
    require(actor, Role.admin, "add users")
    name = name.strip()
    if not NAME_RE.match(name):
        raise AccountError("Names are 1-128 letters, digits or . _ @ + - (starting with a letter or digit).")
    hashed = _check_password(password) if password else None
    with session_scope(engine) as s:
        add_user(s, name=name, role=role.value if role else None, password_hash=hashed)
    return f"Added {name} ({role.value if role else 'no role'})."


def _not_yourself(actor: Actor, name: str, what: str) -> None:
    if name == actor.name:
        raise AccountError(f"You cannot {what} your own account: ask another admin.")


def change_role(engine: Engine, *, actor: Actor, name: str, role: Role | None) -> str:
    require(actor, Role.admin, "change roles")
    if role != Role.admin:
        _not_yourself(actor, name, "take the admin role from")
    with session_scope(engine) as s:
        set_role(s, name=name, role=role.value if role else None)
    return f"{name} is now {role.value if role else 'without a role'}."


def disable_account(engine: Engine, *, actor: Actor, name: str, disabled: bool = True) -> str:
    require(actor, Role.admin, "disable users")
    if disabled:
        _not_yourself(actor, name, "disable")
    with session_scope(engine) as s:
        set_disabled(s, name=name, disabled=disabled)
    return f"{name} is {'disabled' if disabled else 'enabled again'}."


def reset_password(engine: Engine, *, actor: Actor, name: str, password: str) -> str:
    """A new password; unlocks the account and ends that user's open sessions."""
    require(actor, Role.admin, "reset passwords")
    hashed = _check_password(password)
    with session_scope(engine) as s:
        set_password_hash(s, name=name, password_hash=hashed)
    return f"New password set for {name}; their open sessions end."


# --- the cookie secret ---------------------------------------------------------------------

def write_cookie_secret(path: Path, *, replace: bool = False) -> tuple[bool, str]:
    """Put a random [auth] cookie_secret into a secrets.toml (kept if one is there, unless `replace`).
    Returns (written, message). The file is readable by its owner only."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    current = tomllib.loads(text).get("auth", {}) if text else {}
    if current.get("cookie_secret") and not replace:
        return False, f"{path} already has a cookie secret (pass --replace to make a new one)."
    line = f'cookie_secret = "{secrets.token_hex(32)}"'
    lines = text.splitlines()
    if "cookie_secret" in current:
        lines = [line if re.match(r"\s*cookie_secret\s*=", x) else x for x in lines]
    elif any(x.strip() == "[auth]" for x in lines):
        at = next(i for i, x in enumerate(lines) if x.strip() == "[auth]")
        lines.insert(at + 1, line)
    else:
        lines = ["[auth]", line, *([""] + lines if lines else [])]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o600)
    return True, f"Wrote a new cookie secret to {path}."


__all__ = ["AccountError", "PermissionDenied", "SignIn", "StoreError", "add_account", "change_role",
           "disable_account", "is_loopback", "local_actor", "oidc_actor", "reset_password", "role_from_claim",
           "session_actor", "sign_in", "startup_problem", "users_view", "write_cookie_secret"]
