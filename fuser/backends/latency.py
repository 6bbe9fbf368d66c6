"""Latency of one graph on several backends, and per-kernel time of its TVM build.

Shared by `fuser bench` and ``benchmarks/latency.py``. Every backend runs the same
optimized Graph on the same input: warm-up calls first, then ``repeat`` timed
calls, the backends interleaved (``interleaved``); we report the median and the
spread (min, max) in milliseconds, the ratio of each median to ONNX Runtime's and
the GFLOP/s it means (2 x MACs per run), with each TVM build's compile time and what
its calls cost besides the kernels (``CallOverhead``).
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
    median_ms: float | None
    min_ms: float | None
    max_ms: float | None
    runs: int
    vs_ort: float | None = None
    note: str = ""
    error: str = ""  # why this backend could not build or run the model ("" when it did)
    build_s: float | None = None  # TVM: lowering, scheduling (tuning) and LLVM, seconds
    gflops: float | None = None  # 2 x MACs / median


@dataclass
class CallOverhead:
    """What a TVM call costs besides its kernels: the build with every kernel emptied
    (``null_kernels``), timed with the input copied into a fresh tensor per call (how
    TVMModel bound inputs before) and bound in place (now), against the real median."""

    copy_in_ms: float
    in_place_ms: float
    run_ms: float

    @property
    def share_before(self) -> float:
        return self.copy_in_ms / self.run_ms

    @property
    def share_after(self) -> float:
        return self.in_place_ms / self.run_ms


@dataclass
class KernelTiming:
    """One kernel's time per call, timed in the run (``tvm.time_calls_in_run``). With a plan,
    one row per plan group: groups TVM runs with one shared kernel each get their own call."""

    kernel: str
    median_ms: float  # per call
    calls: int = 1  # calls per inference this row stands for
    group: int | None = None  # plan group id, when the build followed a plan
    dram_bytes: int | None = None  # the plan's DRAM estimate for that group
    shared_with: list[int] = field(default_factory=list)  # other groups the kernel runs
    ops: str = ""  # the group's first .. last op (module paths for graphs captured from torch)
    flops: float | None = None  # per call, as TVM counts them (``tvm.kernel_flops``)

    @property
    def total_ms(self) -> float:
        return self.median_ms * self.calls

    @property
    def gflops(self) -> float | None:
        """The rate the kernel ran at in the run; None without a count or a time."""
        return self.flops / self.median_ms / 1e6 if self.flops and self.median_ms > 0 else None


@dataclass
class Report:
    model: str
    input_shape: list[int]
    threads: int
    timings: list[Timing] = field(default_factory=list)
    kernels: list[KernelTiming] = field(default_factory=list)
    overhead: CallOverhead | None = None  # of the build the kernels come from
    kernel_sources: dict[str, str] = field(default_factory=dict)  # kernel -> schedule source

    @property
    def failed(self) -> list[Timing]:
        return [t for t in self.timings if t.error]

    def timing(self, backend: str) -> Timing:
        """``backend``'s row; a FuserError with the reason when it could not build or run."""
        t = next(t for t in self.timings if t.backend == backend)
        if t.error:
            raise FuserError(f"{backend}: {t.error}")
        return t

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
    return interleaved({"fn": fn}, warmup, repeat)["fn"]


def cpu_clock() -> float:
    """This process's CPU time (seconds): on one thread, the time a call ran, however many
    other processes shared the cores (wall clock on a loaded machine swings 5-20x)."""
    return time.process_time()


BLOCK = 5  # timed calls per turn of a backend
NO_KERNEL = "(no kernel: a view)"  # a plan group TVM runs without a kernel
PAUSE = 0.2  # seconds before each turn: TVM's pool workers yield-spin 300,000 times after a job
# (TVM_THREAD_POOL_SPIN_COUNT), about 120 ms on a 2-core VM, before they sleep


def interleaved(
    fns: dict[str, Callable[[], object]],
    warmup: int,
    repeat: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Milliseconds (wall clock, or ``clock``) of ``repeat`` calls of each function, after
    ``warmup`` untimed ones, the functions taking turns of BLOCK calls (a changing machine
    load hits them all alike). Each turn starts after a PAUSE, its first call untimed: the
    threads of ONNX Runtime, torch (OpenMP) and TVM spin for a while after a run, and a
    backend timed right after would pay for that (MobileNetV2 224 b1, 2 threads on 2 cores,
    torch, ORT and TVM interleaved: TVM's median 2.4 or 4.3 ms from one run to the next
    without the pause, 2.2-2.5 ms with it; ResNet-18 at 64x64, ORT and TVM: ORT's median
    7.5 ms after 50 ms pauses, 1.9 ms alone)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    while any(len(t) < repeat for t in times.values()):
        for name, fn in fns.items():
            time.sleep(PAUSE)
            fn()
            for _ in range(min(BLOCK, repeat - len(times[name]))):
                start = clock()
                fn()
                times[name].append((clock() - start) * 1e3)
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


@dataclass
class _TVMBuild:
    run: Callable[[], object]
    build_s: float
    kernel_timer: Callable[..., list[KernelTiming]]
    overhead: Callable[..., CallOverhead]
    sources: dict[str, str]


def _tvm_runner(
    graph: Graph, x: np.ndarray, threads: int, groups=None, tuning=None, cpu=None, tiling=None
) -> _TVMBuild:
    """An llvm build for this CPU or ``cpu`` (tuned when ``tuning`` is given; ``tiling``:
    plan group id -> TileHint for depth-first group kernels), with its per-kernel timer and
    overhead measurement. A ``cpu`` with instruction sets this machine
    lacks is refused before anything runs: its code would die with SIGILL."""
    from fuser.backends import tvm as tb
    from fuser.backends.tvm.cpu import check_features

    target = tb.make_target("llvm", threads, cpu=cpu)
    record = tb.target_record(target)
    check_features(record["cpu"], record["cpu_features"], f"tvm --cpu {cpu}")
    start = time.perf_counter()
    mod = tb.to_relax(graph, groups)
    fused = tb.fuse(mod, target, planned=bool(groups), tiling=tiling)
    if tuning is not None:
        fused = tuning(fused, target)
    fused = tb.schedule(fused, target)
    executable = tb.build_fused(fused, target)
    build_s = time.perf_counter() - start
    specs = (tb.value_specs(graph.inputs), tb.value_specs(graph.outputs))
    model = tb.TVMModel(executable, *specs)

    nulls = []

    def null_model():  # the build with every kernel emptied: what a call costs besides them
        if not nulls:
            nulls.append(tb.TVMModel(tb.build_fused(tb.null_kernels(fused), target), *specs))
        return nulls[0]

    def kernel_timer(runs: int, clock=None) -> list[KernelTiming]:
        kernels = set(tb.kernel_names(fused))
        calls = tb.time_calls_in_run(model, [x], kernels, runs, clock, emptied=null_model())
        rows = kernel_rows(calls, tb.group_kernels(mod), tb.group_order(mod))
        flops = tb.kernel_flops(fused)
        for row in rows:
            row.flops = flops.get(row.kernel) or None
        return rows

    def overhead(run_ms: float, repeat: int, clock: Callable[[], float]) -> CallOverhead:
        import tvm

        null = null_model()
        copied = {
            "copy": lambda: null.vm["main"](tvm.runtime.tensor(np.array(x))),
            "in_place": lambda: null(x),
        }
        times = interleaved(copied, 3, repeat, clock)
        copy_in, in_place = times["copy"], times["in_place"]
        return CallOverhead(statistics.median(copy_in), statistics.median(in_place), run_ms)

    return _TVMBuild(lambda: model(x), build_s, kernel_timer, overhead, tb.schedule_sources(fused))


def kernel_rows(
    calls: list[tuple[str, float]], group_kernels: dict[int, str], order: list[int] | None = None
) -> list[KernelTiming]:
    """Rows of the kernel table from the timed calls of one run (in call order): one per plan
    group (the call that ran it: groups sharing a kernel run in ``order``, the order main calls
    the groups, default their ids; they name each other; a group TVM made no kernel of gets
    NO_KERNEL, 0 calls), then one per kernel that runs no group, its calls' mean time and
    their number."""
    from .tvm.lower import shared_kernels

    shared = shared_kernels(group_kernels)
    times: dict[str, list[float]] = {}
    for kernel, ms in calls:
        times.setdefault(kernel, []).append(ms)
    groups_of: dict[str, list[int]] = {}
    for g in order or sorted(group_kernels):
        groups_of.setdefault(group_kernels[g], []).append(g)
    rows = []
    for k, gids in groups_of.items():
        t = times.get(k, [])
        for i, g in enumerate(gids):
            if not t:  # TVM made no kernel of it (a reshape: a view of its input)
                rows.append(KernelTiming(NO_KERNEL, 0.0, 0, g))
                continue
            ms = t[i] if len(t) == len(gids) else sum(t) / len(t)  # a kernel called otherwise: its mean
            rows.append(KernelTiming(k, ms, 1, g, shared_with=[o for o in shared.get(k, []) if o != g]))
    rows.sort(key=lambda r: r.group)
    rows += [KernelTiming(k, sum(t) / len(t), len(t)) for k, t in times.items() if k not in groups_of]
    return rows


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
    cpu: str | None = None,
    tiling=None,
    on_step: Callable[[str], None] = lambda s: None,
    clock: Callable[[], float] = time.perf_counter,
) -> Report:
    """Time ``graph`` on each of ``backends`` (names from BACKENDS); TVM builds for this
    CPU or ``cpu`` (an LLVM name), ``tiling`` as in ``tvm.build.fuse``. A backend that
    cannot build or run the model gets a row with the reason (``Timing.error``) and the
    others are still timed."""
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise FuserError(f"--backends: unknown {unknown}; choose from {', '.join(BACKENDS)}")
    if not graph.inputs or len(graph.inputs) != 1 or not graph.inputs[0].is_static:
        raise FuserError(f"{graph.source}: bench needs one input with a static shape")
    set_threads(threads)
    shape = [int(d) for d in graph.inputs[0].shape]
    from .ort import example_feeds
    from .tvm.runtime import aligned_empty

    feed = example_feeds(graph)[graph.inputs[0].name]  # the model's dtype: float16, int64, bool too
    x = aligned_empty(shape, feed.dtype)  # TVM reads it in place
    x[...] = feed
    report = Report(graph.name, shape, threads)
    # Per-kernel times come from the tuned build when there is one: it is the one to improve.
    kernels_of = "tvm-tuned" if "tvm-tuned" in backends else "tvm"
    if "tvm-tuned" in backends and tuning is None:
        raise FuserError("tvm-tuned needs a tuning budget (--tune-trials N)")
    runs: dict[str, Callable] = {}
    rows: dict[str, Timing] = {}
    builds: dict[str, _TVMBuild] = {}
    for name in backends:
        rows[name] = Timing(name, None, None, None, 0)
        try:
            on_step(f"building {name}")
            if name in ("torch", "torch-compile"):
                runs[name] = _torch_runner(graph, x, compiled=name == "torch-compile")
            elif name == "ort":
                runs[name] = _ort_runner(graph, x, threads)
            else:
                builds[name] = _tvm_runner(
                    graph, x, threads, groups, tuning if name == "tvm-tuned" else None, cpu, tiling
                )
                runs[name] = builds[name].run
                rows[name].build_s = builds[name].build_s
            runs[name]()  # a backend that cannot run fails here, before the timing
        except Exception as e:  # this backend's row says why; the others still run
            rows[name].error = _reason(e)
            runs.pop(name, None)
    on_step(f"timing {', '.join(runs)} interleaved")
    times = interleaved(runs, warmup, repeat, clock)
    flops = 2 * _macs(graph)
    for name, t in times.items():
        row = rows[name]
        row.median_ms, row.min_ms, row.max_ms, row.runs = statistics.median(t), min(t), max(t), len(t)
        row.gflops = flops / row.median_ms / 1e6 if flops else None
    report.timings = [rows[n] for n in backends]
    if kernels_of in builds and not rows[kernels_of].error:
        on_step(f"timing {kernels_of} kernels")
        build = builds[kernels_of]
        report.kernels = _join_plan(build.kernel_timer(max(repeat, 3), clock), plan_groups)
        report.kernel_sources = build.sources
        report.overhead = build.overhead(rows[kernels_of].median_ms, repeat, clock)
    ort_ms = rows["ort"].median_ms if "ort" in rows and not rows["ort"].error else None
    for t in report.timings:
        t.vs_ort = t.median_ms / ort_ms if ort_ms and not t.error else None
    return report


def _macs(graph: Graph) -> int:
    from fuser.analysis.costs import analyze

    return int(analyze(graph)["macs"])


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    return first if isinstance(e, FuserError) else f"{type(e).__name__}: {first}"


def _join_plan(kernels: list[KernelTiming], plan_groups: list[dict] | None) -> list[KernelTiming]:
    """Attach the plan's DRAM estimate to each group's row (the batch's, when the plan was made
    for one image of it); slowest (in all calls) first."""
    for k in kernels:
        if k.group is not None and plan_groups and k.group < len(plan_groups):
            group = plan_groups[k.group]
            # a plan made for one image of a batch: the batch's bytes
            k.dram_bytes = group.get("batch_dram_bytes") or group.get("dram_bytes")
            ops = group.get("ops") or []
            k.ops = " .. ".join(dict.fromkeys([ops[0], ops[-1]])) if ops else ""
    return sorted(kernels, key=lambda k: -k.total_ms)
