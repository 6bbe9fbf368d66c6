"""What every pass returns. A pass is ``run(graph) -> PassResult``; it rewrites
the graph in place (the pipeline copies the user's graph once, up front)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fuser.ir import Graph


@dataclass
class PassResult:
    graph: Graph
    changed: bool
    stats: dict[str, int] = field(default_factory=dict)  # e.g. {"folded": 3}
