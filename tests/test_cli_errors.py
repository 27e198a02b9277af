"""A setting or a path the user can fix gets one line naming it and the fix, and exit code 2, never a
traceback (issue 12, item 10). Run through `python -m pipeline`, as a user does."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_cli(args: list[str], env_extra: dict[str, str], *, obey_permissions: bool = False
            ) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSTUDIO_")}
    env.update(env_extra)
    prefix: list[str] = []
    if obey_permissions and os.geteuid() == 0:  # root writes anywhere: run it without capabilities
        prefix = ["setpriv", "--bounding-set=-all", "--"]
    return subprocess.run([*prefix, sys.executable, "-m", "pipeline", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize("name,value,says", [
    ("CAPSTUDIO_BATCH_SIZE", "abc", "valid integer"),
    ("CAPSTUDIO_DATABASE_URL", "garbage", "not a database URL"),
    ("CAPSTUDIO_DEVICE", "tpu", "auto, cpu, cuda"),
])
def test_a_bad_setting_is_one_line_naming_it(tmp_path, name, value, says):
    line = one_line(run_cli(["status"], {"CAPSTUDIO_DATA_DIR": str(tmp_path / "data"), name: value}))
    assert f"{name}={value!r}" in line and says in line and f"unset {name}" in line
    assert not (tmp_path / "data" / "studio.db").exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0 and not shutil.which("setpriv"),
                    reason="running as root without setpriv: a read-only folder cannot be made")
def test_a_read_only_data_folder_is_one_line_naming_it():
    top = Path(tempfile.mkdtemp(prefix="capstudio-ro-"))
    try:
        top.chmod(0o755)
        data = top / "data"
        data.mkdir(mode=0o555)
        data.chmod(0o555)
        line = one_line(run_cli(["init"], {"CAPSTUDIO_DATA_DIR": str(data)}, obey_permissions=True))
        assert "CAPSTUDIO_DATA_DIR" in line and "writable" in line
        assert str(data / "studio.db") in line
        assert list(data.iterdir()) == []
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_train_on_a_missing_snapshot_is_one_line_naming_it(tmp_path):
    missing = tmp_path / "data" / "exports" / "snap-nope"
    line = one_line(run_cli(["train", "--snapshot", str(missing)], {"CAPSTUDIO_DATA_DIR": str(tmp_path / "data")}))
    assert str(missing) in line and "python -m pipeline export" in line
