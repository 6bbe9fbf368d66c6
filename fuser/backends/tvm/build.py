"""Kernel formation (FuseOps, or a plan's groups) and compilation to a TVM Executable."""

from __future__ import annotations

import os
from typing import Any

from fuser.ir import Graph

from .common import relax, require_tvm, tvm
from .lower import to_relax
from .runtime import TVMModel, value_specs
from .target import make_target


def fuse_passes(target, planned: bool) -> list:
    """Legalize to TIR and form kernels: FuseOps unless a plan already grouped the ops."""
    seq = [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
    ]
    if not planned:
        seq.append(relax.transform.FuseOps())
    seq += [relax.transform.FuseTIR(), relax.transform.DeadCodeElimination()]
    if target.kind.name == "cuda":
        from tvm.s_tir import dlight as dl

        seq.append(
            dl.ApplyDefaultSchedule(
                dl.gpu.Matmul(),
                dl.gpu.GEMV(),
                dl.gpu.Reduction(),
                dl.gpu.GeneralReduction(),
                dl.gpu.Fallback(),
            )
        )
    return seq


def fuse(mod, target, planned: bool | None = None):
    """The IRModule after legalization and kernel formation (one PrimFunc per kernel)."""
    if planned is None:
        planned = any(
            isinstance(f, relax.Function) and f.attrs and "Primitive" in f.attrs
            for f in mod.functions.values()
        )
    with target:
        return tvm.transform.Sequential(fuse_passes(target, planned))(mod)


def kernel_names(fused_mod) -> list[str]:
    """The TIR kernels ``main`` calls (after ``fuse``)."""
    return sorted(gv.name_hint for gv, f in fused_mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc))


def kernel_calls(fused_mod) -> dict[str, int]:
    """How often ``main`` calls each TIR kernel (after ``fuse``): a kernel TVM shares
    between identical subgraphs is called once per subgraph."""
    calls: dict[str, int] = {}

    def visit(expr):
        callee = expr.args[0] if isinstance(expr, relax.Call) and expr.args else None
        if isinstance(callee, tvm.ir.GlobalVar) and isinstance(fused_mod[callee], tvm.tirx.PrimFunc):
            calls[callee.name_hint] = calls.get(callee.name_hint, 0) + 1

    relax.analysis.post_order_visit(fused_mod["main"], visit)
    return calls


def _finalize_pipeline(target):
    if target.kind.name == "cuda":
        from tvm.relax.backend.cuda import pipeline as be
    else:
        from tvm.relax.backend.cpu_generic import pipeline as be
    return tvm.transform.Sequential(be.dataflow_lower_passes(target) + be.finalize_passes(target))


def build(mod, target: str | Any = "llvm", planned: bool | None = None):
    """Compile a Relax module (from ``to_relax``) to a tvm Executable for llvm or cuda."""
    require_tvm()
    if isinstance(target, str):
        target = make_target(target)
    return build_fused(fuse(mod, target, planned), target)


def build_fused(fused, target):
    """Compile a module already through ``fuse`` (its kernels fixed) to an Executable."""
    if isinstance(target, str):
        target = make_target(target)
    if target.kind.name != "cuda":
        return tvm.compile(fused, target, relax_pipeline=_finalize_pipeline(target))
    # TVM compiles CUDA with NVRTC by default (a Python extra); nvcc is what this
    # project's machines have. An explicit TVM_CUDA_COMPILE_MODE wins.
    mode = os.environ.get("TVM_CUDA_COMPILE_MODE")
    os.environ["TVM_CUDA_COMPILE_MODE"] = mode or "nvcc"
    try:
        return tvm.compile(fused, target, relax_pipeline=_finalize_pipeline(target))
    finally:
        if mode is None:
            os.environ.pop("TVM_CUDA_COMPILE_MODE", None)


def _modules(mod):
    yield mod
    for sub in mod.imports:
        yield from _modules(sub)


def cuda_source(executable) -> str:
    """The CUDA C source TVM generated for a cuda build ('' for other targets)."""
    return "\n".join(m.inspect_source("") for m in _modules(executable.mod) if m.kind == "cuda")


def compile_graph(graph: Graph, target: str = "llvm", groups=None) -> TVMModel:
    """to_relax + build + TVMModel in one call (the graph is run as given: call
    fuser.optimize first to fold BatchNorm)."""
    mod = to_relax(graph, groups)
    ex = build(mod, target, planned=bool(groups))
    return TVMModel(
        ex, value_specs(graph.inputs), value_specs(graph.outputs), "cuda" if target == "cuda" else "cpu"
    )
