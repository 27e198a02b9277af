"""What this machine can do: the one CPU-capability probe and the one `resolve_device`.

The CPU's instruction sets are read once (the `flags` line of /proc/cpuinfo on Linux, else
PyTorch's own dispatch level) and decide the compute dtype (bf16 where the CPU multiplies it
natively), whether the native decode kernels (student/kernels.py) can run, and which inference
path the student takes (student/inference_path.py). `limit_cpu(caps, "AVX2")` is the same CPU with
the wider paths masked off (Settings.cpu_path, `bench/student.py --cpu-path`): how this machine
exercises the code an AVX2-only laptop runs.
"""
from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, replace
from functools import cache
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
AVX512 = frozenset({"avx512f", "avx512bw", "avx512vl"})  # what "AVX-512" means here (Skylake-X and later)
CPU_PATHS = ("baseline", "AVX2", "AVX-512", "AVX512-BF16", "AMX-BF16")  # narrowest first


@dataclass(frozen=True)
class CpuCapabilities:
    """The instruction sets that change which code path runs."""

    model: str
    machine: str  # platform.machine(): x86_64, aarch64, ...
    avx2: bool
    avx512: bool  # AVX512 F + BW + VL
    avx512_bf16: bool  # bf16 dot products (Cooper Lake, Zen 4 and later)
    amx_bf16: bool  # bf16 tile matmuls (Sapphire Rapids and later)

    @property
    def is_x86_64(self) -> bool:
        return self.machine.lower() in ("x86_64", "amd64")

    @property
    def has_bf16(self) -> bool:
        """Native bf16 matmuls: bf16 is then the faster compute dtype on this CPU."""
        return self.avx512_bf16 or self.amx_bf16

    @property
    def path(self) -> str:
        """The widest SIMD path the CPU offers, as the benches print it."""
        if self.amx_bf16:
            return "AMX-BF16"
        if self.avx512_bf16:
            return "AVX512-BF16"
        if self.avx512:
            return "AVX-512"
        return "AVX2" if self.avx2 else "baseline"


def parse_cpuinfo(text: str, *, machine: str = "x86_64") -> CpuCapabilities:
    """Capabilities from the text of /proc/cpuinfo (the first processor's model and flags)."""
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags" and not flags:
            flags = set(value.split())
        elif key == "model name" and not model:
            model = value.strip()
    return CpuCapabilities(model=model or platform.processor(), machine=machine, avx2="avx2" in flags,
                           avx512=AVX512 <= flags, avx512_bf16="avx512_bf16" in flags,
                           amx_bf16="amx_bf16" in flags)


def _from_torch() -> CpuCapabilities:
    """No /proc/cpuinfo (macOS, Windows): PyTorch's dispatch level and oneDNN's bf16 check."""
    import torch

    level = torch.backends.cpu.get_cpu_capability()  # "DEFAULT", "AVX2", "AVX512", "ZVECTOR", ...
    try:
        bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        bf16 = False
    avx512 = level == "AVX512"
    return CpuCapabilities(model=platform.processor(), machine=platform.machine(),
                           avx2=avx512 or level == "AVX2", avx512=avx512, avx512_bf16=avx512 and bf16,
                           amx_bf16=False)


@cache
def cpu() -> CpuCapabilities:
    """This machine's CPU, probed once per process."""
    try:
        return parse_cpuinfo(CPUINFO.read_text(), machine=platform.machine())
    except OSError:
        return _from_torch()


def limit_cpu(caps: CpuCapabilities, path: str | None) -> CpuCapabilities:
    """`caps` with every instruction set wider than `path` (one of CPU_PATHS, any case) masked off;
    None: `caps` unchanged. It only ever removes: "AMX-BF16" on an AVX2 CPU is still AVX2."""
    if path is None:
        return caps
    names = {p.lower(): i for i, p in enumerate(CPU_PATHS)}
    if path.lower() not in names:
        raise ValueError(f"unknown CPU path {path!r}; choose from {', '.join(CPU_PATHS)}")
    level = names[path.lower()]
    return replace(caps, avx2=caps.avx2 and level >= 1, avx512=caps.avx512 and level >= 2,
                   avx512_bf16=caps.avx512_bf16 and level >= 3, amx_bf16=caps.amx_bf16 and level >= 4)


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 matmuls (AVX512-BF16 or AMX)."""
    return cpu().has_bf16


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


@cache
def keep_freed_memory() -> bool:
    """Have glibc keep freed memory for the next allocation instead of handing it back to the system.

    A CPU forward pass frees and re-allocates the same large activations every layer (the teacher's
    vision tower: 25-100 MB each, a few hundred times a batch). glibc serves blocks that large with
    fresh mmaps and trims its heap when they are freed, so each one is faulted in again page by page:
    2.1-2.2 million page faults and 4.7-5.0 s of system time per 32 captioned images on a 2-core
    machine. With mmap off for large blocks and the trim threshold at 2 GiB, the freed blocks are
    reused once the heap has settled (aligned blocks take a few rounds): 100-200 faults and 0.2 s. The
    arithmetic, and so every caption, is unchanged. The price: the process keeps its peak heap until it
    exits (peak RSS +5% in that run), which is why long CPU jobs (captioning) call this and a server
    does not.

    Process-wide and lasting; returns whether it applied (glibc on Linux only)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def simd_flags() -> list[str]:
    """The CPU's vector-instruction flags as /proc/cpuinfo lists them (empty elsewhere)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return []
    line = next((x for x in text.splitlines() if x.partition(":")[0].strip() == "flags"), "")
    return sorted(f for f in line.partition(":")[2].split() if f.startswith(("avx", "amx", "fma", "f16c")))


def describe_cpu() -> dict:
    """The CPU and its code path, for benchmark output (with the load it ran under)."""
    import torch

    return {"cpu_path": cpu().path, **asdict(cpu()), "simd_flags": simd_flags(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "load_avg": [round(x, 2) for x in os.getloadavg()]}


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; any other value is returned as given."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
