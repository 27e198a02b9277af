"""Native CPU kernels for decoding, compiled on first use with torch.utils.cpp_extension.

`native()` returns the compiled extension, or None when this machine cannot build or run it:
not x86-64 with AVX512-BF16, no C++ compiler or ninja, or CAPSTUDIO_NATIVE_KERNELS=0.
- `nf4_gemv` (csrc/nf4_gemv.cpp): NF4 matrix-vector product, bit-identical to bitsandbytes'
  CPU kernel and faster; without it, decode.py calls bitsandbytes' kernel.
- `attend_one` (csrc/attention.cpp): float32 attention of one new token; without it,
  attention.py computes it with three batched torch ops.
The first build takes ~30 s and is cached by PyTorch (~/.cache/torch_extensions, or
TORCH_EXTENSIONS_DIR).
"""
from __future__ import annotations

import logging
import os
import platform
import shutil
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)
CSRC = Path(__file__).resolve().parent / "csrc"
CFLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-fopenmp"]


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def unavailable_reason() -> str | None:
    """Why the native kernel cannot be used here, or None if it can be built."""
    if os.environ.get("CAPSTUDIO_NATIVE_KERNELS", "1") == "0":
        return "disabled by CAPSTUDIO_NATIVE_KERNELS=0"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"{platform.machine()} is not x86-64"
    missing = {"avx512f", "avx512bw", "avx512vl", "avx512_bf16"} - _cpu_flags()
    if missing:
        return f"CPU lacks {', '.join(sorted(missing))}"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no C++ compiler (set CXX or install g++)"
    if _ninja_dir() is None:
        return "ninja is not installed (pip install ninja)"
    return None


def _ninja_dir() -> str | None:
    """Folder of a ninja binary: on PATH, or the pip package's (a venv that is not activated)."""
    found = shutil.which("ninja")
    if found:
        return str(Path(found).parent)
    try:
        import ninja
    except ImportError:
        return None
    return str(ninja.BIN_DIR)


SOURCES = ("nf4_gemv.cpp", "attention.cpp", "module.cpp")


@cache
def native():
    """The compiled extension (`.nf4_gemv(x, w, absmax, lut, blocksize)`,
    `.attend_one(q, k, v, scale)`) or None."""
    reason = unavailable_reason()
    if reason is None:
        try:
            from torch.utils.cpp_extension import load

            os.environ["PATH"] = _ninja_dir() + os.pathsep + os.environ.get("PATH", "")
            return load(name="capstudio_kernels", sources=[str(CSRC / f) for f in SOURCES],
                        extra_cflags=CFLAGS, extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as e:  # noqa: BLE001  (any build failure means: use the fallback)
            reason = f"build failed: {str(e).strip().splitlines()[-1] if str(e).strip() else e!r}"
    log.warning("native decode kernels not used (%s); using bitsandbytes' and torch's ops", reason)
    return None
