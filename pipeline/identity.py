"""Who is acting, and what their role lets them do: the identity object every state-changing
service function takes, and the one check (`require`) that those functions call.

Roles are ordered: each one can do everything the roles below it can.
    viewer    Home, Browse, Lineage, Playground (read only)
    reviewer  + review decisions, undo of their own decisions, blind second reviews
    curator   + jobs, export, train, batch compare, send back to review, guidelines, adjudication
    admin     + users, deleting snapshots and students
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(str, enum.Enum):
    viewer = "viewer"
    reviewer = "reviewer"
    curator = "curator"
    admin = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


_RANK = {Role.viewer: 0, Role.reviewer: 1, Role.curator: 2, Role.admin: 3}


class AuthMode(str, enum.Enum):
    """How people sign in (setting `CAPSTUDIO_AUTH_MODE`)."""

    local = "local"  # one implicit admin named after the OS user; loopback address only
    password = "password"  # accounts in the store, argon2id hashes, sign-in form
    oidc = "oidc"  # Streamlit's st.login() against an OpenID Connect provider (.streamlit/secrets.toml)


class PermissionDenied(PermissionError):
    """The acting user's role does not allow this action; the message is meant for that user."""


@dataclass(frozen=True)
class Actor:
    """The signed-in user as the services see them. Built only by the sign-in layer (or a CLI entry
    point for the OS user), never from a name typed in a widget or read from the URL."""

    name: str
    role: Role | None  # None: signed in but not yet granted a role by an admin

    def can(self, needed: Role) -> bool:
        return self.role is not None and self.role.allows(needed)


def parse_role(value: str | None) -> Role | None:
    """The Role named `value` (as stored or typed), or None for no role."""
    return Role(value.strip().lower()) if value and value.strip() else None


def require(actor: Actor | None, needed: Role, action: str) -> Actor:
    """Return `actor` if their role allows `action` (a phrase such as "export a snapshot"), else raise."""
    if actor is None:
        raise PermissionDenied(f"Sign in to {action}.")
    if not actor.can(needed):
        have = actor.role.value if actor.role else "no role yet"
        raise PermissionDenied(f"{actor.name} ({have}) may not {action}: that needs the {needed.value} role.")
    return actor
