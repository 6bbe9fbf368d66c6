"""eliminate_dead_nodes: drop nodes whose outputs reach no graph output.

Rule: a node none of whose outputs is used by another node or is a graph
output is removed; repeated (walking backwards) until none is left.
"""

from __future__ import annotations

from fuser.ir import Graph

from .base import PassResult


def run(graph: Graph) -> PassResult:
    removed = 0
    for node in reversed(list(graph.nodes)):
        if not any(v.uses or graph.is_output(v) for v in node.outputs):
            graph.erase_node(node)
            removed += 1
    return PassResult(graph, removed > 0, {"removed": removed})
