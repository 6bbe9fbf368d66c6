"""What this x86 CPU can run, as the OS reports it, in LLVM's feature names.

LLVM's CPU *name* for a machine (``znver4``) implies a fixed feature list, but a
hypervisor may hide some of those features (an AMD EPYC VM without AVX-512 is still
``znver4`` to LLVM): code built for the name then dies with SIGILL. So:

- ``host_features()``: the instruction sets present here. A feature counts when the
  kernel lists its flag in ``/proc/cpuinfo`` and numpy's runtime dispatch
  (``__cpu_features__``, which also checks that the OS saves the registers, XCR0)
  does not deny it. Without /proc/cpuinfo, numpy's word alone counts.
- ``ISA_FLAGS``: every instruction-set feature LLVM knows for x86, with its cpuinfo
  flag. Features not in it are tuning hints (``fast-*``, ``slow-*``, ``macrofusion``),
  which never change which instructions may appear.
- ``portable_cpu(features)``: the newest generic level (x86-64-v4/v3/v2, x86-64)
  whose instruction sets are all in ``features``.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Iterable
from pathlib import Path

from fuser.ir import FuserError

from .common import require_tvm, tvm

# LLVM feature -> /proc/cpuinfo flag (Linux arch/x86/include/asm/cpufeatures.h names).
ISA_FLAGS = {
    "x87": "fpu",
    "cmov": "cmov",
    "cx8": "cx8",
    "cx16": "cx16",
    "mmx": "mmx",
    "fxsr": "fxsr",
    "sahf": "lahf_lm",
    "sse": "sse",
    "sse2": "sse2",
    "sse3": "pni",
    "ssse3": "ssse3",
    "sse4.1": "sse4_1",
    "sse4.2": "sse4_2",
    "crc32": "sse4_2",
    "sse4a": "sse4a",
    "popcnt": "popcnt",
    "movbe": "movbe",
    "lzcnt": "abm",
    "bmi": "bmi1",
    "bmi2": "bmi2",
    "tbm": "tbm",
    "lwp": "lwp",
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "fma4": "fma4",
    "xop": "xop",
    "f16c": "f16c",
    "aes": "aes",
    "pclmul": "pclmulqdq",
    "vaes": "vaes",
    "vpclmulqdq": "vpclmulqdq",
    "gfni": "gfni",
    "sha": "sha_ni",
    "sha512": "sha512",
    "sm3": "sm3",
    "sm4": "sm4",
    "adx": "adx",
    "rdrnd": "rdrand",
    "rdseed": "rdseed",
    "rdpid": "rdpid",
    "rdpru": "rdpru",
    "prfchw": "3dnowprefetch",
    "prefetchi": "prefetchi",
    "clflushopt": "clflushopt",
    "clwb": "clwb",
    "clzero": "clzero",
    "cldemote": "cldemote",
    "fsgsbase": "fsgsbase",
    "invpcid": "invpcid",
    "pku": "ospke",
    "mwaitx": "mwaitx",
    "waitpkg": "waitpkg",
    "movdiri": "movdiri",
    "movdir64b": "movdir64b",
    "movrs": "movrs",
    "enqcmd": "enqcmd",
    "serialize": "serialize",
    "tsxldtrk": "tsxldtrk",
    "uintr": "uintr",
    "hreset": "hreset",
    "pconfig": "pconfig",
    "ptwrite": "ptwrite",
    "kl": "kl",
    "widekl": "widekl",
    "usermsr": "usermsr",
    "wbnoinvd": "wbnoinvd",
    "shstk": "user_shstk",
    "cmpccxadd": "cmpccxadd",
    "xsave": "xsave",
    "xsaveopt": "xsaveopt",
    "xsavec": "xsavec",
    "xsaves": "xsaves",
    "avx512f": "avx512f",
    "avx512cd": "avx512cd",
    "avx512dq": "avx512dq",
    "avx512bw": "avx512bw",
    "avx512vl": "avx512vl",
    "avx512ifma": "avx512ifma",
    "avx512vbmi": "avx512vbmi",
    "avx512vbmi2": "avx512_vbmi2",
    "avx512vnni": "avx512_vnni",
    "avx512bitalg": "avx512_bitalg",
    "avx512vpopcntdq": "avx512_vpopcntdq",
    "avx512bf16": "avx512_bf16",
    "avx512fp16": "avx512_fp16",
    "avx512vp2intersect": "avx512_vp2intersect",
    "avx10.1": "avx10",
    "avx10.2": "avx10_2",
    "avxvnni": "avx_vnni",
    "avxifma": "avx_ifma",
    "avxvnniint8": "avx_vnni_int8",
    "avxvnniint16": "avx_vnni_int16",
    "avxneconvert": "avx_ne_convert",
    "amx-tile": "amx_tile",
    "amx-bf16": "amx_bf16",
    "amx-int8": "amx_int8",
    "amx-fp16": "amx_fp16",
    "amx-complex": "amx_complex",
    "amx-fp8": "amx_fp8",
    "amx-tf32": "amx_tf32",
    "amx-avx512": "amx_avx512",
    "amx-movrs": "amx_movrs",
    # APX (extended GPRs and new encodings) needs OS support; Linux lists it as apx
    "egpr": "apx",
    "ndd": "apx",
    "ccmp": "apx",
    "nf": "apx",
    "ppx": "apx",
    "push2pop2": "apx",
    "zu": "apx",
}

# numpy's __cpu_features__ names for the LLVM features it detects (it checks OS support).
NUMPY_NAMES = {
    "mmx": "MMX",
    "sse": "SSE",
    "sse2": "SSE2",
    "sse3": "SSE3",
    "ssse3": "SSSE3",
    "sse4.1": "SSE41",
    "sse4.2": "SSE42",
    "popcnt": "POPCNT",
    "sahf": "LAHF",
    "cx16": "CX16",
    "movbe": "MOVBE",
    "lzcnt": "LZCNT",
    "bmi": "BMI",
    "bmi2": "BMI2",
    "avx": "AVX",
    "avx2": "AVX2",
    "fma": "FMA3",
    "fma4": "FMA4",
    "xop": "XOP",
    "f16c": "F16C",
    "gfni": "GFNI",
    "vaes": "VAES",
    "vpclmulqdq": "VPCLMULQDQ",
    "avx512f": "AVX512F",
    "avx512cd": "AVX512CD",
    "avx512dq": "AVX512DQ",
    "avx512bw": "AVX512BW",
    "avx512vl": "AVX512VL",
    "avx512ifma": "AVX512IFMA",
    "avx512vbmi": "AVX512VBMI",
    "avx512vbmi2": "AVX512VBMI2",
    "avx512vnni": "AVX512VNNI",
    "avx512bitalg": "AVX512BITALG",
    "avx512vpopcntdq": "AVX512VPOPCNTDQ",
    "avx512bf16": "AVX512BF16",
    "avx512fp16": "AVX512FP16",
}

GENERIC_LEVELS = ("x86-64-v4", "x86-64-v3", "x86-64-v2", "x86-64")


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def os_cpu_flags() -> set[str] | None:
    """The flags of the first processor in /proc/cpuinfo; None where there is none."""
    try:
        with Path("/proc/cpuinfo").open() as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "flags":
                    return set(value.split())
    except OSError:
        pass
    return None


def numpy_cpu_features() -> dict[str, bool]:
    """numpy's runtime CPU detection (name -> present)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__
    return dict(__cpu_features__)


def host_features() -> frozenset[str]:
    """The instruction-set features (LLVM names, from ISA_FLAGS) this CPU has, per the
    OS: in the cpuinfo flags and not denied by numpy. Every x86-64 machine runs the
    x86-64 baseline (SSE2, CMOV, ...), whatever the sources say."""
    flags, numpy = os_cpu_flags(), numpy_cpu_features()
    present = set(cpu_name_features("x86-64"))
    for feature, flag in ISA_FLAGS.items():
        np_name = NUMPY_NAMES.get(feature)
        if np_name in numpy and not numpy[np_name]:
            continue
        if flags is not None:
            if flag in flags:
                present.add(feature)
        elif np_name in numpy:
            present.add(feature)
    # a feature whose prerequisites are absent is absent too (avx512vp2intersect without
    # avx512f: the kernel's flags and numpy's cpuid can disagree, e.g. under an emulator)
    return frozenset(f for f in present if implied_features(f) <= present)


@functools.cache
def cpu_name_features(cpu: str) -> frozenset[str]:
    """The instruction sets LLVM's CPU name ``cpu`` implies."""
    require_tvm()
    return isa_features(tvm.target.Target({"kind": "llvm", "mcpu": cpu}))


@functools.cache
def implied_features(feature: str) -> frozenset[str]:
    """The instruction sets LLVM turns on with ``feature`` (itself included)."""
    require_tvm()
    return isa_features(tvm.target.Target({"kind": "llvm", "mcpu": "x86-64", "mattr": [f"+{feature}"]}))


def isa_features(target) -> frozenset[str]:
    """The instruction sets an llvm target (mcpu and mattr) lets LLVM use."""
    return frozenset(f for f in tvm.target.codegen.llvm_get_cpu_features(target) if f in ISA_FLAGS)


def portable_cpu(features: Iterable[str]) -> str:
    """The newest generic x86-64 level whose instruction sets are all in ``features``."""
    have = set(features)
    return next((lvl for lvl in GENERIC_LEVELS if cpu_name_features(lvl) <= have), "x86-64")


def missing_cpu_features(required: Iterable[str]) -> list[str]:
    """The features of ``required`` (a build's instruction sets) this CPU lacks."""
    if not is_x86():
        return []
    return sorted(set(required) - host_features())


def check_features(cpu: str | None, features: Iterable[str], where: str) -> None:
    """Raise a FuserError, in one line with the fix, when code built for ``cpu`` with
    the instruction sets ``features`` cannot run on this CPU (it would die with SIGILL)."""
    missing = missing_cpu_features(features)
    if missing:
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        raise FuserError(
            f"{where}: code for CPU {cpu} may use {', '.join(missing[:4])}{more}, which this CPU "
            "lacks; build for this CPU (`fuser compile` without --cpu, on this machine) or with "
            f"`--cpu {portable_cpu(host_features())}`, which runs here"
        )


CPU_SYS_DIR = "/sys/devices/system/cpu"


def physical_cores(cpus: Iterable[int] | None = None, sys_dir: str = CPU_SYS_DIR) -> int:
    """The cores this process may run on (``cpus``: these CPUs instead), SMT siblings counted
    once (package and core id from /sys; a CPU without them counts alone). The process's own
    answer is read once: a TVM pool of one thread later pins the main thread to one core."""
    if cpus is None:
        return _process_cores(sys_dir)
    cores = set()
    for cpu in cpus:
        topology = Path(sys_dir) / f"cpu{cpu}" / "topology"
        try:
            cores.add((topology.joinpath("physical_package_id").read_text().strip(),
                       topology.joinpath("core_id").read_text().strip()))  # fmt: skip
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(len(cores), 1)


@functools.cache
def _process_cores(sys_dir: str) -> int:
    import os

    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    return physical_cores(sorted(cpus), sys_dir)


def _thread_variable() -> tuple[str, str] | None:
    """The variable TVM sizes its pool by, as it reads them: TVM_NUM_THREADS when set at all,
    else OMP_NUM_THREADS."""
    import os

    for name in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):
        if name in os.environ:
            return name, os.environ[name]
    return None


def _atoi(text: str) -> int:
    """C's atoi, as TVM reads the variable: leading blanks, a sign, digits; 0 otherwise."""
    import re

    m = re.match(r"\s*([+-]?\d+)", text)
    return int(m.group(1)) if m else 0


def runtime_threads() -> int:
    """The threads TVM's pool runs kernels on: the variable TVM reads (a value that is no
    positive number gives 1, as in TVM), else the physical cores (``default_thread_pool``)."""
    variable = _thread_variable()
    return max(_atoi(variable[1]), 1) if variable else physical_cores()


def default_thread_pool() -> None:
    """Size TVM's thread pool to the physical cores before it starts, unless TVM_NUM_THREADS
    or OMP_NUM_THREADS says otherwise (one that is no positive number is warned about: TVM
    then runs every kernel on one thread). TVM's own default halves the logical CPUs on x86,
    to skip hyper-threads: on a VM without SMT (2 vCPUs, one thread per core) every kernel
    ran on one thread, in parallel loops built for two. MobileNetV2 at 224, batch 1, Zen 5:
    4.1-4.6 ms a call, 2.0 ms with both cores."""
    import logging
    import os

    variable = _thread_variable()
    if variable is None:
        os.environ["TVM_NUM_THREADS"] = str(physical_cores())
    elif _atoi(variable[1]) < 1:
        name, value = variable
        logging.getLogger("fuser").warning(
            "%s=%r is not a positive number: TVM runs every kernel on 1 thread "
            "(unset it to use the %d cores)",
            name,
            value,
            physical_cores(),
        )
