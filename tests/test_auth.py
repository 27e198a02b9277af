"""Sign-in on a real store: argon2id hashes, wrong passwords, lock-out, session expiry and the
end of sessions on a new password or a disabled account; OIDC users and their roles; the startup
checks (local mode only on loopback, the cookie secret); `python -m pipeline users`."""
from __future__ import annotations

import tomllib
from datetime import UTC, datetime, timedelta

from db.engine import session_scope
from db.users import add_user, get_user
from pipeline.identity import Actor, AuthMode, Role
from pipeline.services import auth
from pipeline.settings import Settings

PASSWORD = "correct horse battery staple"


def _account(engine, name="ann", role=Role.reviewer, password=PASSWORD) -> None:
    with session_scope(engine) as s:
        add_user(s, name=name, role=role.value if role else None, password_hash=auth.HASHER.hash(password))


def test_passwords_are_stored_as_argon2id_hashes_and_checked(settings, engine):
    _account(engine)
    with session_scope(engine) as s:
        stored = get_user(s, name="ann").password_hash
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert not auth.sign_in(settings, engine, name="ann", password="wrong password").ok
    assert auth.sign_in(settings, engine, name="nobody", password=PASSWORD).message == "Wrong name or password."
    ok = auth.sign_in(settings, engine, name="ann", password=PASSWORD)
    assert ok.ok and ok.name == "ann"
    actor, _ = auth.session_actor(settings, engine, name="ann", signed_in_at=ok.signed_in_at)
    assert actor == Actor("ann", Role.reviewer)


def test_repeated_wrong_passwords_lock_the_account(tmp_path, engine):
    settings = Settings(data_dir=tmp_path / "data", auth_max_failures=3, auth_lockout_minutes=10, _env_file=None)
    _account(engine)
    results = [auth.sign_in(settings, engine, name="ann", password=f"guess {i}") for i in range(3)]
    assert [r.message for r in results[:2]] == ["Wrong name or password."] * 2
    assert "locked for 10 minutes" in results[2].message
    right = auth.sign_in(settings, engine, name="ann", password=PASSWORD)  # even the right one, while locked
    assert not right.ok and "locked until" in right.message
    auth.reset_password(engine, actor=Actor("root", Role.admin), name="ann", password="a brand new password")
    assert auth.sign_in(settings, engine, name="ann", password="a brand new password").ok


def test_sessions_expire_and_end_on_disable_or_new_password(tmp_path, engine):
    settings = Settings(data_dir=tmp_path / "data", auth_session_hours=1, _env_file=None)
    _account(engine)
    admin = Actor("root", Role.admin)
    old = (datetime.now(UTC) - timedelta(hours=1, minutes=1)).timestamp()
    assert auth.session_actor(settings, engine, name="ann", signed_in_at=old) == (
        None, "Your session expired: sign in again.")
    now = auth.sign_in(settings, engine, name="ann", password=PASSWORD).signed_in_at
    auth.change_role(engine, actor=admin, name="ann", role=Role.curator)  # applies at the next click
    assert auth.session_actor(settings, engine, name="ann", signed_in_at=now)[0] == Actor("ann", Role.curator)
    auth.reset_password(engine, actor=admin, name="ann", password="another long password")
    assert auth.session_actor(settings, engine, name="ann", signed_in_at=now)[0] is None
    now = auth.sign_in(settings, engine, name="ann", password="another long password").signed_in_at
    auth.disable_account(engine, actor=admin, name="ann")
    assert auth.session_actor(settings, engine, name="ann", signed_in_at=now)[0] is None
    assert "disabled" in auth.sign_in(settings, engine, name="ann", password="another long password").message


def test_admins_cannot_lock_themselves_out_and_weak_input_is_refused(engine):
    admin = Actor("root", Role.admin)
    for call in (lambda: auth.disable_account(engine, actor=admin, name="root"),
                 lambda: auth.change_role(engine, actor=admin, name="root", role=Role.viewer),
                 lambda: auth.add_account(engine, actor=admin, name="bob", role=Role.viewer, password="short"),
                 lambda: auth.add_account(engine, actor=admin, name="<b>x</b>", role=None, password=None)):
        try:
            call()
        except auth.AccountError:
            continue
        raise AssertionError("not refused")
    assert auth.users_view(engine, actor=admin).empty


def test_oidc_users_get_the_default_role_the_stored_role_or_the_claimed_one(tmp_path, engine):
    plain = Settings(data_dir=tmp_path / "d", _env_file=None)
    assert auth.oidc_actor(plain, engine, claims={"sub": "u1", "email": "new@example.org"})[0] == \
        Actor("new@example.org", None)  # known now, but no role until an admin grants one
    auth.change_role(engine, actor=Actor("root", Role.admin), name="new@example.org", role=Role.reviewer)
    assert auth.oidc_actor(plain, engine, claims={"email": "new@example.org"})[0].role == Role.reviewer
    default = Settings(data_dir=tmp_path / "d", auth_default_role="viewer", _env_file=None)
    assert auth.oidc_actor(default, engine, claims={"sub": "u2"})[0] == Actor("u2", Role.viewer)
    claimed = Settings(data_dir=tmp_path / "d", auth_role_claim="groups", _env_file=None)
    groups = {"email": "olga@example.org", "groups": ["staff", "curator", "reviewer"]}
    assert auth.oidc_actor(claimed, engine, claims=groups)[0] == Actor("olga@example.org", Role.curator)
    assert auth.oidc_actor(claimed, engine, claims={"email": "x@example.org", "groups": ["staff"]})[0].role is None
    auth.disable_account(engine, actor=Actor("root", Role.admin), name="olga@example.org")
    assert auth.oidc_actor(claimed, engine, claims=groups)[0] is None


def test_local_mode_is_refused_off_loopback_and_sign_in_modes_need_a_cookie_secret(tmp_path):
    local = Settings(data_dir=tmp_path, _env_file=None)
    assert local.auth_mode == AuthMode.local  # nothing configured
    for address in ("127.0.0.1", "localhost", "::1", "127.0.1.1"):
        assert auth.startup_problem(local, address=address, auth_secrets={}) is None
    for address in ("0.0.0.0", "192.168.1.20", "", None, "::"):
        problem = auth.startup_problem(local, address=address, auth_secrets={})
        assert "CAPSTUDIO_AUTH_MODE=password" in problem and "CAPSTUDIO_AUTH_MODE=oidc" in problem
    password = Settings(data_dir=tmp_path, auth_mode="password", _env_file=None)
    assert "users cookie-secret" in auth.startup_problem(password, address="0.0.0.0", auth_secrets={})
    assert auth.startup_problem(password, address="0.0.0.0", auth_secrets={"cookie_secret": "x" * 64}) is None
    oidc = Settings(data_dir=tmp_path, auth_mode="oidc", _env_file=None)
    assert "redirect_uri" in auth.startup_problem(oidc, address="0.0.0.0", auth_secrets={"cookie_secret": "x" * 64})


def test_the_cookie_secret_command_writes_a_secret_and_keeps_the_rest(tmp_path):
    secrets = tmp_path / ".streamlit" / "secrets.toml"
    secrets.parent.mkdir()
    secrets.write_text('[auth]\nredirect_uri = "http://h/oauth2callback"\n\n[auth.corp]\nclient_id = "c"\n')
    assert auth.write_cookie_secret(secrets)[0]
    first = tomllib.loads(secrets.read_text())["auth"]
    assert len(first["cookie_secret"]) == 64 and first["corp"] == {"client_id": "c"}
    assert not auth.write_cookie_secret(secrets)[0]  # kept
    assert auth.write_cookie_secret(secrets, replace=True)[0]
    assert tomllib.loads(secrets.read_text())["auth"]["cookie_secret"] != first["cookie_secret"]
    assert secrets.stat().st_mode & 0o077 == 0


def test_users_cli(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pipeline.cli import app

    monkeypatch.setenv("CAPSTUDIO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CAPSTUDIO_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env of the repository; the secrets file lands here

    def cli(*args: str):
        return CliRunner().invoke(app, ["users", *args])

    assert cli("add", "ann", "--role", "reviewer", "--password", PASSWORD).exit_code == 0
    assert cli("add", "olga@example.org", "--oidc", "--role", "none").exit_code == 0
    assert cli("add", "ann", "--password", PASSWORD).exit_code == 1  # taken
    assert cli("set-role", "olga@example.org", "curator").exit_code == 0
    assert cli("disable", "ann").exit_code == 0
    assert cli("reset-password", "ann", "--password", "tiny").exit_code == 1
    assert cli("reset-password", "ann", "--password", "long enough now").exit_code == 0
    listing = cli("list").output.splitlines()
    assert listing[1].split()[:5] == ["ann", "reviewer", "True", "True", "False"]
    assert listing[2].split()[:4] == ["olga@example.org", "curator", "False", "False"]
    assert "Wrote a new cookie secret" in cli("cookie-secret").output
    assert "cookie_secret" in (tmp_path / ".streamlit" / "secrets.toml").read_text()
