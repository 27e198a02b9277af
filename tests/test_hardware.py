"""The one CPU probe (pipeline/hardware.py) and what it decides: the native kernels' availability
and their build step (what scripts/setup.sh runs)."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline.student.kernels as kernels
from pipeline.hardware import cpu, describe_cpu, parse_cpuinfo, resolve_device

REPO = Path(__file__).resolve().parent.parent
BASE_FLAGS = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma"
ZEN4 = f"""processor\t: 0
model name\t: AMD EPYC 9R14
flags\t\t: {BASE_FLAGS} avx2 avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni

processor\t: 1
model name\t: AMD EPYC 9R14
flags\t\t: {BASE_FLAGS} avx2 avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni
"""
ZEN3 = f"model name\t: AMD EPYC 7B13\nflags\t\t: {BASE_FLAGS} avx2 bmi2\n"
SKYLAKE = f"model name\t: Intel Xeon Platinum 8175M\nflags\t\t: {BASE_FLAGS} avx2 avx512f avx512bw avx512vl\n"


def test_cpuinfo_flags_decide_the_cpu_path():
    zen4, zen3, skx = parse_cpuinfo(ZEN4), parse_cpuinfo(ZEN3), parse_cpuinfo(SKYLAKE)
    assert (zen4.model, zen4.path, zen4.has_bf16) == ("AMD EPYC 9R14", "AVX512-BF16", True)
    assert (zen3.path, zen3.avx512, zen3.has_bf16) == ("AVX2", False, False)
    assert (skx.path, skx.avx512, skx.avx512_bf16) == ("AVX-512", True, False)
    amx = parse_cpuinfo(SKYLAKE.replace("avx512vl", "avx512vl avx512_bf16 amx_bf16 amx_tile"))
    assert amx.path == "AMX-BF16" and amx.has_bf16
    assert not parse_cpuinfo(ZEN4, machine="aarch64").is_x86_64


def test_this_machine_is_described_for_benches():
    row = describe_cpu()
    assert row["cpu_path"] == cpu().path and row["cores"] == os.cpu_count() and len(row["load_avg"]) == 3
    assert row["avx512_bf16"] == cpu().avx512_bf16


def test_resolve_device():
    import torch

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"


def test_kernels_need_avx512_bf16_on_x86_64(monkeypatch):
    for text, machine, ok in ((ZEN4, "x86_64", True), (ZEN3, "x86_64", False), (SKYLAKE, "x86_64", False),
                              (ZEN4, "aarch64", False)):
        monkeypatch.setattr(kernels, "cpu", lambda t=text, m=machine: parse_cpuinfo(t, machine=m))
        assert (kernels.cpu_reason() is None) is ok, (text, machine)


def test_an_unbuilt_kernel_is_a_logged_fallback_not_a_build(monkeypatch, tmp_path, caplog):
    """On a capable CPU with no build, nothing compiles at run time: None, and a log line that
    says to run scripts/setup.sh."""
    monkeypatch.setattr(kernels, "cpu", lambda: parse_cpuinfo(ZEN4))
    monkeypatch.setattr(kernels, "build_dir", lambda: tmp_path / "never-built")
    assert "run scripts/setup.sh" in kernels.unavailable_reason()
    with caplog.at_level(logging.WARNING, logger="pipeline.student.kernels"):
        assert kernels.load_kernels.__wrapped__() is None
    assert "not used" in caplog.text and "scripts/setup.sh" in caplog.text
    assert not (tmp_path / "never-built").exists()


@pytest.mark.parametrize("switch", ["1", "0"])
def test_setup_build_step_never_fails_setup_where_kernels_cannot_run(switch):
    """`python -m pipeline.student.kernels` (scripts/setup.sh): off by the Settings switch, or
    'not built' with the reason on a CPU without AVX512-BF16 (here: this CPU limited to AVX2 by
    CAPSTUDIO_CPU_PATH, as on any CPU); either way setup goes on."""
    from pipeline.hardware import limit_cpu

    env = {**os.environ, "CAPSTUDIO_NATIVE_KERNELS": switch, "CAPSTUDIO_CPU_PATH": "AVX2"}
    proc = subprocess.run([sys.executable, "-m", "pipeline.student.kernels"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reason = kernels.cpu_reason(limit_cpu(cpu(), "AVX2"))
    expected = "native kernels: off" if switch == "0" else f"native kernels: not built ({reason})"
    assert expected in proc.stdout


def test_a_cpu_can_be_limited_to_a_narrower_path_never_widened():
    """limit_cpu (Settings.cpu_path, bench --cpu-path): how this machine runs an AVX2 laptop's path."""
    from pipeline.hardware import limit_cpu

    zen4, zen3 = parse_cpuinfo(ZEN4), parse_cpuinfo(ZEN3)
    as_avx2 = limit_cpu(zen4, "avx2")
    assert (as_avx2.path, as_avx2.avx2, as_avx2.avx512, as_avx2.has_bf16) == ("AVX2", True, False, False)
    assert limit_cpu(zen4, "AVX-512").path == "AVX-512" and limit_cpu(zen4, None) == zen4
    assert limit_cpu(zen4, "AMX-BF16") == zen4 and limit_cpu(zen3, "AVX512-BF16") == zen3
    assert as_avx2.model == zen4.model
    with pytest.raises(ValueError, match="unknown CPU path"):
        limit_cpu(zen4, "avx3")


def test_settings_take_a_cpu_path_limit_from_the_environment(monkeypatch):
    from pydantic import ValidationError

    from pipeline.settings import Settings

    monkeypatch.setenv("CAPSTUDIO_CPU_PATH", "AVX2")
    assert Settings().cpu_path == "AVX2"
    monkeypatch.setenv("CAPSTUDIO_CPU_PATH", "sse9")
    with pytest.raises(ValidationError, match="cpu_path"):
        Settings()


FAULTS = """
import resource, sys, torch
from pipeline.hardware import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
for _ in range(12):  # 100 MB: the first blocks fault in either case (glibc's aligned blocks settle in ~8)
    x = torch.ones(25_000_000); del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):  # what a forward pass does per layer: allocate, write, free the same size
    x = torch.ones(25_000_000); del x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt is Linux-only")
def test_keeping_freed_memory_spares_the_page_faults_of_reallocating_a_large_block():
    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True,
                             cwd=REPO, timeout=120, check=True)
        return int(out.stdout.split()[-1])

    plain, kept = faults("plain"), faults("keep")
    assert plain > 100_000  # ~25,000 4-KiB pages per 100-MB block, faulted in again each time
    assert kept < 2_000, (plain, kept)  # the freed block is reused
