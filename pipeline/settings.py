"""The one settings object (env prefix `CAPSTUDIO_`): where things live and which models to use.

Build it at an entry point (`Settings()`) and pass it down; nothing deeper reads the environment.
"""
from __future__ import annotations

from pathlib import Path

from db.config import StoreSettings
from pipeline.hardware import resolve_device

DEFAULT_TEACHER = "HuggingFaceTB/SmolVLM-256M-Instruct"
DEFAULT_STUDENT = "microsoft/Phi-3-mini-4k-instruct"


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
    native_kernels: bool = True
    """Decode the student with the native CPU kernels (built by scripts/setup.sh, AVX512-BF16 CPUs only;
    checked against bitsandbytes when a decoder starts). False: bitsandbytes' and torch's ops."""

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
        return resolve_device(self.device)
