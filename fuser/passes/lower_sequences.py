"""lower_sequences: turn tensor sequences that are split and indexed into a plain Split.

PyTorch's exporter writes ``x.chunk(n)``/``x.split(s)`` as ``SplitToSequence``
followed by ``SequenceAt`` with constant positions. Rule:
  ``SplitToSequence(x, split)`` (constant split, static shape of x, keepdims=1) whose
  every user is ``SequenceAt(seq, i)`` with constant i
  -> ``Split(x, sizes)`` with one output per chunk; each ``SequenceAt`` output reads
     chunk i. Anything else is refused by name (fuser has no sequence values).
"""

from __future__ import annotations

import numpy as np

from fuser.ir import FuserError, Graph, Node

from .base import PassResult

SEQUENCE_OPS = {"SplitToSequence", "SequenceAt"}


def _chunk_sizes(node: Node) -> list[int]:
    x, split = node.inputs[0], node.input(1)
    axis = node.attr("axis", 0) % len(x.shape)
    dim = x.shape[axis]
    if split is None:
        return [1] * dim
    s = split.const
    if s.ndim == 0:
        step = int(s)
        return [min(step, dim - i) for i in range(0, dim, step)]
    return [int(d) for d in s]


def _refuse(graph: Graph, node: Node, why: str) -> FuserError:
    return FuserError(
        f"{graph.source}: node '{node.name}' ({node.op}): {why}; fuser handles "
        "sequences only as a split indexed by constants"
    )


def run(graph: Graph, defer_unknown: bool = False) -> PassResult:
    """``defer_unknown``: leave splits of not-yet-shaped inputs for a later round."""
    lowered = 0
    for node in list(graph.nodes):
        if node.op == "SequenceAt" and node.inputs[0].producer is None:
            raise _refuse(graph, node, "indexes a sequence that is not a split")
        if node.op != "SplitToSequence":
            continue
        x, split = node.inputs[0], node.input(1)
        if defer_unknown and not x.is_static:
            continue
        if not x.is_static or (split is not None and not split.is_const):
            raise _refuse(graph, node, "split sizes or input shape are not static")
        if node.attr("keepdims", 1) != 1 and split is None:
            raise _refuse(graph, node, "keepdims=0 is not supported")
        users = node.output.users
        if graph.is_output(node.output) or any(
            u.op != "SequenceAt" or not u.inputs[1].is_const for u in users
        ):
            raise _refuse(graph, node, "the sequence is used other than by SequenceAt(constant)")
        sizes = _chunk_sizes(node)
        axis = node.attr("axis", 0)
        if graph.opset >= 13:
            inputs, attrs = [x, graph.const(np.array(sizes, np.int64), f"{node.name}_sizes")], {"axis": axis}
        else:
            inputs, attrs = [x], {"axis": axis, "split": sizes}
        split_node = graph.add_node("Split", inputs, len(sizes), attrs, f"{node.name}_split", before=node)
        for u in users:
            i = int(u.inputs[1].const)
            graph.replace_all_uses_with(u.output, split_node.outputs[i])
            graph.erase_node(u)
        graph.erase_node(node)
        lowered += 1
    return PassResult(graph, lowered > 0, {"lowered": lowered})
