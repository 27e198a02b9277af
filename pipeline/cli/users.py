"""CLI for accounts and the cookie secret: `python -m pipeline users add|list|set-role|disable|enable|
reset-password|cookie-secret`. Whoever can run commands against the store acts as admin (the OS user).
"""
from __future__ import annotations

from pathlib import Path

import typer

from db.errors import StoreError
from pipeline.cli.store import open_store
from pipeline.identity import Role, parse_role
from pipeline.services import auth
from pipeline.settings import Settings

users = typer.Typer(help="Accounts for password/OIDC sign-in, and the cookie secret.", no_args_is_help=True)
ROLES = ", ".join(r.value for r in Role)


def _run(call, *args, **kwargs) -> None:
    engine = open_store(Settings())
    try:
        typer.echo(call(engine, *args, actor=auth.local_actor(), **kwargs))
    except (StoreError, auth.AccountError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    finally:
        engine.dispose()


def _role(value: str) -> Role | None:
    try:
        return parse_role(None if value == "none" else value)
    except ValueError as err:
        raise typer.BadParameter(f"one of {ROLES} or none") from err


def _password(password: str | None) -> str:
    return password if password is not None else typer.prompt("Password", hide_input=True,
                                                              confirmation_prompt=True)


@users.command("add")
def add(name: str = typer.Argument(..., help="Sign-in name (for OIDC users: their email)."),
        role: str = typer.Option("reviewer", help=f"{ROLES} or none."),
        password: str | None = typer.Option(None, help="Prompted when not given (better: not in the shell history)."),
        oidc: bool = typer.Option(False, "--oidc", help="An OIDC user: no password."),
        ) -> None:
    """Add an account."""
    _run(auth.add_account, name=name, role=_role(role), password=None if oidc else _password(password))


@users.command("list")
def list_() -> None:
    """Every account with its role and state."""
    engine = open_store(Settings())
    table = auth.users_view(engine, actor=auth.local_actor())
    engine.dispose()
    typer.echo(table.to_string(index=False) if not table.empty else "No users yet.")


@users.command("set-role")
def set_role(name: str, role: str = typer.Argument(..., help=f"{ROLES} or none.")) -> None:
    """Change an account's role."""
    _run(auth.change_role, name=name, role=_role(role))


@users.command("disable")
def disable(name: str) -> None:
    """Stop an account from signing in (its open sessions end at their next click)."""
    _run(auth.disable_account, name=name, disabled=True)


@users.command("enable")
def enable(name: str) -> None:
    """Let a disabled account sign in again."""
    _run(auth.disable_account, name=name, disabled=False)


@users.command("reset-password")
def reset_password(name: str, password: str | None = typer.Option(None, help="Prompted when not given.")) -> None:
    """Set a new password (also lifts a lock-out)."""
    _run(auth.reset_password, name=name, password=_password(password))


@users.command("cookie-secret")
def cookie_secret(secrets_file: Path = typer.Option(Path(".streamlit/secrets.toml"), help="secrets.toml to write."),
                  replace: bool = typer.Option(False, help="Replace an existing secret (signs everyone out).")) -> None:
    """Generate the [auth] cookie_secret that password and OIDC modes need."""
    _, message = auth.write_cookie_secret(secrets_file, replace=replace)
    typer.echo(message)
