"""A fusion plan's predicted DRAM traffic next to what its TVM build moves on a simulated cache.

    report = measure_plan(graph, plan)                # builds, runs under cachegrind twice
    report.measured_bytes / report.predicted_bytes     # the model against the build
    report.measured_bytes / report.fuseops_bytes       # the plan against TVM's own fusion
    report.fuseops_bytes / report.layer_fusion_bytes   # the model against TVM's own fusion

Two llvm builds of ``graph`` run once each under cachegrind (``fuser.backends.tvm.cachesim``):
the plan-driven one (each group one depth-first kernel, ``fusion.tiling.tile_hints``) and
TVM's FuseOps one with the same schedule rules on its kernels (one row per tile, the plan's
buffer), so the two differ in which ops share a kernel, not in how a kernel's loops run.

The simulated last-level cache is ``2 x`` the plan's buffer by default: the cost model's
buffer is memory the fused data owns; a set-associative LRU cache shares its sets with code,
stacks and streamed lines, and holds a working set of about half its size without conflict
misses (measured here: MobileNetV2 at 224x224 planned at 128 KB moves 1.7x the predicted bytes
on a 128 KB cache, within 3% of them on 256 KB). Kernels that several groups share (Relax
keeps one function for identical groups) are split evenly between their calls.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fuser.backends.ort import example_feeds
from fuser.ir import Graph

from .cost import make_cost_model
from .opgraph import build_fusion_graph
from .plan import Plan, moved_bytes
from .tiling import tile_hints

CACHE_PER_BUFFER = 2


@dataclass
class GroupTraffic:
    group: int
    kernel: str
    ops: list[str]
    predicted_bytes: int
    measured_bytes: int | None  # None: the kernel did not run (folded away)
    shared_with: list[int] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        if self.measured_bytes is None or not self.predicted_bytes:
            return None
        return self.measured_bytes / self.predicted_bytes


@dataclass
class PlanTraffic:
    model: str
    style: str
    buffer_bytes: int
    cache_bytes: int
    predicted_bytes: int
    no_fusion_bytes: int
    layer_fusion_bytes: int  # predicted for the compiler's own fusion: what FuseOps should move
    measured_bytes: int
    fuseops_bytes: int | None
    groups: list[GroupTraffic]
    unattributed_kernels: dict[str, int] = field(default_factory=dict)  # kernels in no group

    @property
    def model_ratio(self) -> float:
        """Measured over predicted bytes of the plan-driven build."""
        return self.measured_bytes / max(self.predicted_bytes, 1)

    @property
    def fuseops_model_ratio(self) -> float | None:
        """Measured FuseOps bytes over the layer-fusion prediction: the cost model on TVM's build."""
        return None if not self.fuseops_bytes else self.fuseops_bytes / max(self.layer_fusion_bytes, 1)

    @property
    def fuseops_ratio(self) -> float | None:
        """Plan-driven over FuseOps measured bytes."""
        return None if not self.fuseops_bytes else self.measured_bytes / self.fuseops_bytes

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "style": self.style,
            "buffer_bytes": self.buffer_bytes,
            "cache_bytes": self.cache_bytes,
            "predicted_bytes": self.predicted_bytes,
            "no_fusion_bytes": self.no_fusion_bytes,
            "layer_fusion_bytes": self.layer_fusion_bytes,
            "measured_bytes": self.measured_bytes,
            "fuseops_bytes": self.fuseops_bytes,
            "model_ratio": self.model_ratio,
            "fuseops_ratio": self.fuseops_ratio,
            "fuseops_model_ratio": self.fuseops_model_ratio,
            "groups": [{**vars(g), "ratio": g.ratio} for g in self.groups],
            "unattributed_kernels": self.unattributed_kernels,
        }


def _serial(fused_mod):
    """Parallel loops made serial: the simulation runs one thread anyway, and LLVM emits a
    parallel loop's body as a private lambda with no symbol, which cachegrind cannot attribute
    to its kernel (the simulated target has one thread, but dlight's reduction rule and
    tuned records still mark loops parallel)."""
    import tvm
    import tvm_ffi

    tirx = tvm.tirx

    def on_for(f):
        if f.kind != tirx.ForKind.PARALLEL:
            return f
        return tirx.For(
            f.loop_var, f.min, f.extent, tirx.ForKind.SERIAL, f.body, f.thread_binding, f.annotations
        )

    out = {}
    for gv, func in fused_mod.functions.items():
        out[gv] = (
            tvm_ffi.structural_map(func, [(tirx.For, on_for)]) if isinstance(func, tirx.PrimFunc) else func
        )
    return tvm.IRModule(out, attrs=fused_mod.attrs)


def _build_and_simulate(graph, groups, tiling, default_tile, workdir: Path, name: str, inputs, cache_bytes):
    from fuser.backends import tvm as tb
    from fuser.backends.tvm import artifact
    from fuser.backends.tvm.build import schedule
    from fuser.backends.tvm.cachesim import SIMULATED_CPU, simulate_dram
    from fuser.backends.tvm.lower import group_kernels

    target = tb.make_target("llvm", cpu=SIMULATED_CPU, threads=1)
    mod = tb.to_relax(graph, groups)
    fused = tb.fuse(mod, target, planned=bool(groups), tiling=tiling, default_tile=default_tile)
    fused = _serial(schedule(fused, target))
    kernels = tb.kernel_names(fused)
    executable = tb.build_fused(fused, target)
    artifact.save(workdir / name, executable, graph, target, extra={"kernels": kernels})
    traffic = simulate_dram(workdir / name, inputs, kernels, cache_bytes)
    return traffic, group_kernels(mod)


def measure_plan(
    graph: Graph,
    plan: Plan,
    cache_bytes: int | None = None,
    fuseops: bool = True,
    seed: int = 0,
) -> PlanTraffic:
    """Predicted (the plan's cost model) and simulated DRAM bytes of ``graph`` built with
    ``plan``, per group and in all, and those of the FuseOps build (``fuseops``)."""
    from fuser.backends.tvm.depthfirst import TileHint

    cache = cache_bytes or CACHE_PER_BUFFER * plan.buffer_bytes
    data = plan.to_dict()
    owner = {op: gid for gid, g in enumerate(data["groups"]) for op in g["ops"]}
    inputs = example_feeds(graph, seed)
    with tempfile.TemporaryDirectory(prefix="fuser-measure-") as tmp:
        work = Path(tmp)
        traffic, kernel_of = _build_and_simulate(
            graph, owner, tile_hints(plan, threads=1), None, work, "plan", inputs, cache
        )
        base = None
        if fuseops:
            base, _ = _build_and_simulate(
                graph,
                None,
                None,
                TileHint("lbdf", buffer_bytes=plan.buffer_bytes),
                work,
                "fuseops",
                inputs,
                cache,
            )
    calls: dict[str, list[int]] = {}
    for gid, kernel in kernel_of.items():
        calls.setdefault(kernel, []).append(gid)
    groups = []
    for gid, g in enumerate(data["groups"]):
        kernel = kernel_of.get(gid, "")
        k = traffic.kernels.get(kernel)
        sharing = calls.get(kernel, [gid])
        groups.append(
            GroupTraffic(
                gid,
                kernel,
                list(g["ops"]),
                int(moved_bytes(g)),
                None if k is None else k.dram_bytes // len(sharing),
                [x for x in sharing if x != gid],
            )
        )
    unattributed = {k: t.dram_bytes for k, t in traffic.kernels.items() if k not in calls}
    no_fusion, layer_fusion = _baselines(graph, data)
    return PlanTraffic(
        model=data["model"],
        style=data["style"],
        buffer_bytes=int(data["buffer_bytes"]),
        cache_bytes=cache,
        predicted_bytes=int(moved_bytes(data)),
        no_fusion_bytes=no_fusion,
        layer_fusion_bytes=layer_fusion,
        measured_bytes=traffic.dram_bytes,
        fuseops_bytes=None if base is None else base.dram_bytes,
        groups=groups,
        unattributed_kernels=unattributed,
    )


def _baselines(graph: Graph, data: dict) -> tuple[int, int]:
    """The no-fusion and layer-fusion bytes (``CostModel.no_fusion_dram``, ``layer_fusion_dram``)
    for the batch the build runs: the plan's own figures, or, for a plan made per image of a
    batch, the same sums over the whole batch's sizes."""
    if data.get("images", 1) == 1 and data.get("layer_fusion_dram_bytes"):
        return int(data["no_fusion_dram_bytes"]), int(data["layer_fusion_dram_bytes"])
    whole = build_fusion_graph(graph, per_image=data.get("images", 1) == 1)
    cost = make_cost_model(whole, data["style"], 1 << 40, int(data["element_bytes"]))
    return cost.no_fusion_dram(), cost.layer_fusion_dram()
