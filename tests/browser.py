"""Shared parts of the real-browser tests: Chromium's path and flags, and `streamlit run` on a
free localhost port for as long as a test needs it."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.app_store import REPO

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Chromium at /usr/bin/chromium (apt-get install -y chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settle(page) -> None:
    """Wait until the app's script run has finished (its widgets and shortcuts are live)."""
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(timeout=30_000)


@contextmanager
def streamlit_server(*, env: dict[str, str], log_path: Path, args: tuple[str, ...] = (),
                     port: int | None = None) -> Iterator[str]:
    """Serve the studio with `streamlit run` and these CAPSTUDIO_* settings (plus streamlit `args`,
    e.g. `--secrets.files`); yields its URL."""
    port = port or free_port()
    full_env = {**os.environ, **env}
    if "CAPSTUDIO_DATABASE_URL" not in env:
        full_env.pop("CAPSTUDIO_DATABASE_URL", None)
    argv = [sys.executable, "-m", "streamlit", "run", "curation_app/streamlit_app.py", "--server.headless", "true",
            "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none", *args]
    url = f"http://127.0.0.1:{port}"
    with serve_until_ready(argv, ready_url=f"{url}/_stcore/health", ready=lambda body: body == b"ok",
                           log_path=log_path, env=full_env, what="streamlit"):
        yield url


@contextmanager
def serve_until_ready(argv: list[str], *, ready_url: str, ready: Callable[[bytes], bool], log_path: Path,
                      env: dict[str, str] | None = None, what: str = "the server") -> Iterator[subprocess.Popen]:
    """Start a local server process (from the repository root), wait until `ready_url` answers with a body
    that `ready` accepts (failing the test with its log if it exits or takes over 60 s), stop it after."""
    log = open(log_path, "wb")
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as r:
                    if ready(r.read()):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{what} did not start: " + log_path.read_text(errors="replace")[-2000:])
            time.sleep(0.3)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
