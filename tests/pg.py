"""A real PostgreSQL server for the store-level tests, and a fresh database per test.

`bash scripts/test.sh` starts a throw-away server (scripts/postgres.sh) and exports its admin URL
as CAPSTUDIO_TEST_POSTGRES_URL. When that is unset (pytest run by hand) the session starts its own
server with the same script. When no server can be had, the PostgreSQL variants fail under CI
(the `CI` variable is set) and are skipped with the reason elsewhere.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

ADMIN_URL_ENV = "CAPSTUDIO_TEST_POSTGRES_URL"
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "postgres.sh"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def libpq_url(url: str) -> str:
    """The driver's own form of a SQLAlchemy URL (postgresql+psycopg://... -> postgresql://...)."""
    return "postgresql://" + url.split("://", 1)[1]


def with_database(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


class PostgresServer:
    """A server reached through its admin URL; creates and drops databases (with autocommit)."""

    def __init__(self, admin_url: str):
        self.admin_url = admin_url
        self._template: str | None = None

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(libpq_url(self.admin_url), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)

    def check(self) -> None:
        self._admin("SELECT 1")

    def create_database(self, *, template: str | None = None) -> str:
        """A new empty database (or a copy of `template`); returns its SQLAlchemy URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        self._admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return with_database(self.admin_url, name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def migrated_database(self) -> str:
        """A fresh database already at the newest schema (copied from a template migrated once)."""
        if self._template is None:
            from db.engine import init_store

            url = self.create_database()
            init_store(url).dispose()
            self._template = url.rsplit("/", 1)[1]
        return self.create_database(template=self._template)


def start_server(folder: Path) -> str:
    """Start a throw-away server in `folder` with scripts/postgres.sh; returns its admin URL."""
    env = dict(os.environ)
    if not in_ci():
        env["CAPSTUDIO_PG_NO_INSTALL"] = "1"  # a local pytest run does not apt-get install
    proc = subprocess.run(["bash", str(SCRIPT), "start", str(folder)], env=env, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"could not start PostgreSQL: {proc.stderr.strip()[-2000:]}")
    return proc.stdout.strip().splitlines()[-1]


def stop_server(folder: Path) -> None:
    subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def pg_server():
    """The PostgreSQL server of this test session (never silently skipped in CI)."""
    url = os.environ.get(ADMIN_URL_ENV)
    folder = None
    try:
        if not url:
            folder = Path(tempfile.mkdtemp(prefix="capstudio-pg-"))
            folder.chmod(0o755)  # the server runs as `postgres` when we are root
            url = start_server(folder / "pg")
        server = PostgresServer(url)
        server.check()
    except Exception as err:
        if folder is not None:
            stop_server(folder / "pg")
            shutil.rmtree(folder, ignore_errors=True)
        message = f"no PostgreSQL server for the PostgreSQL variants: {err}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    yield server
    if folder is not None:
        stop_server(folder / "pg")
        shutil.rmtree(folder, ignore_errors=True)
