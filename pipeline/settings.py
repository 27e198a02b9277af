"""The one settings object (env prefix `CAPSTUDIO_`): where things live and which models to use.

Build it at an entry point (`Settings()`) and pass it down; nothing deeper reads the environment.
"""
from __future__ import annotations

import enum
from pathlib import Path

from db.config import StoreSettings

DEFAULT_TEACHER = "HuggingFaceTB/SmolVLM-256M-Instruct"
DEFAULT_STUDENT = "microsoft/Phi-3-mini-4k-instruct"


class JobBackend(str, enum.Enum):
    """Where background jobs run: child processes of this machine, or Ray (pipeline/jobs.py)."""

    local = "local"
    ray = "ray"


class Settings(StoreSettings):
    teacher_model: str = DEFAULT_TEACHER
    """Hub id or local folder of the SmolVLM teacher."""
    student_base_model: str = DEFAULT_STUDENT
    """Hub id or local folder of the Phi-3 base the student is trained on."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""
    batch_size: int = 8
    """Images per teacher generation batch."""
    target_per_class: int = 10
    """Approved pairs wanted per CIFAR-10 class."""
    guidelines_file: Path | None = None
    """Markdown file with the reviewing guidelines; a built-in text when unset."""
    job_backend: JobBackend = JobBackend.local
    """local: every job is a child process here; ray: captioning on Ray Data, compare/evaluate as Ray
    tasks, training under torchrun with `train_nproc` processes (needs requirements-ray.txt)."""
    ray_address: str | None = None
    """Ray cluster to join (auto, or HEAD:6379; see README); unset: a local Ray per job."""
    ray_workers: int = 2
    """Teacher workers of a Ray captioning job."""
    ray_gpus_per_worker: float = 0.0
    """GPUs per Ray teacher worker and per Ray compare/evaluate task."""
    train_nproc: int = 1
    """Data-parallel training processes (torchrun) of a train job under the ray backend."""

    @property
    def exports_dir(self) -> Path:
        return Path(self.data_dir) / "exports"

    @property
    def students_dir(self) -> Path:
        return Path(self.data_dir) / "students"

    @property
    def jobs_dir(self) -> Path:
        return Path(self.data_dir) / "jobs"

    @property
    def models_dir(self) -> Path:
        return Path(self.data_dir) / "models"

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
