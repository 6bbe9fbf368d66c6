"""validate: what static shapes imply that onnx's checker does not check.

Run once every value has a static shape (after ``normalize.static_shapes``). Rules, each
refused with a FuserError naming the node and op:
  1. No value has a negative dim (onnx infers one for a window larger than its padded input).
  2. ``Conv``: input and weight have the same rank (>= 3); input channels = weight dim 1 x
     ``group``; weight dim 0 is a multiple of ``group``; a bias has weight dim 0 elements.
  3. ``ConvTranspose``: input channels = weight dim 0, a multiple of ``group``; a bias has
     weight dim 1 x ``group`` elements.
  4. ``Reshape``: input and output hold the same number of elements.
  5. ``InstanceNormalization``: scale and bias have one element per channel.
  6. ``GroupNormalization``: ``num_groups`` divides the channels; scale and bias have one
     element per channel (opset 21) or per group (opset 18).
"""

from __future__ import annotations

import numpy as np

from fuser.ir import FuserError, Graph, Node


def _fail(graph: Graph, node: Node, why: str) -> FuserError:
    return FuserError(f"{graph.source}: node '{node.name}' ({node.op}): invalid model: {why}; fix the model")


def _numel(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _conv(graph: Graph, n: Node) -> None:
    """Conv (weight [C_out, C_in/group, k..]) and ConvTranspose (weight [C_in, C_out/group, k..])."""
    x, w, b = n.input(0), n.input(1), n.input(2)
    if x is None or w is None:
        return
    group = int(n.attr("group", 1) or 1)
    transposed = n.op == "ConvTranspose"
    takes = w.shape[0] if transposed else w.shape[1] * group
    makes = w.shape[1] * group if transposed else w.shape[0]
    if len(x.shape) != len(w.shape) or len(x.shape) < 3:
        raise _fail(graph, n, f"input {list(x.shape)} and weight {list(w.shape)} ranks do not match")
    if group < 1 or w.shape[0] % group:
        raise _fail(
            graph, n, f"weight {list(w.shape)}: dim 0 ({w.shape[0]}) is not a multiple of group={group}"
        )
    if x.shape[1] != takes:
        raise _fail(
            graph,
            n,
            f"input has {x.shape[1]} channels, weight {list(w.shape)} with group={group} takes {takes}",
        )
    if b is not None and list(b.shape) != [makes]:
        raise _fail(graph, n, f"bias {list(b.shape)} does not match {makes} output channels")


def _reshape(graph: Graph, n: Node) -> None:
    x, y = n.input(0), n.output
    if x is not None and _numel(x.shape) != _numel(y.shape):
        raise _fail(graph, n, f"reshapes {_numel(x.shape)} elements {list(x.shape)} to {list(y.shape)}")


def _per_channel(graph: Graph, n: Node, count: int, what: str) -> None:
    for i in (1, 2):
        v = n.input(i)
        if v is not None and _numel(v.shape) != count:
            raise _fail(
                graph, n, f"input {i} has {_numel(v.shape)} elements, expected one per {what} ({count})"
            )


def _instance_norm(graph: Graph, n: Node) -> None:
    x = n.input(0)
    if x is not None and len(x.shape) >= 2:
        _per_channel(graph, n, x.shape[1], "channel")


def _group_norm(graph: Graph, n: Node) -> None:
    x, groups = n.input(0), int(n.attr("num_groups", 0) or 0)
    if x is None or len(x.shape) < 2:
        return
    if groups < 1 or x.shape[1] % groups:
        raise _fail(graph, n, f"num_groups={groups} does not divide {x.shape[1]} channels")
    per_group = graph.opset < 21  # GroupNormalization-18: scale and bias per group
    _per_channel(graph, n, groups if per_group else x.shape[1], "group" if per_group else "channel")


RULES = {
    "Conv": _conv,
    "ConvTranspose": _conv,
    "Reshape": _reshape,
    "InstanceNormalization": _instance_norm,
    "GroupNormalization": _group_norm,
}


def run(graph: Graph) -> None:
    for n in graph.nodes:
        for v in n.outputs:
            if v.shape is not None and any(isinstance(d, int) and d < 0 for d in v.shape):
                raise _fail(graph, n, f"output '{v.name}' would have shape {list(v.shape)}")
        rule = RULES.get(n.op)
        if rule is not None and all(v is None or v.is_static for v in n.inputs) and n.output.is_static:
            rule(graph, n)
