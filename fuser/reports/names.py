"""The names reports show for ops: the module path when the graph came from torch and the IR
records it (``fuser.ir.display_name``, when present), else the node's own name."""

from __future__ import annotations

from fuser import ir


def display_name(node) -> str:
    helper = getattr(ir, "display_name", None)
    return helper(node) if helper is not None else node.name


def display_names(graph) -> dict[str, str]:
    """Node name -> the name to show, for every node of ``graph``."""
    return {n.name: display_name(n) for n in graph.nodes}
