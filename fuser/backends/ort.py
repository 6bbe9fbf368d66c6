"""ONNX Runtime as a measuring instrument: sessions on fuser Graphs, latency of several graphs
timed interleaved (one call of each in turn, so load on a shared machine hits all alike), and
a per-node profile from ONNX Runtime's own profiler (Chrome-trace events).

The profile runs with basic graph optimisations only: ONNX Runtime then keeps every node
(and its name), so each op's time can be charged to the op, and to its fusion group. The
latency runs use all optimisations (what a deployment gets).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from collections.abc import Mapping

import numpy as np

from fuser.ir import Graph
from fuser.serde.onnx import to_onnx

LEVELS = ("basic", "all")


def example_feeds(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs of the graph's shapes and dtypes."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for v in graph.inputs:
        dtype = v.dtype if v.dtype is not None else np.dtype(np.float32)
        if dtype.kind == "f":
            feeds[v.name] = rng.standard_normal(v.shape).astype(dtype)
        else:
            feeds[v.name] = np.zeros(v.shape, dtype)
    return feeds


def session(graph: Graph, threads: int = 2, level: str = "all", profile_prefix: str | None = None):
    """An ONNX Runtime CPU session on ``graph`` (``level``: 'all' or 'basic' optimisations)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if level == "all"
        else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    )
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(to_onnx(graph).SerializeToString(), so, providers=["CPUExecutionProvider"])


def interleaved_latency(
    graphs: Mapping[str, Graph], threads: int = 2, warmup: int = 3, repeat: int = 20, seed: int = 0
) -> dict[str, dict]:
    """Milliseconds per call of each graph in ONNX Runtime (all optimisations), the graphs
    timed in turns (``latency.interleaved``: a pause before each turn, so one session's
    spinning threads do not take the cores of the next; called in turn call by call, ResNet-18
    at 64x64 optimised ran 5.68 ms against 2.74 ms as given) ``repeat`` times after ``warmup``:
    {name: {median_ms, min_ms, max_ms, runs}}."""
    from .latency import interleaved

    runs = {}
    for name, graph in graphs.items():
        s, feeds = session(graph, threads), example_feeds(graph, seed)
        runs[name] = lambda s=s, feeds=feeds: s.run(None, feeds)
    times = interleaved(runs, warmup, repeat)
    return {
        name: {"median_ms": statistics.median(t), "min_ms": min(t), "max_ms": max(t), "runs": len(t)}
        for name, t in times.items()
    }


def profile_nodes(
    graph: Graph, threads: int = 2, runs: int = 10, warmup: int = 2, seed: int = 0
) -> list[list[dict]]:
    """ONNX Runtime's profile of ``runs`` calls (basic optimisations): per call, its node events
    in order, each {node, op, ts_us (from the call's start), dur_us, tid}."""
    with tempfile.TemporaryDirectory(prefix="fuser-ort-") as tmp:
        s = session(graph, threads, "basic", profile_prefix=os.path.join(tmp, "profile"))
        feeds = example_feeds(graph, seed)
        for _ in range(warmup + runs):
            s.run(None, feeds)
        with open(s.end_profiling()) as f:
            events = json.load(f)
    calls = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[warmup:]
    nodes = {n.name: n.op for n in graph.nodes}
    kernel = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    out = []
    for call in calls:
        start, end = call["ts"], call["ts"] + call["dur"]
        out.append(
            [
                {
                    "node": e["name"][: -len("_kernel_time")],
                    "op": nodes.get(e["name"][: -len("_kernel_time")], e.get("args", {}).get("op_name", "?")),
                    "ts_us": e["ts"] - start,
                    "dur_us": e["dur"],
                    "tid": e.get("tid", 0),
                }
                for e in sorted(kernel, key=lambda e: e["ts"])
                if start <= e["ts"] < end
            ]
        )
    return out
