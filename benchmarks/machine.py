"""What the benchmark ran on: CPU model, cores, vector-instruction flags, memory, OS, git commit."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Flags worth naming in the report: the vector extensions BLAS and compilers pick kernels by.
INTERESTING_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl",
                     "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def cpuinfo(text=None) -> dict:
    """Model name, vendor, family/model, and the flags of the first processor in ``/proc/cpuinfo``."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return {"model": platform.processor() or "unknown", "flags": []}
    fields = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return {"model": fields.get("model name", "unknown"), "vendor": fields.get("vendor_id", "unknown"),
            "family": fields.get("cpu family"), "model_number": fields.get("model"),
            "flags": fields.get("flags", "").split()}


def amd_core_family(vendor, family, flags) -> str:
    """A hypervisor often hides the model name ("AMD EPYC"); AMD's CPU family still tells the core.

    Family 17h is Zen 1/Zen 2, 19h Zen 3 or Zen 4 (only Zen 4 has AVX-512), 1Ah Zen 5.
    Empty for other vendors and families.
    """
    if vendor != "AuthenticAMD" or family is None:
        return ""
    family = int(family)
    if family == 0x17:
        return "Zen 1/Zen 2 (family 17h)"
    if family == 0x19:
        return ("Zen 4" if "avx512f" in flags else "Zen 3") + " (family 19h)"
    if family == 0x1A:
        return "Zen 5 (family 1Ah)"
    return ""


def _meminfo_gib():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2 ** 20, 1)
    except OSError:
        pass
    return None


def _git(*args):
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_name(described) -> str | None:
    """``"AMD EPYC, Zen 5 (family 1Ah), family/model 26/2"`` from ``describe()``'s dict; None without
    a CPU model in it (a run's raw results from before it was recorded)."""
    if not described or not described.get("cpu_model"):
        return None
    core = f", {described['cpu_core']}" if described.get("cpu_core") else ""
    return f"{described['cpu_model']}{core}, family/model {described.get('cpu_family_model')}"


def describe() -> dict:
    """A JSON-ready description of the machine and the checkout being measured."""
    cpu = cpuinfo()
    commit = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {"cpu_model": cpu["model"], "cpu_vendor": cpu.get("vendor"),
            "cpu_family_model": f"{cpu.get('family')}/{cpu.get('model_number')}",
            "cpu_core": amd_core_family(cpu.get("vendor"), cpu.get("family"), cpu["flags"]),
            "logical_cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "flags": [f for f in INTERESTING_FLAGS if f in cpu["flags"]], "all_flags": cpu["flags"],
            "memory_gib": _meminfo_gib(), "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "hypervisor": "hypervisor" in cpu["flags"],
            "git_commit": (commit + ("+uncommitted changes" if dirty else "")) or "unknown",
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "niceness": os.nice(0)}
