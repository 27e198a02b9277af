"""The import's writer processes (issue 16): a killed or interrupted import keeps whole batches, resumes
without duplicates and leaves no process behind; a failed batch stops the ones after it; batches written by
several processes commit in path order, on SQLite and PostgreSQL."""
from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlmodel import select

from db.engine import init_store, session_scope
from db.models import Image, Review
from pipeline.data.ingest import stop_between_batches
from pipeline.data.sources import ImportSource, import_images
from tests.conftest import both_backends
from tests.test_import_bulk import write_pngs

REPO = Path(__file__).resolve().parent.parent


def count_rows(db: Path) -> tuple[int, int]:
    try:
        with sqlite3.connect(db, timeout=30) as conn:
            return (conn.execute("SELECT count(*) FROM image").fetchone()[0],
                    conn.execute("SELECT count(*) FROM review").fetchone()[0])
    except sqlite3.OperationalError:  # not migrated yet
        return 0, 0


def import_command(root: Path, data: Path, *, workers: int) -> tuple[dict, list[str]]:
    """The environment and arguments of `python -m pipeline import --all` of `root` into the SQLite store
    in `data`, in batches of 50 by `workers` writer processes."""
    env = {**os.environ, "CAPSTUDIO_DATA_DIR": str(data), "PYTHONPATH": str(REPO)}
    env.pop("CAPSTUDIO_DATABASE_URL", None)
    return env, ["import", "--source", "folder", "--path", str(root), "--all", "--batch-size", "50",
                 "--workers", str(workers)]


def import_until_100_rows(root: Path, data: Path, *, workers: int, output) -> tuple[subprocess.Popen, dict, list]:
    """`python -m pipeline import` of `root` into `data`, started and left running once 100 images are stored
    (or it ended, or 600 s passed); returns the process, its environment and its command line."""
    env, args = import_command(root, data, workers=workers)
    cmd = [sys.executable, "-m", "pipeline", *args]
    stderr = subprocess.STDOUT if output == subprocess.PIPE else output
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=output, stderr=stderr)
    deadline = time.monotonic() + 600
    while count_rows(data / "studio.db")[0] < 100 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return proc, env, cmd


def test_a_killed_import_resumes_without_duplicates(tmp_path):
    n = 3000
    root, data = tmp_path / "src", tmp_path / "data"
    write_pngs(root, n)
    proc, env, cmd = import_until_100_rows(root, data, workers=0, output=subprocess.PIPE)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = count_rows(data / "studio.db")
    assert 100 <= before[0] < n and before[0] == before[1]  # killed mid-way, every committed batch whole

    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"added {n - before[0]}, already present {before[0]}, unreadable files skipped 0" in done.stdout
    with sqlite3.connect(data / "studio.db") as conn:
        keys = [k for (k,) in conn.execute("SELECT source_key FROM image")]
        hashes = {h for (h,) in conn.execute("SELECT content_hash FROM image")}
        reviews = conn.execute("SELECT count(DISTINCT image_id) FROM review").fetchone()[0]
    assert len(keys) == len(set(keys)) == len(hashes) == reviews == n
    assert set(keys) == {f"{root.resolve().as_posix()}/{p.parent.name}/{p.name}" for p in root.rglob("*.png")}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc: Linux")
def test_ctrl_c_stops_a_parallel_import_at_whole_batches_and_leaves_no_processes(tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group: the import and its writer processes) ends the
    import within seconds, with every committed batch whole and no writer left waiting for its turn;
    a re-run then adds the rest."""
    n = 3000
    root, data = tmp_path / "src", tmp_path / "data"
    write_pngs(root, n)
    env, args = import_command(root, data, workers=2)
    cmd = [sys.executable, "-m", "pipeline", *args]
    stderr = tmp_path / "stderr.txt"
    env["PYTHONFAULTHANDLER"] = "1"  # should it hang: SIGABRT prints where each of its threads waits
    with stderr.open("w") as err:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True,  # its own group, as a terminal's foreground job
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 600
    while count_rows(data / "studio.db")[0] < 100 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    writers = _children(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        assert _wait_or_dump(proc, stderr, timeout=60) != 0, "the import finished before Ctrl-C"
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in writers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(writers) >= 2 and not [p for p in writers if _alive(p)]
    finally:  # whatever the outcome, leave nothing running
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    images, reviews = count_rows(data / "studio.db")
    assert 100 <= images < n and images == reviews and images % 50 == 0  # whole batches of 50 only
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert f"added {n - images}, already present {images}, unreadable files skipped 0" in done.stdout


def _wait_or_dump(proc: subprocess.Popen, stderr: Path, *, timeout: float) -> int:
    """proc's exit status; if it is still running after `timeout` s, a failure that shows its threads'
    stacks (SIGABRT with PYTHONFAULTHANDLER set) and the end of what it printed."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        pytest.fail(f"still running {timeout} s after Ctrl-C:\n{stderr.read_text(errors='replace')[-6000:]}")


def test_the_first_ctrl_c_asks_the_import_to_stop_and_the_second_interrupts_at_once():
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):  # asked and never checked: still ends as interrupted
        with stop_between_batches() as stop:
            signal.raise_signal(signal.SIGINT)
            assert stop.requested  # the first only asks: nothing raised here
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)  # the second: at once
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back
    with stop_between_batches() as stop:
        pass
    assert not stop.requested

    seen = []  # in another thread (the app's) it cannot and does not touch the signal handler
    def in_a_thread():
        with stop_between_batches():
            seen.append(signal.getsignal(signal.SIGINT))
    worker = threading.Thread(target=in_a_thread)
    worker.start()
    worker.join()
    assert seen == [signal.default_int_handler]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc: Linux")
def test_ctrl_c_while_the_writers_are_forked_is_not_lost(tmp_path):
    """Ctrl-C landing while the import forks its writer processes (here: sent from inside the fork, by an
    at-fork hook) stops the import like any other: Python used to raise it inside logging's at-fork hook,
    print "Exception ignored" and go on importing to the end."""
    n = 1000
    root, data = tmp_path / "src", tmp_path / "data"
    write_pngs(root, n)
    launcher = tmp_path / "ctrl_c_at_fork.py"
    launcher.write_text(
        "import os, runpy, signal, sys\n"
        "sent = []\n"
        "def ctrl_c():  # once, in the importing process, as the first writer is forked\n"
        "    if not sent:\n"
        "        sent.append(os.kill(os.getpid(), signal.SIGINT))\n"
        "os.register_at_fork(after_in_parent=ctrl_c)\n"
        "sys.argv[0] = 'pipeline'\n"
        "runpy.run_module('pipeline', run_name='__main__')\n")
    env, args = import_command(root, data, workers=2)
    stopped = subprocess.run([sys.executable, str(launcher), *args], env=env, cwd=REPO, capture_output=True,
                             text=True, timeout=600)
    assert stopped.returncode != 0 and "Exception ignored" not in stopped.stderr, stopped.stdout + stopped.stderr
    assert "import stopped (Ctrl-C)" in stopped.stderr
    images, reviews = count_rows(data / "studio.db")
    assert images < n and images == reviews and images % 50 == 0
    done = subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert f"added {n - images}, already present {images}, unreadable files skipped 0" in done.stdout


def _children(pid: int) -> set[int]:
    """Live processes whose parent is `pid` (Linux /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="decoders follow their parent on Linux only")
def test_a_killed_import_leaves_no_decoder_processes(tmp_path):
    root, data = tmp_path / "src", tmp_path / "data"
    write_pngs(root, 1500)
    proc, _, _ = import_until_100_rows(root, data, workers=2, output=subprocess.DEVNULL)
    decoders = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(decoders) >= 2, "the import finished before it could be killed"
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in decoders) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p for p in decoders if _alive(p)]
    for p in left:  # do not leave them behind whatever the outcome
        os.kill(p, signal.SIGKILL)
    assert not left  # each decoder ended with the import that started it


def test_an_error_while_writing_a_batch_stops_the_import_and_keeps_the_batches_before(tmp_path, monkeypatch):
    """A failure while a batch is written is raised by the import (not lost in a worker), and the batches
    written before it stay in the store."""
    import pipeline.data.ingest as ingest

    engine = init_store(f"sqlite:///{tmp_path / 'store.db'}")
    real, calls = ingest.add_images, []

    def failing_third(session, **kw):
        calls.append(len(kw["images"]))
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real(session, **kw)

    monkeypatch.setattr(ingest, "add_images", failing_third)
    with pytest.raises(RuntimeError, match="disk full"):
        import_images(engine, source=ImportSource.bundled, n_per_class=None, workers=0, batch_size=7)
    with session_scope(engine) as s:
        assert len(s.exec(select(Image)).all()) == 14 == len(s.exec(select(Review)).all())


def test_parallel_writers_stop_at_a_failed_batch_and_keep_the_ones_before(tmp_path):
    """Two writer processes: the store refuses one file of the third batch (a trigger, so that the
    failure happens inside the worker process). The import raises the store's message; the two batches
    before it are stored whole, the failed one not at all, and after it at most the batch that had
    already queued on the write lock; no batch further on."""
    import sqlite3 as sqlite

    root = tmp_path / "src"
    write_pngs(root, 3000)  # cat: 00000, 00002, ...; batches of 300 per class: cat's third holds 01200.png
    engine = init_store(f"sqlite:///{tmp_path / 'store.db'}")
    with sqlite.connect(tmp_path / "store.db") as conn:
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON image WHEN NEW.source_key LIKE '%/cat/01200.png' "
                     "BEGIN SELECT RAISE(ABORT, 'disk full (test)'); END")
    with pytest.raises(Exception, match="disk full"):
        import_images(engine, source=ImportSource.folder, path=root, n_per_class=None, workers=2, batch_size=300)
    with session_scope(engine) as s:
        keys = sorted(s.exec(select(Image.source_key).order_by(Image.id)).all())
        reviews = len(s.exec(select(Review)).all())
    names = [k.rsplit("/", 2)[1] + "/" + k.rsplit("/", 1)[1] for k in keys]
    first_two = [f"cat/{i:05d}.png" for i in range(0, 1200, 2)]
    assert names[:600] == first_two and reviews == len(keys)
    assert names[600:] in ([], [f"cat/{i:05d}.png" for i in range(1800, 2400, 2)])  # the fourth batch, whole
    engine.dispose()


def test_parallel_writers_store_in_path_order(tmp_path):
    """Two writer processes decode batches side by side, but the batches commit in the order a single
    process writes them: the same ids, keys and hashes as an import in this process."""
    root = tmp_path / "src"
    write_pngs(root, 1200)
    rows = []
    for workers in (0, 2):
        engine = init_store(f"sqlite:///{tmp_path / f'store{workers}.db'}")
        summary = import_images(engine, source=ImportSource.folder, path=root, n_per_class=None, workers=workers,
                                batch_size=50)
        assert (summary.added, summary.existing, summary.corrupt) == (1200, 0, 0)
        with session_scope(engine) as s:
            rows.append(s.exec(select(Image.id, Image.source_key, Image.content_hash).order_by(Image.id)).all())
        engine.dispose()
    assert rows[0] == rows[1]
    assert [k for _, k, _ in rows[1]] == sorted(k for _, k, _ in rows[1])  # cat/00000 ... dog/01199


@both_backends
def test_parallel_writers_on_each_backend_store_every_file_once_in_path_order(store, tmp_path, backend):
    """Two writer processes open the store by its URL (PostgreSQL: with its password) and write their
    batches in path order: on SQLite the turn passes once the write lock is held, on PostgreSQL after the
    commit; the ids follow the paths either way."""
    root = tmp_path / "src"
    write_pngs(root, 600)
    summary = import_images(store, source=ImportSource.folder, path=root, n_per_class=None, workers=2, batch_size=40)
    assert (summary.added, summary.existing, summary.corrupt) == (600, 0, 0)
    with session_scope(store) as s:
        keys = list(s.exec(select(Image.source_key).order_by(Image.id)).all())
        reviews = len(s.exec(select(Review)).all())
    assert keys == sorted(keys) and len(set(keys)) == 600 == reviews
