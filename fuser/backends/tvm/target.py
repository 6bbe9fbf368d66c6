"""TVM targets: llvm for a CPU, cuda for a GPU arch.

llvm, by default, is this CPU as it really is: LLVM's name for it plus ``mattr``
turning off each instruction set the name implies and the OS does not report
(``fuser.backends.tvm.cpu``), or the newest generic x86-64 level when the name knows
less than the machine has. With ``cpu=NAME`` it is that LLVM CPU, as named.

cuda: the arch of the visible GPU (sm_90 without one), with its limits from
``CUDA_ARCHES`` so TVM's schedules need not guess them.
"""

from __future__ import annotations

import logging

from fuser.ir import FuserError

from . import cpu as host
from .common import require_tvm, tvm

log = logging.getLogger(__name__)


def host_cpu() -> str:
    """LLVM's name for this machine's CPU (what ``-mcpu=native`` would pick); it may
    imply instruction sets the machine lacks (see ``host_mattr``)."""
    require_tvm()
    return tvm.target.codegen.llvm_get_system_cpu()


def host_mattr(cpu: str) -> list[str]:
    """``-feature`` for each instruction set LLVM's ``cpu`` implies that this CPU lacks."""
    if not host.is_x86():
        return []
    return [f"-{f}" for f in sorted(host.cpu_name_features(cpu) - host.host_features())]


def host_llvm_cpu() -> tuple[str, list[str]]:
    """(mcpu, mattr) for this CPU: LLVM's name for it minus what the OS lacks, unless the
    newest generic level whose instruction sets are all here has one the name lacks (an
    old or unknown name, such as an emulator's k8-sse3 on an AVX2 machine): that level."""
    name = host_cpu()
    if not host.is_x86():
        return name, []
    have = host.host_features()
    level = host.portable_cpu(have)
    if host.cpu_name_features(level) - (host.cpu_name_features(name) & have):
        return level, []
    return name, host_mattr(name)


def make_target(target: str, threads: int | None = None, cpu: str | None = None):
    """A tvm.target.Target for 'llvm' (this CPU, or ``cpu`` by LLVM name such as
    'x86-64-v3' for any x86 machine with AVX2) or 'cuda' (the GPU's arch, else sm_90).

    Without an mcpu LLVM emits baseline x86-64 (SSE2): MetaSchedule then tunes 128-bit
    vectors on an AVX-512 machine."""
    require_tvm()
    if target == "llvm":
        codegen = tvm.target.codegen
        attrs: dict = {"kind": "llvm"}
        if cpu:
            if not codegen.llvm_is_valid_cpu(cpu, codegen.llvm_get_system_triple()):
                raise FuserError(
                    f"--cpu {cpu}: LLVM does not know this CPU (e.g. x86-64, x86-64-v3, {host_cpu()})"
                )
            attrs["mcpu"] = cpu
        else:
            attrs["mcpu"], mattr = host_llvm_cpu()
            if mattr:
                attrs["mattr"] = mattr
        # num-cores: MetaSchedule needs it, and it sizes the tuned parallel loops
        attrs["num-cores"] = int(threads or host.runtime_threads())
        return tvm.target.Target(attrs)
    if target == "cuda":
        return tvm.target.Target(cuda_target_attrs(cuda_arch()), host={"kind": "llvm"})
    raise FuserError(f"--target {target}: choose llvm or cuda")


def target_record(target) -> dict:
    """What a build's metadata says about its target: llvm's CPU, mattr and the
    instruction sets the code may use; cuda's arch."""
    if target.kind.name == "llvm":
        return {
            "cpu": str(target.attrs.get("mcpu", "")) or None,
            "mattr": [str(a) for a in target.attrs.get("mattr", [])],
            "cpu_features": sorted(host.isa_features(target)) if host.is_x86() else [],
        }
    if target.kind.name == "cuda":
        arch = str(target.attrs["arch"])
        return {"cuda_arch": arch, "cuda_limits": cuda_limits(arch)}
    return {}


# Limits by arch (CUDA C Programming Guide, "Technical Specifications per Compute
# Capability"). The first five are TVM cuda target attributes; TVM's kernels use static
# __shared__ arrays, capped at 48 KiB per block on every arch (the opt-in dynamic
# maximum and the threads per SM are recorded in the build's metadata, for reference).
def _arch(shared_opt_in_kib: int, threads_per_sm: int) -> dict:
    return {
        "max_threads_per_block": 1024,
        "max_num_threads": 1024,
        "thread_warp_size": 32,
        "registers_per_block": 65536,
        "max_shared_memory_per_block": 48 * 1024,
        "shared_memory_opt_in": shared_opt_in_kib * 1024,
        "max_threads_per_sm": threads_per_sm,
    }


CUDA_ARCHES = {
    "sm_80": _arch(163, 2048),  # A100
    "sm_86": _arch(99, 1536),  # A10, RTX 30xx
    "sm_89": _arch(99, 1536),  # L4, L40, RTX 40xx
    "sm_90": _arch(227, 2048),  # H100, H200
    "sm_100": _arch(227, 2048),  # B200
}
_TVM_CUDA_ATTRS = (
    "max_threads_per_block",
    "max_num_threads",
    "thread_warp_size",
    "registers_per_block",
    "max_shared_memory_per_block",
)


def cuda_limits(arch: str) -> dict:
    """``arch``'s limits from CUDA_ARCHES; an arch not in the table gets the per-block
    limits every arch since sm_50 shares (one warning per process)."""
    if arch in CUDA_ARCHES:
        return CUDA_ARCHES[arch]
    _warn_unknown_arch(arch)
    return {k: CUDA_ARCHES["sm_80"][k] for k in _TVM_CUDA_ATTRS}


def cuda_target_attrs(arch: str) -> dict:
    """TVM cuda target attributes for ``arch``, its limits set (TVM's schedules otherwise
    guess them, warning once per kernel)."""
    limits = cuda_limits(arch)
    return {"kind": "cuda", "arch": arch, **{k: limits[k] for k in _TVM_CUDA_ATTRS}}


_warned_arches: set[str] = set()


def _warn_unknown_arch(arch: str) -> None:
    if arch not in _warned_arches:
        _warned_arches.add(arch)
        log.warning("cuda %s is not in fuser's arch table; using the limits common to all arches", arch)


def cuda_arch() -> str:
    """The visible GPU's arch (sm_XY), else sm_90 (the H100 class the project targets)."""
    try:
        dev = tvm.cuda(0)
        if dev.exist:
            return "sm_" + dev.compute_version.replace(".", "")
    except Exception:  # no driver
        pass
    return "sm_90"


def cuda_available() -> bool:
    """Whether a CUDA GPU is visible to TVM here."""
    require_tvm()
    try:
        return bool(tvm.cuda(0).exist)
    except Exception:
        return False
