"""The optimize pipeline: import -> passes (each switchable by name) -> export.

Passes are looked up by name in ``fuser.passes.PASSES``; each rewrites the graph
in place and says whether it changed it. The pipeline copies the caller's graph
first, re-infers shapes after every pass that changed something, checks the
graph's bookkeeping, and records a report of what each pass did.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from fuser.ir import FuserError, Graph, check_graph

PassSpec = str | tuple[str, dict]


@dataclass
class StepReport:
    name: str
    changed: bool
    stats: dict
    nodes_before: int
    nodes_after: int
    seconds: float


@dataclass
class PipelineReport:
    steps: list[StepReport] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"steps": [asdict(s) for s in self.steps]}

    def __str__(self) -> str:
        lines = []
        for s in self.steps:
            stats = ", ".join(f"{k} {v}" for k, v in s.stats.items()) or "-"
            lines.append(
                f"{s.name:<22} {'changed' if s.changed else 'no change':<9}  "
                f"nodes {s.nodes_before} -> {s.nodes_after}  ({stats})"
            )
        return "\n".join(lines)


def _resolve(spec: PassSpec) -> tuple[str, Callable[..., Any], dict]:
    from fuser.passes import PASSES

    name, kwargs = (spec, {}) if isinstance(spec, str) else spec
    if name not in PASSES:
        raise FuserError(f"unknown pass '{name}'; known passes: {', '.join(PASSES)}")
    return name, PASSES[name], kwargs


def run_passes(graph: Graph, passes: Sequence[PassSpec], *, progress=None) -> tuple[Graph, PipelineReport]:
    """Run ``passes`` in order on a copy of ``graph``."""
    from fuser.analysis.shapes import infer_shapes

    graph = graph.copy()
    report = PipelineReport()
    for spec in passes:
        name, fn, kwargs = _resolve(spec)
        before, t0 = len(graph.nodes), time.perf_counter()
        result = fn(graph, **kwargs)
        graph = result.graph
        if result.changed:
            infer_shapes(graph)
        check_graph(graph)
        report.steps.append(
            StepReport(
                name,
                result.changed,
                dict(result.stats),
                before,
                len(graph.nodes),
                round(time.perf_counter() - t0, 4),
            )
        )
        if progress is not None:
            progress(name)
    return graph, report


def default_passes(skip: Sequence[str] = ()) -> list[str]:
    from fuser.passes import DEFAULT_PIPELINE, PASSES

    unknown = set(skip) - set(PASSES)
    if unknown:
        raise FuserError(f"unknown pass(es) to skip: {sorted(unknown)}; known: {', '.join(PASSES)}")
    return [p for p in DEFAULT_PIPELINE if p not in skip]
