"""People who may sign in: add, list, change role, disable, set a password hash, and the
failed-sign-in counter behind the lock-out. Hashing and role names are the caller's business
(pipeline/services/auth.py); this module stores what it is given.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlmodel import Session, select

from db.errors import StoreError
from db.models import User, utcnow


class UserExistsError(StoreError):
    """A user with that name is already in the store."""


class UnknownUserError(StoreError):
    """No user with that name."""


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; they were written in UTC."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def get_user(session: Session, *, name: str) -> User | None:
    return session.exec(select(User).where(User.name == name)).first()


def _user(session: Session, name: str) -> User:
    user = get_user(session, name=name)
    if user is None:
        raise UnknownUserError(f"No user called {name!r}.")
    return user


def add_user(session: Session, *, name: str, role: str | None, password_hash: str | None = None) -> User:
    """A new account; refused when the name is taken."""
    if get_user(session, name=name) is not None:
        raise UserExistsError(f"A user called {name!r} already exists.")
    user = User(name=name, role=role, password_hash=password_hash,
                password_changed_at=utcnow() if password_hash else None)
    session.add(user)
    session.flush()
    return user


def list_users(session: Session) -> list[User]:
    return list(session.exec(select(User).order_by(User.name)))


def set_role(session: Session, *, name: str, role: str | None) -> User:
    user = _user(session, name)
    user.role = role
    session.add(user)
    return user


def set_disabled(session: Session, *, name: str, disabled: bool) -> User:
    user = _user(session, name)
    user.disabled = disabled
    session.add(user)
    return user


def set_password_hash(session: Session, *, name: str, password_hash: str) -> User:
    """A new password: clears the lock-out, and (through password_changed_at) ends older sessions."""
    user = _user(session, name)
    user.password_hash = password_hash
    user.password_changed_at = utcnow()
    user.failed_sign_ins = 0
    user.locked_until = None
    session.add(user)
    return user


def locked_until(user: User, *, now: datetime | None = None) -> datetime | None:
    """When the lock-out ends, or None when the account is not locked now."""
    until = _aware(user.locked_until)
    return until if until is not None and until > (now or utcnow()) else None


def record_failed_sign_in(session: Session, *, name: str, max_failures: int, lock_for: timedelta) -> User | None:
    """Count a wrong password; the `max_failures`-th in a row locks the account for `lock_for`.
    Unknown names are not recorded (None): there is no row to lock."""
    user = get_user(session, name=name)
    if user is None:
        return None
    user.failed_sign_ins += 1
    if user.failed_sign_ins >= max_failures:
        user.locked_until = utcnow() + lock_for
        user.failed_sign_ins = 0
    session.add(user)
    return user


def record_sign_in(session: Session, *, name: str) -> User:
    user = _user(session, name)
    user.failed_sign_ins = 0
    user.locked_until = None
    user.last_sign_in_at = utcnow()
    session.add(user)
    return user


def password_changed_at(user: User) -> datetime | None:
    return _aware(user.password_changed_at)
