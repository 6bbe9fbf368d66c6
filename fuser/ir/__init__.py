"""The graph IR (Graph, Node, Value) and the op registry; the lowest layer: imports no other part of fuser."""

from .graph import (
    FuserError,
    Graph,
    Node,
    Shape,
    Value,
    check_graph,
    constant_value,
    display_name,
    is_splat,
    source_line,
    stable_topological_order,
)

__all__ = [
    "FuserError",
    "Graph",
    "Node",
    "Shape",
    "Value",
    "check_graph",
    "constant_value",
    "display_name",
    "is_splat",
    "source_line",
    "stable_topological_order",
]
