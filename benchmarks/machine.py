"""What a results file records about the machine it was measured on (benchmarks and examples).

Speed ratios depend on the CPU: its model, the vector instructions the compiled solve and
torch's kernels can use (AVX2 with FMA, AVX-512), the number of threads and how busy the machine
was. Every results JSON in ``benchmarks/results`` carries :func:`machine_info` under "machine".
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

# The x86-64 instruction-set extensions that decide which kernels run (torch's and ours).
VECTOR_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
)


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name (``/proc/cpuinfo``'s "model name"; elsewhere ``platform``'s).

    Args:
      cpuinfo: text of ``/proc/cpuinfo`` (None: read it where it exists)
    """
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def instruction_set(cpuinfo: str | None = None) -> list[str]:
    """The vector extensions of :data:`VECTOR_FLAGS` the CPU reports (``/proc/cpuinfo`` flags).

    Args:
      cpuinfo: text of ``/proc/cpuinfo`` (None: read it where it exists)

    Returns:
      the extensions present, in the order of :data:`VECTOR_FLAGS` (empty where unknown)
    """
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            present = set(value.split())
            return [flag for flag in VECTOR_FLAGS if flag in present]
    return []


def machine_info() -> dict:
    """The machine a measurement ran on, for the "machine" entry of a results JSON.

    Returns:
      dict with ``cpu_model``, ``instruction_set`` (list of extensions),
      ``torch_cpu_capability`` (the kernels torch dispatches to, e.g. "AVX512"), ``logical_cpus``,
      ``platform``, ``python``, ``torch`` and ``torch_threads``
    """
    return {
        "cpu_model": cpu_model(),
        "instruction_set": instruction_set(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def _read_cpuinfo() -> str:
    path = Path("/proc/cpuinfo")
    return path.read_text() if path.is_file() else ""
