"""Static shape inference for the IR, by onnx.shape_inference.

``infer_shapes`` round-trips a weight-free copy of the graph through ONNX's
shape inference (large constants travel as typed inputs, so no weight bytes
are serialised). ``static_shapes`` alternates inference with constant folding
until shape-computing subgraphs (Shape -> Gather -> Concat -> Reshape) are
gone, then insists that every value has a static shape.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from fuser.ir import FuserError, Graph, Value

INLINE_CONST_LIMIT = 1024  # constants up to this many elements may carry shape data


def _vi(v: Value) -> onnx.ValueInfoProto:
    elem = helper.np_dtype_to_tensor_dtype(v.dtype) if v.dtype is not None else 0
    return helper.make_tensor_value_info(v.name, elem, list(v.shape) if v.shape else v.shape)


def infer_shapes(graph: Graph, strict: bool = True) -> Graph:
    """Fill in ``shape`` and ``dtype`` of every node output, in place."""
    from fuser.serde.onnx import MAX_IR_VERSION, _attr, _tensor

    inputs = [_vi(v) for v in graph.inputs]
    inits = []
    for v in graph.constants():
        if v.const.size <= INLINE_CONST_LIMIT:
            inits.append(_tensor(v.name, v.const))
        else:
            inputs.append(_vi(v))
    nodes = []
    for n in graph.nodes:
        p = helper.make_node(
            n.op,
            [v.name if v is not None else "" for v in n.inputs],
            [v.name for v in n.outputs],
            name=n.name,
            domain=n.domain or None,
        )
        p.attribute.extend(_attr(k, a) for k, a in sorted(n.attrs.items()))
        nodes.append(p)
    outs = [helper.make_tensor_value_info(v.name, 0, None) for v in graph.outputs]
    g = helper.make_graph(nodes, graph.name, inputs, outs, inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", graph.opset)])
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=strict, data_prop=True)
    except Exception as e:  # InferenceError carries the node in its text
        msg = " ".join(str(e).split())
        raise FuserError(f"{graph.source}: shape inference failed: {msg[:400]}") from None
    known = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if not t.elem_type:
            continue
        shape = None
        if t.HasField("shape"):
            shape = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim
            )
        known[vi.name] = (shape, np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)))
    for n in graph.nodes:
        for v in n.outputs:
            if v.name in known:
                shape, dtype = known[v.name]
                if shape is not None:
                    v.shape = shape
                v.dtype = dtype
    return graph


def static_shapes(graph: Graph, max_rounds: int = 8) -> Graph:
    """Infer shapes and fold shape subgraphs until fixpoint; every value must end static."""
    from fuser.passes import fold_constants, lower_sequences

    # ONNX's inference rejects SplitToSequence with a scalar split: lower those first,
    # round by round as the shapes of their inputs become known.
    while any(n.op in lower_sequences.SEQUENCE_OPS for n in graph.nodes):
        infer_shapes(graph, strict=False)
        if not lower_sequences.run(graph, defer_unknown=True).changed:
            lower_sequences.run(graph)  # raises, naming the node
            break
    for _ in range(max_rounds):
        infer_shapes(graph)
        lowered = lower_sequences.run(graph).changed
        if not fold_constants.run(graph).changed and not lowered:
            break
    for n in graph.nodes:
        for v in n.outputs:
            if v.uses or graph.is_output(v):
                if not v.is_static or v.dtype is None:
                    raise FuserError(
                        f"{graph.source}: node '{n.name}' ({n.op}): output '{v.name}' has no "
                        f"static shape ({v.type_str()}); fix the input shapes with --input-shape"
                    )
    return graph
