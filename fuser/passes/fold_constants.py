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
     ``onnx.reference`` (ONNX's own semantics; for every standard op, opaque ones included),
     unless an output would exceed ``MAX_FOLDED_ELEMENTS`` (folding must not blow up the
     model). An output whose shape is not known yet is folded only for ops whose outputs
     are bounded by their inputs' sizes (``BOUNDED_BY_INPUTS``: NonZero, Unique, ...; Range
     when its length fits).
     Random ops are never folded (their outputs differ run to run): RANDOM_OPS, and a
     Dropout whose ``training_mode`` input is present and not a constant false.
A graph output is never replaced by a constant (its name is the model's interface). A result
computed from no weight (only shapes, configuration and other such results; a ConstantOfShape
fill excepted: exporters write weights that way; a Cast of integer-stored weights carries
them) is marked ``derived``: analysis does not count it as a parameter (an anchor grid from
Range).

A splat (rules 3, 4) larger than ``MAX_SPLAT_ELEMENTS``, a negative dim, or a node that
``onnx.reference`` cannot evaluate on its constant inputs (a Reshape to the wrong element
count, an index out of range) is an invalid model: a FuserError naming the node and op.
"""

from __future__ import annotations

import warnings

import numpy as np
from onnx import helper
from onnx.reference import ReferenceEvaluator

from fuser.analysis import weight_role
from fuser.ir import FuserError, Graph, Node
from fuser.serde.onnx import node_proto, value_info

from .base import PassResult

MAX_FOLDED_ELEMENTS = 1 << 20
MAX_SPLAT_ELEMENTS = 1 << 34  # a broadcast fill costs no memory, but every backend materialises it
RANDOM_OPS = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
)
BOUNDED_BY_INPUTS = frozenset(
    {"NonZero", "Unique", "Compress", "NonMaxSuppression", "TopK", "StringSplit", "Range"}
)


def _where(graph: Graph, node: Node) -> str:
    return f"{graph.source}: node '{node.name}' ({node.op})"


def _evaluate(graph: Graph, node: Node) -> list[np.ndarray] | None:
    """Run one node under the graph's opset (semantics change across opsets); None when
    onnx.reference has no implementation of it."""
    feeds = {v.name: np.asarray(v.const) for v in node.inputs if v is not None}
    inputs = {v.name: value_info(v) for v in node.inputs if v is not None}
    g = helper.make_graph(
        [node_proto(node)],
        "fold",
        list(inputs.values()),
        [helper.make_tensor_value_info(v.name, 0, None) for v in node.outputs],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", graph.opset)])
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            outs = ReferenceEvaluator(model).run(None, feeds)
    except NotImplementedError:
        return None
    except MemoryError:
        raise FuserError(
            f"{_where(graph, node)}: evaluating it on its constant inputs runs out of memory"
        ) from None
    except Exception as e:
        if "no implementation" in str(e).lower() or "not implemented" in str(e).lower():
            return None
        msg = " ".join(str(e).split())[:200]
        raise FuserError(
            f"{_where(graph, node)}: invalid model: evaluating it on its constant inputs fails "
            f"({type(e).__name__}: {msg}); fix the model"
        ) from None
    return [np.asarray(a) for a in outs]


def _shape_from(graph: Graph, node: Node, values: np.ndarray) -> tuple[int, ...]:
    shape = tuple(int(d) for d in np.asarray(values).reshape(-1))
    if any(d < 0 for d in shape):
        raise FuserError(f"{_where(graph, node)}: invalid model: negative dim in shape {list(shape)}")
    numel = int(np.prod(shape, dtype=object))
    if numel > MAX_SPLAT_ELEMENTS:
        raise FuserError(
            f"{_where(graph, node)}: makes a tensor of {numel:,} elements (shape {list(shape)}), more "
            f"than fuser handles ({MAX_SPLAT_ELEMENTS:,}); fix the model or its input shapes"
        )
    return shape


def _is_random(node: Node) -> bool:
    if node.op == "Dropout":  # training_mode (opset 12+) true drops a random mask each run
        mode = node.input(2)
        return mode is not None and (not mode.is_const or bool(np.asarray(mode.const).any()))
    return node.op in RANDOM_OPS


def _range_fits(node: Node) -> bool:
    start, limit, delta = (float(np.asarray(v.const).reshape(-1)[0]) for v in node.inputs[:3])
    if delta == 0 or not np.isfinite([start, limit, delta]).all():
        return False
    return max(np.ceil((limit - start) / delta), 0) <= MAX_FOLDED_ELEMENTS


def _fold(graph: Graph, node: Node) -> list[np.ndarray] | None:
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
    if any(v is not None and not v.is_const for v in ins) or _is_random(node):
        return None
    if node.op == "ConstantOfShape":
        fill = node.attr("value", np.zeros(1, np.float32)).reshape(-1)[:1]
        return [np.broadcast_to(fill.reshape(()), _shape_from(graph, node, ins[0].const))]
    if node.op == "Expand" and ins[0].const.size == 1:
        try:
            shape = np.broadcast_shapes(ins[0].const.shape, _shape_from(graph, node, ins[1].const))
        except ValueError:
            return None  # shape inference names the mismatch
        return [np.broadcast_to(ins[0].const.reshape(()), shape)]
    if any(v.is_static and v.numel > MAX_FOLDED_ELEMENTS for v in node.outputs):
        return None
    if node.op == "Range" and not _range_fits(node):
        return None
    if not all(v.is_static for v in node.outputs) and (
        node.op not in BOUNDED_BY_INPUTS
        or sum(v.const.size for v in ins if v is not None) > MAX_FOLDED_ELEMENTS
    ):
        return None
    arrays = _evaluate(graph, node)
    if arrays is None or any(a.size > MAX_FOLDED_ELEMENTS for a in arrays):
        return None
    return arrays


def _carries_weights(node: Node, index: int) -> bool:
    v = node.inputs[index]
    if v is None or v.derived:
        return False
    if weight_role(node, index) is not None:
        return True
    # integer-stored weights become float ones through a Cast
    return node.op == "Cast" and v.is_const and v.numel > 1


def run(graph: Graph) -> PassResult:
    folded = 0
    for node in list(graph.nodes):
        if any(graph.is_output(v) for v in node.outputs):
            continue
        arrays = _fold(graph, node)
        if arrays is None:
            continue
        # ConstantOfShape fills stand for initializers (exporters write zero biases and stand-in
        # weights that way), so they are never derived
        derived = node.op != "ConstantOfShape" and not any(
            _carries_weights(node, i) for i in range(len(node.inputs))
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
