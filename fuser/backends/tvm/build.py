"""Kernel formation (FuseOps, or a plan's groups) and compilation to a TVM Executable."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from fuser.ir import Graph

from . import layout
from .common import relax, require_tvm, tvm
from .lower import to_relax
from .runtime import TVMModel, value_specs
from .target import make_target

FLOPS_ATTR = "fuser.kernel_flops"  # IRModule attribute: kernel -> flops, counted by ``fuse``


def fuse_passes(target, planned: bool, schedules: bool = True, dlight: bool = True) -> list:
    """Legalize to TIR and form kernels: FuseOps unless a plan already grouped the ops.

    llvm with ``schedules``: blocked conv layouts with weights prepacked (``layout``; a
    plan group's weights are arguments, transformed at its call sites) and the TE
    computes fuser's schedule rules know; the rules themselves run in ``schedule``.
    cuda with ``dlight``: TVM's dlight GPU rules for kernels nobody scheduled."""
    cpu = schedules and target.kind.name == "llvm"
    seq = []
    if cpu:
        seq += layout.layout_passes(target)
    seq += [
        relax.transform.LegalizeOps(layout.legalize_map() if cpu else None),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
    ]
    if not planned:
        seq.append(relax.transform.FuseOps())
    seq += [relax.transform.FuseTIR(), relax.transform.DeadCodeElimination()]
    if dlight and target.kind.name == "cuda":
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


def fuse(
    mod,
    target,
    planned: bool | None = None,
    tiling: Mapping | None = None,
    default_tile=None,
    schedules: bool = True,
):
    """The IRModule after legalization and kernel formation (one PrimFunc per kernel);
    ``schedules=False``: TVM's plain pipeline (NCHW, no fast math), for comparison.

    ``tiling``: plan group id -> ``depthfirst.TileHint``: those groups' kernels get
    depth-first schedules (``fuser.backends.tvm.depthfirst``), whose inner loops are
    fuser's CPU default schedules on llvm; ``default_tile``: the hint for every other
    kernel (None: left to the default schedules, ``schedule``). Their reports are in
    ``depth_first_reports(fused)``. With ``default_tile`` the layout passes are off (the
    depth-first rules tile NCHW rows)."""
    if planned is None:
        planned = any(
            isinstance(f, relax.Function) and f.attrs and "Primitive" in f.attrs
            for f in mod.functions.values()
        )
    depth_first = bool(tiling) or default_tile is not None
    with target:
        layout_ok = schedules and default_tile is None
        fused = tvm.transform.Sequential(
            fuse_passes(target, planned, schedules=layout_ok, dlight=not depth_first)
        )(mod)
        # counted before any schedule: a depth-first kernel's producers loop over the rows a
        # window needs, and the predicate that skips the rows a rolling buffer holds is not
        # seen by TVM's count (MobileNetV2's groups counted 3x, "563 GFLOP/s" on one core)
        fused = fused.with_attr(FLOPS_ATTR, json.dumps(kernel_flops(fused)))
        if not depth_first:
            return fused
        from .depthfirst import schedule_kernels
        from .lower import group_kernels

        kernel_of = group_kernels(mod)
        hints = {kernel_of[g]: h for g, h in (tiling or {}).items() if g in kernel_of}
        fused, _ = schedule_kernels(fused, hints, target, default_tile)
        if target.kind.name == "cuda":  # dlight for what depth-first left unscheduled
            fused = tvm.transform.Sequential(fuse_passes(target, True)[-1:])(fused)
        return fused


def depth_first_reports(fused_mod) -> dict[str, dict]:
    """Kernel -> what its depth-first schedule did (``depthfirst.KernelSchedule.to_dict``)."""
    import json

    from .depthfirst import SCHEDULED_ATTR

    return {
        gv.name_hint: json.loads(str(f.attrs[SCHEDULED_ATTR]))
        for gv, f in fused_mod.functions.items()
        if isinstance(f, tvm.tirx.PrimFunc) and f.attrs and SCHEDULED_ATTR in f.attrs
    }


def schedule(fused, target, schedules: bool = True):
    """``fused`` with fuser's default schedules (``schedules/``) on every llvm kernel that
    tuning or another schedule (depth-first) has not scheduled yet; ``schedule_sources``
    says which."""
    if not schedules or target.kind.name != "llvm":
        return fused
    from .schedules import apply_default_schedules

    with target:
        return apply_default_schedules(fused, target)


def kernel_names(fused_mod) -> list[str]:
    """The TIR kernels ``main`` calls (after ``fuse``)."""
    return sorted(gv.name_hint for gv, f in fused_mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc))


def kernel_flops(fused_mod) -> dict[str, float]:
    """Floating-point operations per call of each TIR kernel, as TVM's ``estimate_tir_flops``
    counts them (a multiply-add is two; a copy or a layout transform none), on the kernels as
    ``fuse`` formed them, before any schedule (recorded in the module)."""
    from tvm.s_tir.analysis import estimate_tir_flops

    if fused_mod.attrs and FLOPS_ATTR in fused_mod.attrs:
        return json.loads(str(fused_mod.attrs[FLOPS_ATTR]))
    flops = {}
    for gv, f in fused_mod.functions.items():
        if isinstance(f, tvm.tirx.PrimFunc):
            try:
                flops[gv.name_hint] = float(estimate_tir_flops(tvm.IRModule({"main": f})))
            except (RuntimeError, TypeError, ValueError):  # one it cannot count (a dynamic loop)
                continue
    return flops


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


def build(
    mod,
    target: str | Any = "llvm",
    planned: bool | None = None,
    tiling: Mapping | None = None,
    schedules: bool = True,
):
    """Compile a Relax module (from ``to_relax``) to a tvm Executable for llvm or cuda
    (``schedules``: fuser's CPU layouts and default schedules; ``tiling``: see ``fuse``)."""
    require_tvm()
    if isinstance(target, str):
        target = make_target(target)
    return build_fused(fuse(mod, target, planned, tiling, schedules=schedules), target, schedules)


def build_fused(fused, target, schedules: bool = True):
    """Compile a module already through ``fuse`` (its kernels fixed) to an Executable,
    scheduling first what nobody has (``schedule``)."""
    if isinstance(target, str):
        target = make_target(target)
    fused = schedule(fused, target, schedules)
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


def compile_graph(
    graph: Graph, target: str = "llvm", groups=None, tiling: Mapping | None = None, schedules: bool = True
) -> TVMModel:
    """to_relax + build + TVMModel in one call (the graph is run as given: call
    fuser.optimize first to fold BatchNorm). ``tiling``: group id -> TileHint (see ``fuse``)."""
    mod = to_relax(graph, groups)
    ex = build(mod, target, planned=bool(groups), tiling=tiling, schedules=schedules)
    return TVMModel(
        ex, value_specs(graph.inputs), value_specs(graph.outputs), "cuda" if target == "cuda" else "cpu"
    )
