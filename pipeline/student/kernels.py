"""Native CPU kernels for decoding: built by `scripts/setup.sh`, loaded (never built) at run time.

    python -m pipeline.student.kernels      # build them (what setup.sh runs); prints what happened

- `nf4_gemv` (csrc/nf4_gemv.cpp): NF4 matrix-vector product, bit-identical to bitsandbytes'
  CPU kernel and faster; without it, decode.py calls bitsandbytes' kernel.
- `attend_one` (csrc/attention.cpp): float32 attention of one new token; without it,
  attention.py computes it with three batched torch ops.
They need x86-64 with AVX512-BF16 (hardware.py). `load_kernels()` returns the built extension or
None (with one log line saying why: another CPU, not built, or a stale build), and a decoder
checks one NF4 product against bitsandbytes before it trusts the kernel (`checked_kernels`).
The switch is `Settings.native_kernels` (env CAPSTUDIO_NATIVE_KERNELS), passed to load_student.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch

from pipeline.hardware import CpuCapabilities, cpu, limit_cpu

log = logging.getLogger(__name__)
NAME = "capstudio_kernels"
CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = ("nf4_gemv.cpp", "attention.cpp", "module.cpp")
CFLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-fopenmp"]
ATTR = "capstudio_kernels"  # the attribute of a model's attention modules that holds its kernels


def cpu_reason(caps: CpuCapabilities | None = None) -> str | None:
    """Why this CPU (or `caps`, e.g. this CPU as Settings.cpu_path limits it) cannot run the kernels, or None."""
    c = cpu() if caps is None else caps
    if not c.is_x86_64:
        return f"{c.machine} is not x86-64"
    if not (c.avx512 and c.avx512_bf16):
        return f"this CPU's widest path is {c.path}; the kernels need AVX512-BF16"
    return None


def unavailable_reason() -> str | None:
    """Why the kernels cannot be loaded here (this CPU, or not built), or None if they can."""
    library = build_dir() / f"{NAME}.so"
    if cpu_reason() is None and not library.is_file():
        return f"not built for this checkout ({library} is missing): run scripts/setup.sh"
    return cpu_reason()


def build_dir() -> Path:
    """Where setup.sh builds them: one folder per (sources, flags, torch, Python), so a stale
    build is never loaded."""
    h = hashlib.sha256()
    for name in SOURCES:
        h.update((CSRC / name).read_bytes())
    h.update(" ".join([*CFLAGS, torch.__version__, sys.version]).encode())
    return CSRC / "build" / h.hexdigest()[:16]


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


def build() -> Path:
    """Compile the kernels into build_dir() (idempotent); raises RuntimeError saying why not."""
    reason = cpu_reason()
    if reason is None and shutil.which(os.environ.get("CXX", "c++")) is None:
        reason = "no C++ compiler (set CXX or install g++)"
    if reason is None and _ninja_dir() is None:
        reason = "ninja is not installed (pip install ninja)"
    if reason is not None:
        raise RuntimeError(reason)
    from torch.utils.cpp_extension import load

    os.environ["PATH"] = _ninja_dir() + os.pathsep + os.environ.get("PATH", "")
    out = build_dir()
    out.mkdir(parents=True, exist_ok=True)
    load(name=NAME, sources=[str(CSRC / f) for f in SOURCES], extra_cflags=CFLAGS, extra_ldflags=["-fopenmp"],
         build_directory=str(out), verbose=False)
    return out / f"{NAME}.so"


@cache
def load_kernels():
    """The extension built by setup.sh (`.nf4_gemv(x, w, absmax, lut, blocksize)`,
    `.attend_one(q, k, v, scale)`), or None with one log line saying why not."""
    reason = unavailable_reason()
    library = build_dir() / f"{NAME}.so"
    if reason is None:
        try:
            spec = importlib.util.spec_from_file_location(NAME, library)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
        except (ImportError, OSError) as e:
            reason = f"{library} does not load: {e}"
    log.warning("native decode kernels not used (%s); using bitsandbytes' and torch's ops", reason)
    return None


def attach_kernels(causal_lm, ext) -> None:  # a Phi-3 causal LM and the extension or None
    """Give every attention module of a Phi-3 model the kernels it may use (None: torch's ops);
    attention.py and the lean decoder read them from there, so both loops use the same ones."""
    for layer in causal_lm.model.layers:
        setattr(layer.self_attn, ATTR, ext)


def kernels_of(causal_lm):  # a Phi-3 causal LM; the extension or None
    return getattr(causal_lm.model.layers[0].self_attn, ATTR, None) if len(causal_lm.model.layers) else None


def nf4_lut(code: torch.Tensor) -> torch.Tensor:
    """The 16 NF4 codes as bf16 bits, twice (what nf4_gemv looks weights up in)."""
    return code.to(torch.bfloat16).view(torch.int16).repeat(2).contiguous()


def nf4_gemv_agrees(gemv: Callable, weight: torch.Tensor, qs) -> bool:  # a bnb QuantState
    """Whether `gemv(x, weight, absmax, lut, blocksize)` gives bitsandbytes' result, bit for bit,
    for one seeded bf16 row on this packed 4-bit weight (N, K/2)."""
    k = qs.shape[1]
    x = torch.randn(1, k, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    ref = torch.ops.bitsandbytes.gemv_4bit.default(x, weight, qs.shape, qs.absmax, qs.code, qs.blocksize)
    try:
        got = gemv(x, weight, qs.absmax, nf4_lut(qs.code), qs.blocksize)
    except RuntimeError as e:
        log.warning("native NF4 kernel failed on its check: %s", e)
        return False
    return got.shape == ref.shape and got.dtype == ref.dtype and torch.equal(got, ref)


def checked_kernels(causal_lm, ext):  # a Phi-3 causal LM; the extension or None
    """`ext` if its NF4 product equals bitsandbytes' on the model's first packed 4-bit layer (or
    the model has none), else None, with a log line."""
    if ext is None:
        return None
    for m in causal_lm.modules():
        qs = getattr(getattr(m, "weight", None), "quant_state", None)
        if qs is None or not getattr(qs, "packing_format_for_cpu", False):
            continue
        if nf4_gemv_agrees(ext.nf4_gemv, m.weight.data, qs):
            return ext
        log.warning("native NF4 kernel disagrees with bitsandbytes on %s; falling back to bitsandbytes' "
                    "and torch's ops", type(m).__name__)
        return None
    return ext


def main() -> int:
    """Build the kernels if Settings allow and this CPU can run them (setup.sh); 1 on a failure."""
    from pipeline.settings import Settings

    if not Settings().native_kernels:
        print("native kernels: off (CAPSTUDIO_NATIVE_KERNELS=0)")
        return 0
    reason = cpu_reason(limit_cpu(cpu(), Settings().cpu_path))  # CAPSTUDIO_CPU_PATH=AVX2: an AVX2 CPU's setup
    if reason is not None:
        print(f"native kernels: not built ({reason}); decoding uses bitsandbytes' and torch's ops")
        return 0
    try:
        print(f"native kernels: built {build()}")
    except Exception as e:  # any build failure: report it, the code falls back
        last = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
        print(f"warning: native kernels not built ({last}); decoding uses bitsandbytes' and torch's ops",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
