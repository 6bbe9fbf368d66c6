"""Latency of one graph on several backends, and per-kernel time of its TVM build.

Shared by `fuser bench` and ``benchmarks/latency.py``. Every backend runs the same
optimized Graph on the same input: warm-up calls first, then ``repeat`` timed
calls; we report the median and the spread (min, max) in milliseconds, and the
ratio of each median to ONNX Runtime's.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from fuser.ir import FuserError, Graph
from fuser.serde.onnx import to_onnx

from .torch import to_torch

BACKENDS = ("torch", "torch-compile", "ort", "tvm", "tvm-tuned")


@dataclass
class Timing:
    backend: str
    median_ms: float
    min_ms: float
    max_ms: float
    runs: int
    vs_ort: float | None = None
    note: str = ""


@dataclass
class KernelTiming:
    kernel: str
    median_ms: float
    group: int | None = None  # plan group id, when the build followed a plan
    dram_bytes: int | None = None  # the plan's DRAM estimate for that group
    ops: str = ""  # the group's first .. last op (module paths for graphs captured from torch)


@dataclass
class Report:
    model: str
    input_shape: list[int]
    threads: int
    timings: list[Timing] = field(default_factory=list)
    kernels: list[KernelTiming] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def set_threads(threads: int) -> None:
    """Pin every runtime to ``threads`` (TVM reads TVM_NUM_THREADS when its pool starts)."""
    os.environ["TVM_NUM_THREADS"] = str(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def measure(fn: Callable[[], object], warmup: int, repeat: int) -> list[float]:
    """Wall-clock milliseconds of ``repeat`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _torch_runner(graph: Graph, x: np.ndarray, compiled: bool) -> Callable:
    import torch

    module = to_torch(graph).eval()
    if compiled:
        module = torch.compile(module)
    xt = torch.from_numpy(x)

    def run():
        with torch.no_grad():
            return module(xt)

    return run


def _ort_runner(graph: Graph, x: np.ndarray, threads: int) -> Callable:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    session = ort.InferenceSession(to_onnx(graph).SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {graph.inputs[0].name: x}
    return lambda: session.run(None, feeds)


def _tvm_runner(graph: Graph, x: np.ndarray, threads: int, groups=None, tuning=None):
    """(runner, per-kernel timer) for an llvm build (tuned when ``tuning`` is given)."""
    from fuser.backends import tvm as tb

    target = tb.make_target("llvm", threads)
    fused = tb.fuse(tb.to_relax(graph, groups), target, planned=bool(groups))
    if tuning is not None:
        fused = tuning(fused, target)
    executable = tb.build_fused(fused, target)
    model = tb.TVMModel(executable, tb.value_specs(graph.inputs), tb.value_specs(graph.outputs))
    return (lambda: model(x)), (
        lambda number: [KernelTiming(k, ms) for k, ms in tb.time_kernels(executable, fused, number).items()]
    )


def run_report(
    graph: Graph,
    backends,
    *,
    threads: int = 2,
    warmup: int = 3,
    repeat: int = 20,
    groups=None,
    plan_groups: list[dict] | None = None,
    tuning=None,
    on_step: Callable[[str], None] = lambda s: None,
) -> Report:
    """Time ``graph`` on each of ``backends`` (names from BACKENDS)."""
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise FuserError(f"--backends: unknown {unknown}; choose from {', '.join(BACKENDS)}")
    if not graph.inputs or len(graph.inputs) != 1 or not graph.inputs[0].is_static:
        raise FuserError(f"{graph.source}: bench needs one input with a static shape")
    set_threads(threads)
    shape = [int(d) for d in graph.inputs[0].shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    report = Report(graph.name, shape, threads)
    # Per-kernel times come from the tuned build when there is one: it is the one to improve.
    kernels_of = "tvm-tuned" if "tvm-tuned" in backends else "tvm"
    for name in backends:
        on_step(f"building {name}")
        kernel_timer = None
        if name in ("torch", "torch-compile"):
            run = _torch_runner(graph, x, compiled=name == "torch-compile")
        elif name == "ort":
            run = _ort_runner(graph, x, threads)
        else:
            if name == "tvm-tuned" and tuning is None:
                raise FuserError("tvm-tuned needs a tuning budget (--tune-trials N)")
            run, kernel_timer = _tvm_runner(
                graph, x, threads, groups, tuning if name == "tvm-tuned" else None
            )
        on_step(f"timing {name}")
        times = measure(run, warmup, repeat)
        report.timings.append(Timing(name, statistics.median(times), min(times), max(times), len(times)))
        if name == kernels_of:
            on_step(f"timing {name} kernels")
            report.kernels = _join_plan(kernel_timer(max(repeat // 4, 3)), plan_groups)
    ort_ms = next((t.median_ms for t in report.timings if t.backend == "ort"), None)
    for t in report.timings:
        t.vs_ort = t.median_ms / ort_ms if ort_ms else None
    return report


def _join_plan(kernels: list[KernelTiming], plan_groups: list[dict] | None) -> list[KernelTiming]:
    """Attach each planned kernel's group id and the plan's DRAM estimate for it."""
    from .tvm.lower import GROUP_FUNC_PREFIX

    for k in kernels:
        if k.kernel.startswith(GROUP_FUNC_PREFIX):
            k.group = int(k.kernel[len(GROUP_FUNC_PREFIX) :])
            if plan_groups and k.group < len(plan_groups):
                k.dram_bytes = plan_groups[k.group].get("dram_bytes")
                ops = plan_groups[k.group].get("ops") or []
                k.ops = " .. ".join(dict.fromkeys([ops[0], ops[-1]])) if ops else ""
    return sorted(kernels, key=lambda k: -k.median_ms)
