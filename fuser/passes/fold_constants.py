"""fold_constants: evaluate what is known before run time.

Rules, applied in graph order:
  1. ``Shape(x)`` with a static shape for x -> an int64 constant (``start``/``end`` honoured);
     ``Size(x)`` likewise.
  2. ``CastLike(c, x)`` with constant c and a known dtype for x -> c cast to that dtype.
  3. ``ConstantOfShape(c)`` with a constant shape -> a splat constant (one value
     broadcast, zero bytes; exported again as ConstantOfShape).
  4. ``Expand(c, shape)`` of a one-value constant -> a splat constant (the exporter
     builds zero biases this way).
  5. Any other node whose inputs are all constants -> its outputs, computed by
     ``onnx.reference`` (ONNX's own semantics), unless an output would exceed
     ``MAX_FOLDED_ELEMENTS`` (folding must not blow up the model).
A graph output is never replaced by a constant (its name is the model's interface). A result
computed from no weight (only shapes, configuration and other such results; a ConstantOfShape
fill excepted: exporters write weights that way) is marked ``derived``: analysis does not
count it as a parameter where an op reads it as an operand (an anchor grid from Range).
"""

from __future__ import annotations

import numpy as np
from onnx import helper
from onnx.reference import ReferenceEvaluator

from fuser.analysis import weight_role
from fuser.ir import Graph, Node
from fuser.serde.onnx import attribute_proto

from .base import PassResult

MAX_FOLDED_ELEMENTS = 1 << 20


def _evaluate(node: Node, opset: int) -> list[np.ndarray]:
    """Run one node under the graph's opset (semantics change across opsets)."""
    names = [f"i{i}" if v is not None else "" for i, v in enumerate(node.inputs)]
    outs = [f"o{i}" for i in range(len(node.outputs))]
    proto = helper.make_node(node.op, names, outs)
    proto.attribute.extend(attribute_proto(k, a) for k, a in sorted(node.attrs.items()))
    feeds = {f"i{i}": np.asarray(v.const) for i, v in enumerate(node.inputs) if v is not None}
    g = helper.make_graph(
        [proto],
        "fold",
        [helper.make_tensor_value_info(n, 0, None) for n in feeds],
        [helper.make_tensor_value_info(n, 0, None) for n in outs],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    return [np.asarray(a) for a in ReferenceEvaluator(model).run(None, feeds)]


def _fold(node: Node, opset: int) -> list[np.ndarray] | None:
    ins = node.inputs
    if node.op in ("Shape", "Size"):
        if not ins[0].is_static:
            return None
        shape = np.array(ins[0].shape, dtype=np.int64)
        if node.op == "Size":
            return [np.array(shape.prod(), dtype=np.int64)]
        start, end = node.attr("start", 0), node.attr("end", None)
        return [shape[start:end]]
    if node.op == "CastLike" and ins[0].is_const and ins[1].dtype is not None:
        return [ins[0].const.astype(ins[1].dtype)]
    if any(v is not None and not v.is_const for v in ins):
        return None
    if node.op == "ConstantOfShape":
        fill = node.attr("value", np.zeros(1, np.float32)).reshape(-1)[:1]
        shape = tuple(int(d) for d in ins[0].const)
        return [np.broadcast_to(fill.reshape(()), shape)]
    if node.op == "Expand" and ins[0].const.size == 1:
        shape = np.broadcast_shapes(ins[0].const.shape, tuple(int(d) for d in ins[1].const))
        return [np.broadcast_to(ins[0].const.reshape(()), shape)]
    if any(v.is_static and v.numel > MAX_FOLDED_ELEMENTS for v in node.outputs):
        return None
    return _evaluate(node, opset)


def run(graph: Graph) -> PassResult:
    folded = 0
    for node in list(graph.nodes):
        if any(graph.is_output(v) for v in node.outputs):
            continue
        arrays = _fold(node, graph.opset)
        if arrays is None:
            continue
        # ConstantOfShape fills stand for initializers (exporters write zero biases and stand-in
        # weights that way), so they are never derived
        derived = node.op != "ConstantOfShape" and all(
            v is None or v.derived or weight_role(node, i) is None for i, v in enumerate(node.inputs)
        )
        for v, a in zip(node.outputs, arrays):
            if v.dtype is not None and a.dtype != v.dtype:
                a = a.astype(v.dtype)
            c = graph.const(a, v.name + "_c")
            c.derived = derived
            graph.replace_all_uses_with(v, c)
        graph.erase_node(node)
        folded += 1
    return PassResult(graph, folded > 0, {"folded": folded})
