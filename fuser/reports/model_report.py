"""The data behind ``fuser report``: one dict (what ``--json`` prints) that the HTML page
(``fuser.reports.html``) and the Chrome trace (``fuser.reports.trace``) are drawn from.

``build_report(graph, options)`` takes the graph as imported and, step by step:
  1. costs the graph as given (nodes, MACs, params, activations, peak live activations, DRAM
     with no fusion), runs the optimize pipeline, and with ``prune`` prunes the result;
  2. plans fusion groups at ``buffer`` on the final graph, and at every ``sweep`` size;
  3. finds the block-fusion blocks (Lavin) and their roofline costs;
  4. with ``measure``: ONNX Runtime latency of every stage (interleaved), torch latency, and a
     per-node profile (charged to fusion groups); with ``compile``: a TVM build that follows
     the plan (one kernel per group), its latency and per-group kernel times.
Without ``measure``/``compile`` nothing is timed and the same inputs give the same dict.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from fuser.analysis import analyze, peak_activation_bytes
from fuser.ir import FuserError, Graph
from fuser.passes.pipeline import default_passes, run_passes
from fuser.units import format_size

from .fusion import group_rows, peaks, sweep_rows
from .hardware import cpu_name, vector_isa, versions
from .names import display_names
from .pruning import layer_rows

REPORT_FORMAT = "fuser.report/1"
KB = 1024
DEFAULT_SWEEP = (64 * KB, 128 * KB, 256 * KB, 512 * KB, 1024 * KB)
STAGE_NAMES = {"given": "as given", "optimized": "optimized", "pruned": "pruned"}

Progress = Callable[[str, int, int], None]  # (what it does now, steps done, steps in all)


@dataclass
class ReportOptions:
    """What ``fuser report`` computes (its options, all validated before any capture)."""

    buffer: int | str = 256 * KB
    style: str = "lbdf"
    search: str = "local"
    split: str = "explain"
    budget: int = 1000
    seed: int = 0
    element_bytes: int = 1
    layers: bool = False  # plan over layers (fuser.fusion.partition)
    sweep: Sequence[int | str] = DEFAULT_SWEEP
    prune: float | None = None
    criterion: str = "l2"
    round_to: int | None = 8
    measure: bool = False
    compile: bool = False
    threads: int = 2
    repeat: int = 20
    device: str | None = None  # block-fusion model: None = 'cpu' when measuring, else 'h100'
    blocks: bool = True

    def __post_init__(self):
        from fuser.fusion.cost import STYLES
        from fuser.units import parse_size

        # sizes as bytes or as text ("256KB"), the way the CLI and fuser.partition take them
        self.buffer = parse_size(self.buffer) if isinstance(self.buffer, str) else int(self.buffer)
        self.sweep = [parse_size(b) if isinstance(b, str) else int(b) for b in self.sweep or ()]
        from fuser.fusion.search import SEARCHES
        from fuser.fusion.split import SPLITS

        for name, value, allowed in (
            ("style", self.style, STYLES),
            ("search", self.search, SEARCHES),
            ("split", self.split, SPLITS),
        ):
            if value not in allowed:
                raise FuserError(f"--{name} {value}: choose one of {', '.join(allowed)}")
        if self.prune is not None and not 0 <= self.prune < 1:
            raise FuserError(f"--prune {self.prune}: give a ratio in [0, 1)")
        if self.budget < 1 or self.threads < 1 or self.repeat < 1:
            raise FuserError("--budget, --threads and --repeat must be at least 1")
        self.sweep = tuple(sorted(set(self.sweep) | {self.buffer})) if self.sweep else ()

    @property
    def blocks_device(self) -> str:
        return self.device or ("cpu" if self.measure else "h100")

    def steps(self) -> list[str]:
        """The steps ``build_report`` takes, in order (for a progress bar)."""
        steps = ["costing the graph as given", "optimizing (folding BN, cleanups)"]
        if self.prune is not None:
            steps.append(f"pruning {self.prune:g} of the channels")
        steps.append(f"planning fusion at {format_size(self.buffer)} ({self.search} search)")
        steps += [f"planning at {format_size(b)} for the sweep" for b in self.sweep if b != self.buffer]
        if self.blocks:
            steps.append("finding blocks" + (" and timing them" if self.measure else ""))
        if self.measure:
            steps += ["timing ONNX Runtime (every stage, interleaved)", "timing torch", "profiling every op"]
        if self.compile:
            steps.append("compiling with TVM (one kernel per group) and timing it")
        return steps


def _stage(graph: Graph, style: str, element_bytes: int) -> dict:
    from fuser.fusion.cost import make_cost_model
    from fuser.fusion.opgraph import build_fusion_graph

    a = analyze(graph)
    return {
        "nodes": a["nodes"],
        "macs": a["macs"],
        "params": a["params"],
        "weight_bytes": a["weight_bytes"],
        "activation_bytes": a["activation_bytes"],
        "peak_activation_bytes": peak_activation_bytes(graph),
        # every op alone (W + In + Out per op), in the plan's element bytes
        "no_fusion_dram_bytes": make_cost_model(
            build_fusion_graph(graph), style, 1 << 40, element_bytes
        ).no_fusion_dram(),
    }


def graph_picture_data(graph: Graph, owner: dict[str, int]) -> dict:
    """Nodes (name, label, op, group, output shape) and edges (producer -> consumer indices)."""
    names = display_names(graph)
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    edges = sorted(
        {
            (index[v.producer.name], i)
            for i, n in enumerate(graph.nodes)
            for v in n.inputs
            if v is not None and v.producer is not None and v.producer.name in index
        }
    )
    return {
        "nodes": [
            {
                "name": n.name,
                "label": names[n.name],
                "op": n.op,
                "group": owner.get(n.name),
                "shape": list(n.outputs[0].shape or ()) if n.outputs else [],
            }
            for n in graph.nodes
        ],
        "edges": [list(e) for e in edges],
    }


def build_report(
    graph: Graph,
    options: ReportOptions | None = None,
    *,
    source: str | None = None,
    command: str | None = None,
    progress: Progress | None = None,
) -> dict:
    """The report of ``graph`` (as imported: BN not yet folded); see the module docstring."""
    from fuser.fusion.api import partition_fusion_graph
    from fuser.fusion.opgraph import build_fusion_graph

    opts = options or ReportOptions()
    steps = opts.steps()
    done = 0

    def step() -> None:
        nonlocal done
        if progress is not None:
            progress(steps[done] if done < len(steps) else "writing", done, len(steps))
        done += 1

    isa, lanes = vector_isa()
    data: dict = {
        "format": REPORT_FORMAT,
        "model": {
            "name": graph.name,
            "source": source or graph.source,
            "inputs": [{"name": v.name, "shape": list(v.shape), "dtype": v.dtype.name} for v in graph.inputs],
            "outputs": [
                {"name": v.name, "shape": list(v.shape), "dtype": v.dtype.name} for v in graph.outputs
            ],
        },
        "environment": {"versions": versions(), "cpu": cpu_name(), "vector_isa": isa, "vector_lanes": lanes},
        "command": command,
        "options": {**asdict(opts), "sweep": list(opts.sweep), "blocks_device": opts.blocks_device},
        "import": graph.meta.get("import"),
    }

    step()
    stages = {"given": _stage(graph, opts.style, opts.element_bytes)}
    step()
    optimized, pipeline = run_passes(graph, default_passes())
    data["pipeline"] = [{k: v for k, v in s.items() if k != "seconds"} for s in pipeline.to_dict()["steps"]]
    stages["optimized"] = _stage(optimized, opts.style, opts.element_bytes)
    final = optimized
    if opts.prune is not None:
        from fuser.pruning import prune_graph

        step()
        final = optimized.copy()
        pruned = prune_graph(final, opts.prune, opts.criterion, round_to=opts.round_to or None)
        stages["pruned"] = _stage(final, opts.style, opts.element_bytes)
        pr = pruned.to_dict()
        data["pruning"] = {
            "ratio": opts.prune,
            "criterion": opts.criterion,
            "round_to": opts.round_to,
            **{
                k: pr[k]
                for k in ("macs_before", "macs_after", "params_before", "params_after", "channels_removed")
            },
            "groups": list(layer_rows(pr)),
            "blocked": pr["blocked"],
        }
    else:
        data["pruning"] = None

    step()
    fg = build_fusion_graph(final, layers=opts.layers)

    def plan_at(size: int):
        plan, _ = partition_fusion_graph(
            fg,
            buffer=size,
            style=opts.style,
            search=opts.search,
            split=opts.split,
            budget=opts.budget,
            seed=opts.seed,
            element_bytes=opts.element_bytes,
        )
        return plan

    plan = plan_at(opts.buffer).to_dict()
    sweep = []
    for size in opts.sweep:
        if size != opts.buffer:
            step()
        sweep.append((plan if size == opts.buffer else plan_at(size).to_dict(), None))
    data["sweep"] = [{k: v for k, v in r.items() if k != "seconds"} for r in sweep_rows(sweep)]

    rows = group_rows(plan)
    owner = {op: r.index for r in rows for op in r.ops}
    per_node = {r["name"]: r for r in analyze(final)["per_node"]}
    names = display_names(final)
    data["plan"] = {
        k: plan[k]
        for k in (
            "model",
            "style",
            "buffer_bytes",
            "element_bytes",
            "dram_bytes",
            "no_fusion_dram_bytes",
            "layer_fusion_dram_bytes",
            "search",
        )
    }
    data["plan"]["layers"] = opts.layers
    data["plan"].update(peaks(rows))
    if plan.get("images", 1) > 1:  # planned per image: the bytes are one image's
        data["plan"].update(images=plan["images"], batch_dram_bytes=plan["batch_dram_bytes"])
    data["groups"] = [
        {
            "index": r.index,
            "rank": r.rank,
            "ops": r.ops,
            "labels": [names.get(op, op) for op in r.ops],
            "op_types": [per_node[op]["op"] for op in r.ops],
            "buffer_bytes": r.buffer_bytes,
            "fit": round(r.fit, 4),
            "fits": r.fits,
            "valid": r.valid,
            "dram_bytes": r.dram_bytes,
            "share": round(r.share, 4),
            "macs": sum(per_node[op]["macs"] for op in r.ops),
            **r.terms,
            "splits": r.splits,
            "measured_ms": None,
            "tvm_ms": None,
        }
        for r in rows
    ]
    data["splits"] = plan.get("splits", [])
    data["unfusable"] = plan.get("unfusable", [])
    data["graph"] = graph_picture_data(final, owner)

    total = max(stages["given"]["no_fusion_dram_bytes"] or 0, 1)
    data["summary"] = {
        "stages": [{"stage": STAGE_NAMES[k], **v} for k, v in stages.items()],
        "fused_dram_bytes": plan["dram_bytes"],
        "dram_ratio": plan["dram_bytes"] / total,
        "buffer_bytes": opts.buffer,
    }

    data["blocks"] = None
    if opts.blocks:
        from fuser.blockfusion.report import blocks_report

        step()
        data["blocks"] = blocks_report(final, opts.blocks_device, opts.measure)

    data["latency"] = None
    data["profile"] = None
    if opts.measure:
        _measure(data, stages, graph, optimized, final, opts, step)
    if opts.compile:
        step()
        _compile(data, final, plan, opts)
    if opts.measure or opts.compile:
        last = data["summary"]["stages"][-1]["stage"]
        rows = data["latency"]["rows"]
        ort = next(
            (r["median_ms"] for r in rows if r["backend"] == "onnxruntime" and r["stage"] == last), None
        )
        for r in rows:
            r["vs_ort"] = round(r["median_ms"] / ort, 3) if ort else None
    if progress is not None:
        progress("writing", len(steps), len(steps))
    return data


def _measure(data, stages, given, optimized, final, opts: ReportOptions, step) -> None:
    from fuser.backends.latency import run_report
    from fuser.backends.ort import interleaved_latency, profile_nodes
    from fuser.blockfusion.devices import measure_cpu

    step()
    graphs = {"given": given, "optimized": optimized}
    if final is not optimized:
        graphs["pruned"] = final
    ort = interleaved_latency(graphs, threads=opts.threads, repeat=opts.repeat)
    rows = [{"backend": "onnxruntime", "stage": STAGE_NAMES[k], **v} for k, v in ort.items()]
    for k, v in ort.items():
        next(s for s in data["summary"]["stages"] if s["stage"] == STAGE_NAMES[k])["ort_ms"] = v["median_ms"]
    step()
    t = run_report(final, ["torch"], threads=opts.threads, repeat=opts.repeat).timing("torch")
    rows.append(
        {
            "backend": "torch (fuser's module)",
            "stage": STAGE_NAMES[list(graphs)[-1]],
            "median_ms": t.median_ms,
            "min_ms": t.min_ms,
            "max_ms": t.max_ms,
            "runs": t.runs,
        }
    )
    data["latency"] = {"threads": opts.threads, "repeat": opts.repeat, "rows": rows}

    step()
    calls = profile_nodes(final, threads=opts.threads, runs=max(opts.repeat // 2, 5))
    per_node: dict[str, list[float]] = {}
    for call in calls:
        for e in call:
            per_node.setdefault(e["node"], []).append(e["dur_us"])
    node_ms = {name: statistics.median(ts) / 1e3 for name, ts in per_node.items()}
    for g in data["groups"]:
        g["measured_ms"] = round(sum(node_ms.get(op, 0.0) for op in g["ops"]), 6)
    totals = [sum(e["dur_us"] for e in call) for call in calls]
    median_call = calls[sorted(range(len(calls)), key=totals.__getitem__)[len(calls) // 2]]
    cpu = measure_cpu()
    data["profile"] = {
        "source": "ONNX Runtime's profiler, basic optimisations (one kernel per op), median of "
        f"{len(calls)} calls per op",
        "calls": len(calls),
        "cpu_peak_flops": cpu.fp32_flops,
        "cpu_bandwidth": cpu.bandwidth,
        "run": median_call,  # one call (the median one) as events, for the trace
    }


def _compile(data, final: Graph, plan: dict, opts: ReportOptions) -> None:
    from fuser.backends.latency import run_report
    from fuser.fusion.tiling import tile_hints

    owner = {op: k for k, g in enumerate(plan["groups"]) for op in g["ops"]}
    report = run_report(
        final,
        ["tvm"],
        threads=opts.threads,
        repeat=opts.repeat,
        groups=owner,
        plan_groups=plan["groups"],
        tiling=tile_hints(plan, opts.threads),  # depth-first group kernels, as bench --plan builds them
    )
    t = report.timing("tvm")
    if data["latency"] is None:
        data["latency"] = {"threads": opts.threads, "repeat": opts.repeat, "rows": []}
    stage = data["summary"]["stages"][-1]["stage"]
    data["latency"]["rows"].append(
        {
            "backend": "TVM (untuned, plan kernels)",
            "stage": stage,
            "median_ms": t.median_ms,
            "min_ms": t.min_ms,
            "max_ms": t.max_ms,
            "runs": t.runs,
        }
    )
    per_group: dict[int, float] = {}
    for k in report.kernels:
        if k.group is not None:
            per_group[k.group] = per_group.get(k.group, 0.0) + k.median_ms
    for g in data["groups"]:
        g["tvm_ms"] = per_group.get(g["index"])
    sources = report.kernel_sources
    data["tvm_kernels"] = [{**asdict(k), "schedule": sources.get(k.kernel)} for k in report.kernels]


__all__ = ["DEFAULT_SWEEP", "REPORT_FORMAT", "ReportOptions", "build_report", "graph_picture_data"]
