"""The IR as ONNX protos: the one IR -> ModelProto writer (export and shape inference both
use it) and the decoders of ONNX tensors, attributes and value types that import uses.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fuser.ir import FuserError, Graph, Node, Value, constant_value, is_splat

from .files import atomic_write

MAX_IR_VERSION = 10  # what the pinned onnxruntime reads


# ---- ONNX -> numpy / Python -------------------------------------------------------
def np_dtype(elem_type: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def value_shape(vi: onnx.ValueInfoProto) -> tuple | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim)


def attr_value(a: onnx.AttributeProto, where: str) -> Any:
    if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        raise FuserError(
            f"{where}: has a subgraph attribute '{a.name}' (control flow); fuser handles static graphs only"
        )
    v = helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, onnx.TensorProto):
        return numpy_helper.to_array(v)
    if isinstance(v, list) and v and isinstance(v[0], bytes):
        return [s.decode() for s in v]
    return v


def constant_node_value(node: onnx.NodeProto, where: str) -> np.ndarray:
    """The tensor an ONNX Constant node holds."""
    return constant_value({a.name: attr_value(a, where) for a in node.attribute}, where)


# ---- IR -> ONNX -------------------------------------------------------------------
def tensor_proto(name: str, a: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(a, order="C"), name)  # keeps 0-d arrays 0-d


def attribute_proto(key: str, v: Any) -> onnx.AttributeProto:
    if isinstance(v, np.ndarray):
        return helper.make_attribute(key, tensor_proto("", v))
    if isinstance(v, (list, tuple)) and len(v) == 0:
        return helper.make_attribute(key, [], attr_type=onnx.AttributeProto.INTS)
    return helper.make_attribute(key, v)


def value_info(v: Value) -> onnx.ValueInfoProto:
    elem = helper.np_dtype_to_tensor_dtype(v.dtype) if v.dtype is not None else 0
    return helper.make_tensor_value_info(v.name, elem, list(v.shape) if v.shape is not None else None)


def node_proto(n: Node) -> onnx.NodeProto:
    proto = helper.make_node(
        n.op,
        [v.name if v is not None else "" for v in n.inputs],
        [v.name for v in n.outputs],
        name=n.name,
        domain=n.domain or None,
    )
    proto.attribute.extend(attribute_proto(k, a) for k, a in sorted(n.attrs.items()))
    return proto


def _model(graph: Graph, nodes, inputs, outputs, inits, value_infos=(), doc: str = "") -> onnx.ModelProto:
    g = helper.make_graph(nodes, graph.name, inputs, outputs, inits, value_info=list(value_infos))
    model = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", graph.opset)], producer_name="fuser", doc_string=doc
    )
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    return model


def to_onnx(graph: Graph, *, doc: str = "") -> onnx.ModelProto:
    """Export the graph as an ONNX model that ONNX Runtime can run."""
    nodes, inits, emitted = [], [], set()
    for v in graph.values():
        if not v.is_const or v.name in emitted:
            continue
        emitted.add(v.name)
        if v.const.size > 16 and is_splat(v.const):  # keep fills small on disk
            fill = tensor_proto("", v.const.reshape(-1)[:1].copy())
            shape = graph.unique_name(f"{v.name}_shape")
            inits.append(tensor_proto(shape, np.array(v.const.shape, dtype=np.int64)))
            nodes.append(
                helper.make_node(
                    "ConstantOfShape", [shape], [v.name], name=graph.unique_name(f"{v.name}_fill"), value=fill
                )
            )
        else:
            inits.append(tensor_proto(v.name, v.const))
    nodes.extend(node_proto(n) for n in graph.nodes)
    inner = [v for n in graph.nodes for v in n.outputs if v.shape is not None and not graph.is_output(v)]
    return _model(
        graph,
        nodes,
        [value_info(v) for v in graph.inputs],
        [value_info(v) for v in graph.outputs],
        inits,
        [value_info(v) for v in inner],
        doc,
    )


def shape_inference_model(graph: Graph, inline_limit: int) -> onnx.ModelProto:
    """The graph without its weight bytes, for onnx's shape inference: constants of up to
    ``inline_limit`` elements (those that may carry shape data) inline, the rest as typed
    inputs; outputs untyped, so inference fills them in."""
    inputs = [value_info(v) for v in graph.inputs]
    inits = []
    for v in graph.constants():
        if v.const.size <= inline_limit:
            inits.append(tensor_proto(v.name, v.const))
        else:
            inputs.append(value_info(v))
    outputs = [helper.make_tensor_value_info(v.name, 0, None) for v in graph.outputs]
    return _model(graph, [node_proto(n) for n in graph.nodes], inputs, outputs, inits)


def save_onnx(
    model: onnx.ModelProto | Graph, path: str | os.PathLike, *, protect: Sequence[str | os.PathLike] = ()
) -> None:
    """Save an ONNX model (or a Graph, exported first) atomically."""
    if isinstance(model, Graph):
        model = to_onnx(model)
    atomic_write(path, model.SerializeToString(deterministic=True), protect=protect)
