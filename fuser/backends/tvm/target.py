"""TVM targets: llvm for a CPU, cuda for a GPU arch."""

from __future__ import annotations

import os

from fuser.ir import FuserError

from .common import require_tvm, tvm


def host_cpu() -> str:
    """LLVM's name for this machine's CPU (what ``-mcpu=native`` would pick)."""
    require_tvm()
    return tvm.target.codegen.llvm_get_system_cpu()


def make_target(target: str, threads: int | None = None, cpu: str | None = None):
    """A tvm.target.Target for 'llvm' (this CPU, or ``cpu`` by LLVM name such as
    'x86-64' for any x86 machine) or 'cuda' (sm_90 unless a GPU says otherwise).

    Without an mcpu LLVM emits baseline x86-64 (SSE2): MetaSchedule then tunes 128-bit
    vectors on an AVX-512 machine."""
    require_tvm()
    if target == "llvm":
        cpu = cpu or host_cpu()
        codegen = tvm.target.codegen
        if not codegen.llvm_is_valid_cpu(cpu, codegen.llvm_get_system_triple()):
            raise FuserError(
                f"--cpu {cpu}: LLVM does not know this CPU (e.g. x86-64, skylake-avx512, {host_cpu()})"
            )
        # num-cores: MetaSchedule needs it, and it sizes the tuned parallel loops
        return tvm.target.Target(
            {"kind": "llvm", "mcpu": cpu, "num-cores": int(threads or os.cpu_count() or 1)}
        )
    if target == "cuda":
        arch = _cuda_arch()
        return tvm.target.Target({"kind": "cuda", "arch": arch}, host={"kind": "llvm"})
    raise FuserError(f"--target {target}: choose llvm or cuda")


_ISA_PREFIXES = ("sse", "ssse", "avx", "fma", "f16c", "bmi", "amx", "vnni", "popcnt", "lzcnt")


def missing_cpu_features(cpu: str) -> list[str]:
    """Instruction sets code built for ``cpu`` may use that this machine lacks."""
    require_tvm()
    features = tvm.target.codegen.llvm_get_cpu_features

    def isa(name: str) -> set[str]:
        return {
            f
            for f in features(tvm.target.Target({"kind": "llvm", "mcpu": name}))
            if f.startswith(_ISA_PREFIXES)
        }

    return sorted(isa(cpu) - isa(host_cpu()))


def _cuda_arch() -> str:
    try:
        dev = tvm.cuda(0)
        if dev.exist:
            return "sm_" + dev.compute_version.replace(".", "")
    except Exception:  # no driver: compile for the H100 class the project targets
        pass
    return "sm_90"


def cuda_available() -> bool:
    """Whether a CUDA GPU is visible to TVM here."""
    require_tvm()
    try:
        return bool(tvm.cuda(0).exist)
    except Exception:
        return False
