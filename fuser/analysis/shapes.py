"""Static shape inference for the IR, by onnx.shape_inference.

``infer_shapes`` round-trips a weight-free copy of the graph through ONNX's shape
inference (large constants travel as typed inputs, so no weight bytes are serialised).
"""

from __future__ import annotations

import onnx

from fuser.ir import FuserError, Graph
from fuser.serde.onnx import np_dtype, shape_inference_model, value_shape

INLINE_CONST_LIMIT = 1024  # constants up to this many elements may carry shape data


def infer_shapes(graph: Graph, strict: bool = True) -> Graph:
    """Fill in ``shape`` and ``dtype`` of every node output, in place."""
    model = shape_inference_model(graph, INLINE_CONST_LIMIT)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=strict, data_prop=True)
    except Exception as e:  # InferenceError carries the node in its text
        msg = " ".join(str(e).split())
        raise FuserError(f"{graph.source}: shape inference failed: {msg[:400]}") from None
    known = {
        vi.name: (value_shape(vi), np_dtype(vi.type.tensor_type.elem_type))
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output)
        if vi.type.tensor_type.elem_type
    }
    for n in graph.nodes:
        for v in n.outputs:
            if v.name in known:
                shape, dtype = known[v.name]
                if shape is not None:
                    v.shape = shape
                v.dtype = dtype
    return graph
