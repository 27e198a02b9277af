"""The one settings object (env prefix `CAPSTUDIO_`): where things live and which models to use.

Build it at an entry point (`Settings()`) and pass it down; nothing deeper reads the environment.
"""
from __future__ import annotations

import enum
from pathlib import Path

from pydantic import field_validator

from db.config import StoreSettings
from db.qc import QcPolicy
from pipeline.hardware import resolve_device
from pipeline.identity import AuthMode, Role

DEFAULT_TEACHER = "HuggingFaceTB/SmolVLM-256M-Instruct"
DEFAULT_STUDENT = "microsoft/Phi-3-mini-4k-instruct"
TEACHER_BATCH_SIZE = 16
"""Teacher images per generation batch by default. 16 rather than 8: the same greedy captions (the
vision tower's output is bit-identical at batch 1, 8 and 16 and so were all 16 captions of the
full-size random SmolVLM-256M in bf16), and the text side (prefill + 60 decode steps) costs about
0.70 CPU s per image instead of 0.92-1.13 at 8 (one thread, AVX512-BF16, issue 16)."""


class JobBackend(str, enum.Enum):
    """Where background jobs run: child processes of this machine, or Ray (pipeline/jobs.py)."""

    local = "local"
    ray = "ray"


class ReviewCard(str, enum.Enum):
    """How the Review page shows the item in hand (curation_app/app_pages/review.py)."""

    browser = "browser"  # keys handled in the browser, the next items preloaded, decisions sent in order
    streamlit = "streamlit"  # Streamlit widgets: each key is a script run (in an st.fragment)


class Settings(StoreSettings):
    teacher_model: str = DEFAULT_TEACHER
    """Hub id or local folder of the SmolVLM teacher."""
    student_base_model: str = DEFAULT_STUDENT
    """Hub id or local folder of the Phi-3 base the student is trained on."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""
    batch_size: int = TEACHER_BATCH_SIZE
    """Images per teacher generation batch."""
    target_per_class: int = 10
    """Approved pairs wanted per CIFAR-10 class."""
    guidelines_file: Path | None = None
    """Markdown file with the reviewing guidelines; a built-in text when unset."""
    native_kernels: bool = True
    """Decode the student with the native CPU kernels (built by scripts/setup.sh, AVX512-BF16 CPUs only;
    checked against bitsandbytes when a decoder starts). False: bitsandbytes' and torch's ops."""
    cpu_path: str | None = None
    """Treat this CPU as offering at most this path (pipeline.hardware.CPU_PATHS, e.g. 'AVX2'): the
    student then picks the inference path such a CPU gets. For trying the AVX2 path on a wider CPU;
    unset: the CPU's own flags."""
    auth_mode: AuthMode = AuthMode.local
    """'local' (one implicit admin, loopback only), 'password' or 'oidc'."""
    auth_default_role: Role | None = None
    """Role given to a first-time OIDC user; unset: no role until an admin grants one."""
    auth_role_claim: str | None = None
    """OIDC claim (e.g. 'groups') whose values name the role; unset: the role stored for the user."""
    auth_session_hours: float = 12.0
    """A password sign-in lasts this long."""
    auth_max_failures: int = 5
    """Wrong passwords in a row before the account is locked."""
    auth_lockout_minutes: float = 15.0
    """How long a locked account stays locked."""
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
    job_heartbeat_s: float = 10.0
    """How often a running job's process stamps its heartbeat in the store."""
    job_stale_after_s: float = 60.0
    """A running job on another machine with no heartbeat for this long is shown as interrupted
    (on this machine a job is interrupted as soon as its process is gone)."""
    import_dir: Path | None = None
    """The only folder the app (Jobs page) imports images from; unset: <data_dir>/imports."""
    review_card: ReviewCard = ReviewCard.browser
    """'browser': the review card runs in the browser (instant next item, prefetched); 'streamlit': plain
    Streamlit widgets, one script run per key (slower, but every control is a native widget)."""
    review_prefetch: int = 16
    """Items the browser review card holds claimed and preloaded beyond the one shown (enough that a fast
    reviewer rarely waits for the server; they are claimed for CLAIM_TTL, so nobody else gets them meanwhile)."""
    qc_enabled: bool = False
    """Blind second review on (until a curator sets the policy on the Adjudicate page)."""
    qc_sample_fraction: float = 0.2
    """Share of decided items routed to a second reviewer when QC is on."""
    qc_route_edited: bool = True
    """When QC is on, also route every item whose first reviewer edited the draft."""

    @property
    def qc_default(self) -> QcPolicy:
        """The QC policy in force while no curator has set one in the store."""
        return QcPolicy(enabled=self.qc_enabled, sample_fraction=self.qc_sample_fraction,
                        route_edited=self.qc_route_edited)

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
    def backups_dir(self) -> Path:
        return Path(self.data_dir) / "backups"

    @property
    def import_root(self) -> Path:
        return Path(self.import_dir) if self.import_dir else Path(self.data_dir) / "imports"

    @property
    def models_dir(self) -> Path:
        return Path(self.data_dir) / "models"

    @field_validator("cpu_path")
    @classmethod
    def _a_cpu_path(cls, value: str | None) -> str | None:
        from pipeline.hardware import CPU_PATHS

        if value is not None and value.lower() not in {p.lower() for p in CPU_PATHS}:
            raise ValueError(f"cpu_path must be one of {', '.join(CPU_PATHS)}, not {value!r}")
        return value

    @field_validator("device")
    @classmethod
    def _a_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda", "mps") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("not a device; use auto, cpu, cuda (or cuda:N) or mps")

    @field_validator("review_prefetch")
    @classmethod
    def _a_prefetch(cls, value: int) -> int:
        if 0 <= value <= 100:
            return value
        raise ValueError("items preloaded by the review card: 0 to 100")

    def resolved_device(self) -> str:
        return resolve_device(self.device)
