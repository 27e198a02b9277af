"""Captioning on a real local Ray (2 teacher workers): the same drafts as the local engine, and a
driver killed midway then rerun leaves exactly one draft per image."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlmodel import select

from db.engine import init_store, session_scope
from db.models import Draft, Image
from pipeline.data.sources import ImportSource, import_images
from pipeline.generation import GenerationConfig
from pipeline.settings import Settings
from pipeline.teacher.drafting import CaptionRequest, run_captioning
from pipeline.teacher.model import load_teacher
from pipeline.tiny import build_tiny_teacher
from tests.conftest import REPO

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -r requirements-ray.txt")

ASSETS = REPO / "tests" / "assets" / "smolvlm_processor"
GREEDY = GenerationConfig(max_new_tokens=12)


@pytest.fixture(scope="module")
def local_ray():
    """One small local Ray for the module (start-up is the slow part)."""
    from pipeline.teacher.ray_engine import start_local_ray

    start_local_ray(ray, num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_teacher(tmp_path_factory.mktemp("tiny") / "teacher", processor_dir=ASSETS)


def _store(root, n_per_class: int):
    settings = Settings(data_dir=root, _env_file=None)
    engine = init_store(settings.resolved_database_url)
    import_images(engine, source=ImportSource.bundled, n_per_class=n_per_class)
    return settings, engine


def _drafts(engine) -> dict[str, list[tuple[str, dict]]]:
    """{image content hash: [(text, generation params)]} (ids differ between stores)."""
    with session_scope(engine) as s:
        rows = s.exec(select(Image.content_hash, Draft.text, Draft.generation_params, Draft.model_revision)
                      .join(Draft, Draft.image_id == Image.id).order_by(Draft.id)).all()
    out: dict[str, list] = {}
    for h, text, gen, rev in rows:
        out.setdefault(h, []).append((text, gen, rev))
    return out


@pytest.mark.timeout(1200)  # Ray actors each import torch and load a teacher: minutes on a loaded machine
def test_ray_drafts_equal_the_local_engines_image_for_image(local_ray, tiny_dir, tmp_path):
    from pipeline.teacher.ray_engine import RayOptions, run_captioning_ray

    request = CaptionRequest(params=GREEDY, batch_size=4)
    _, local_engine = _store(tmp_path / "local", 2)
    teacher = load_teacher(str(tiny_dir), device="cpu", dtype="float32")
    local = run_captioning(local_engine, teacher, request)
    _, ray_engine = _store(tmp_path / "ray", 2)
    seen = []
    summary = run_captioning_ray(ray_engine, request, model=str(tiny_dir), device="cpu", dtype="float32",
                                 options=RayOptions(workers=2), on_progress=lambda d, t: seen.append((d, t)))
    assert local.written == summary.written == summary.total == 20
    assert seen[0] == (0, 20) and seen[-1] == (20, 20)
    want, got = _drafts(local_engine), _drafts(ray_engine)
    assert set(got) == set(want) and all(len(v) == 1 for v in got.values())
    assert got == want  # same text, same provenance (model revision, greedy params, batch size)
    assert len({text for v in got.values() for text, _, _ in v}) > 1  # real, image-dependent drafts
    # a second run finds nothing to do
    again = run_captioning_ray(ray_engine, request, model=str(tiny_dir), device="cpu", dtype="float32",
                               options=RayOptions(workers=2))
    assert again.total == again.written == 0
    local_engine.dispose(), ray_engine.dispose()


def _count(engine) -> tuple[int, int]:
    with session_scope(engine) as s:
        n = s.exec(select(func.count()).select_from(Draft)).one()
        distinct = s.exec(select(func.count(Draft.image_id.distinct()))).one()
    return n, distinct


def _teacher_workers() -> list[int]:
    """Pids of this test's Ray teacher actors (children of the raylet this process started)."""
    mine = {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(int(p.name)) == os.getpid()}
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and _ppid(int(p.name)) in mine:
            try:
                if b"TeacherCaptioner" in (p / "cmdline").read_bytes():
                    pids.append(int(p.name))
            except OSError:
                continue
    return pids


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


@pytest.mark.timeout(1200)  # Ray actors each import torch and load a teacher: minutes on a loaded machine
def test_a_worker_killed_midway_leaves_one_draft_per_image(local_ray, tiny_dir, tmp_path):
    """SIGKILL one teacher actor once drafts are coming in: Ray restarts it and retries its batch,
    the run ends with every image drafted exactly once."""
    from pipeline.teacher.ray_engine import RayOptions, run_captioning_ray

    _, engine = _store(tmp_path / "store", 3)
    killed: list[int] = []

    def kill_one(done: int, total: int) -> None:
        if done and not killed and done < total:
            workers = _teacher_workers()
            assert workers, "no teacher actor process found"
            os.kill(workers[0], signal.SIGKILL)
            killed.append(done)

    summary = run_captioning_ray(engine, CaptionRequest(params=GenerationConfig(max_new_tokens=20), batch_size=2),
                                 model=str(tiny_dir), device="cpu", dtype="float32",
                                 options=RayOptions(workers=2), on_progress=kill_one)
    assert killed and killed[0] < 30
    assert summary.written == summary.total == 30
    assert _count(engine) == (30, 30)
    engine.dispose()


def test_the_default_engine_needs_no_ray():
    """`pipeline caption` (local engine) and the job module import without Ray."""
    code = ("import sys; sys.modules['ray'] = None\n"
            "import pipeline.cli, pipeline.jobs, pipeline.teacher.drafting\n"
            "from pipeline.teacher.ray_engine import import_ray\n"
            "try:\n    import_ray()\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert "TeacherError" in out.stdout and "pip install -r requirements-ray.txt" in out.stdout


@pytest.mark.timeout(1200)  # Ray actors each import torch and load a teacher: minutes on a loaded machine
def test_a_ray_backend_caption_job_reports_cancels_and_resumes(local_ray, tiny_dir, tmp_path):
    """CAPSTUDIO_JOB_BACKEND=ray: the app's caption job runs on Ray; its row gets the progress, a
    cancel stops the Ray work, and a second job finishes with one draft per image."""
    from db.jobs import get_job, request_cancel
    from db.models import JobKind, JobStatus
    from pipeline.jobs import job_command, start_job, wait_for_job
    from pipeline.settings import JobBackend

    settings = Settings(data_dir=tmp_path / "data", job_backend=JobBackend.ray, ray_address=local_ray,
                        ray_workers=2, teacher_model=str(tiny_dir), _env_file=None)
    assert job_command(settings, JobKind.caption, ["caption"])[:6] == ["-m", "pipeline", "caption", "--engine",
                                                                         "ray", "--workers"]
    assert job_command(settings, JobKind.compare, ["compare"]) == ["-m", "pipeline.remote", "compare"]
    assert job_command(settings.model_copy(update={"train_nproc": 4}), JobKind.train, ["train"])[-2:] == [
        "--nproc", "4"]
    assert job_command(Settings(_env_file=None), JobKind.caption, ["caption"]) == ["-m", "pipeline", "caption"]
    _, engine = _store(settings.data_dir, 3)
    argv = ["caption", "--teacher-model", str(tiny_dir), "--dtype", "float32", "--batch-size", "2",
            "--max-new-tokens", "40"]
    first = start_job(settings, kind=JobKind.caption, argv=argv, params={})
    deadline = time.monotonic() + 240
    while _count(engine)[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    with session_scope(engine) as s:
        request_cancel(s, job_id=first)
    job = wait_for_job(settings, first, timeout_s=240)
    assert job.status == JobStatus.cancelled, job.error
    stopped_at, _ = _count(engine)
    assert 0 < stopped_at < 30
    time.sleep(2)
    assert _count(engine)[0] == stopped_at  # nothing is written after the cancel
    second = wait_for_job(settings, start_job(settings, kind=JobKind.caption, argv=argv, params={}), timeout_s=300)
    assert second.status == JobStatus.done, second.error
    assert second.result["written"] == 30 - stopped_at and second.done == second.total == 30 - stopped_at
    with session_scope(engine) as s:
        assert "on Ray" in get_job(s, job_id=first).message
    assert _count(engine) == (30, 30)
    engine.dispose()
