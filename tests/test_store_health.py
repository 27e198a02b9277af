"""A damaged store (issue 12, item 9): `db check` runs SQLite's integrity check and exits non-zero
with a clear message; `db backup` takes a checked copy with SQLite's online backup API; the app shows
one damage page (what is wrong, the last good backup, what to do) instead of pages that look fine."""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

from pipeline.data.sources import ImportSource, import_images
from pipeline.settings import Settings
from tests.app_store import app_for
from tests.conftest import REPO

GARBAGE = 32 * 1024


def cli(data_dir, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CAPSTUDIO_DATA_DIR": str(data_dir)}
    env.pop("CAPSTUDIO_DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def healthy(settings, engine):
    """A store with 50 bundled images (a few hundred KB: garbage in the middle hits table pages)."""
    import_images(engine, source=ImportSource.bundled, n_per_class=5)
    engine.dispose()
    return settings


def damage(db_file) -> None:
    """32 KB of garbage in the middle of the database file."""
    size = db_file.stat().st_size
    assert size > 4 * GARBAGE
    with open(db_file, "r+b") as f:
        f.seek(size // 2 // 4096 * 4096)
        f.write(os.urandom(GARBAGE))


def db_file(settings: Settings):
    return settings.data_dir / "studio.db"


def test_db_check_passes_a_healthy_store_and_backup_writes_a_checked_copy(healthy, tmp_path):
    ok = cli(healthy.data_dir, "db", "check")
    assert ok.returncode == 0 and "passed the integrity check" in ok.stdout, ok.stderr
    out = tmp_path / "b" / "copy.db"
    done = cli(healthy.data_dir, "db", "backup", "--to", str(out))
    assert done.returncode == 0 and str(out) in done.stdout, done.stderr
    with sqlite3.connect(out) as conn:
        assert conn.execute("SELECT count(*) FROM image").fetchone() == (50,)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    again = cli(healthy.data_dir, "db", "backup", "--to", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr
    default = cli(healthy.data_dir, "db", "backup")  # into <data_dir>/backups/
    assert default.returncode == 0 and len(list((healthy.data_dir / "backups").glob("studio-*.db"))) == 1


def test_db_check_fails_on_garbage_in_the_middle_of_a_copied_store(healthy, tmp_path):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    shutil.copy(db_file(healthy), damaged / "studio.db")
    damage(damaged / "studio.db")
    proc = cli(damaged, "db", "check")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "The store is damaged" in proc.stderr and str(damaged / "studio.db") in proc.stderr
    assert "What to do" in proc.stderr and "No good backup was found" in proc.stderr
    assert "Traceback" not in proc.stderr
    refused = cli(damaged, "db", "backup")
    assert refused.returncode == 2 and "Not backing up a damaged store" in refused.stderr


def test_the_app_shows_one_damage_page_with_the_last_good_backup(healthy, monkeypatch):
    assert cli(healthy.data_dir, "db", "backup").returncode == 0
    [backup] = (healthy.data_dir / "backups").glob("studio-*.db")
    at = app_for(healthy.data_dir, monkeypatch)  # a signed-in admin (the account is written now)
    damage(db_file(healthy))
    at.run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["The store is damaged"]
    assert "failed its integrity check" in at.error[0].value
    texts = [t.value for t in at.text]
    assert str(backup) in texts and any(f"cp {backup}" in t for t in texts)
    assert "integrity check" in at.code[0].value or "cannot read" in at.code[0].value
    assert not at.dataframe  # no page rendered as if all were well


def test_a_healthy_store_shows_no_damage_page(healthy, monkeypatch):
    at = app_for(healthy.data_dir, monkeypatch)
    at.run()
    assert not at.exception, at.exception
    assert "The store is damaged" not in [t.value for t in at.title]


def test_a_store_damaged_while_the_app_runs_shows_the_damage_page_on_the_failing_query(healthy, monkeypatch):
    at = app_for(healthy.data_dir, monkeypatch)
    at.run()  # the start-up check passed: Home renders (the images' pages are not read yet)
    assert not at.exception and "The store is damaged" not in [t.value for t in at.title]
    with open(db_file(healthy), "r+b") as f:  # every page after the header: nothing is readable any more
        f.seek(4096)
        f.write(os.urandom(db_file(healthy).stat().st_size - 4096))
    at.switch_page("app_pages/browse.py").run()
    assert [t.value for t in at.title] == ["The store is damaged"], [e.value for e in at.exception]
    assert not at.exception
