"""What a report says about the machine: the CPU's name, its fp32 vector width and the
versions of the libraries that produced the numbers. Read from the OS and package metadata,
never by importing the heavy libraries."""

from __future__ import annotations

import functools
import platform
from importlib import metadata
from pathlib import Path

# Distributions whose versions a report names (TVM only when installed).
VERSIONED = ("onnx", "onnxruntime", "torch", "apache-tvm")


@functools.cache
def cpu_name() -> str:
    """'AMD EPYC 9654 96-Core Processor' (/proc/cpuinfo), else what platform knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return " ".join(value.split())
    return platform.processor() or platform.machine() or "unknown CPU"


@functools.cache
def vector_isa() -> tuple[str, int]:
    """(widest SIMD extension, fp32 lanes): ('AVX-512', 16), ('AVX2', 8), ('NEON', 4), ...

    This is also ONNX Runtime's NCHWc block on x86 (16 with AVX-512F, 8 with AVX2): convs
    whose channel counts are not multiples of it fall off its blocked kernels."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as features
    for name, label, lanes in (
        ("AVX512F", "AVX-512", 16),
        ("AVX2", "AVX2", 8),
        ("ASIMD", "NEON", 4),
        ("NEON", "NEON", 4),
        ("SSE2", "SSE2", 4),
    ):
        if features.get(name):
            return label, lanes
    return "scalar", 1


def versions() -> dict[str, str | None]:
    """fuser's version and the installed versions of VERSIONED (None: not installed)."""
    from fuser._version import __version__

    found: dict[str, str | None] = {"fuser": __version__}
    for dist in VERSIONED:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found
