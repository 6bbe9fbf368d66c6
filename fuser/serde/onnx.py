"""The IR as ONNX protos: the one IR -> ModelProto writer (export and shape inference both
use it) and the decoders of ONNX tensors, attributes and value types that import uses.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fuser.ir import FuserError, Graph, Node, Value, constant_value, is_splat
from fuser.ir.ops import SCHEMAS

from .files import atomic_write

MAX_IR_VERSION = 10  # what the pinned onnxruntime reads


# ---- ONNX -> numpy / Python -------------------------------------------------------
MAX_TENSOR_ELEMENTS = 1 << 40  # a tensor that claims more is refused before numpy tries


def np_dtype(elem_type: int, where: str = "") -> np.dtype:
    """The numpy dtype of an ONNX element type; ``where`` names the holder in the error."""
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        raise FuserError(
            f"{where or 'a tensor'}: unknown ONNX element type {elem_type}; the file is damaged or "
            "was written by a newer onnx"
        ) from None


def decode_tensor(t: onnx.TensorProto, where: str) -> np.ndarray:
    """A TensorProto as numpy, or a FuserError saying why its bytes do not make one."""
    dtype = np_dtype(t.data_type, where)
    dims = list(t.dims)
    if any(d < 0 for d in dims):
        raise FuserError(f"{where}: negative dims {dims}; the file is damaged")
    numel = int(np.prod(dims, dtype=object))
    if numel > MAX_TENSOR_ELEMENTS:
        raise FuserError(f"{where}: dims {dims} claim {numel:,} elements; the file is damaged")
    if t.data_location == onnx.TensorProto.EXTERNAL:
        raise FuserError(f"{where}: its external data is not loaded")
    if t.HasField("raw_data") and dtype.kind not in "OUS":
        need = numel * dtype.itemsize if dtype.itemsize else 0
        if t.data_type in _PACKED_TYPES:  # 4-bit and 2-bit types pack several per byte
            need = -(-numel * _PACKED_TYPES[t.data_type] // 8)
        if len(t.raw_data) != need:
            raise FuserError(
                f"{where}: holds {len(t.raw_data)} bytes of data, its dims {dims} ({dtype.name}) need "
                f"{need}; the file is damaged or truncated"
            )
    try:
        return numpy_helper.to_array(t)
    except Exception as e:
        raise FuserError(
            f"{where}: cannot be decoded ({type(e).__name__}: {str(e)[:120]}); the file is damaged"
        ) from None


_PACKED_TYPES = {
    getattr(onnx.TensorProto, n): bits
    for n, bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2))
    if hasattr(onnx.TensorProto, n)
}


def value_shape(vi: onnx.ValueInfoProto) -> tuple | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim)


def _text(b: bytes) -> str | bytes:
    try:
        return b.decode()
    except UnicodeDecodeError:
        return b  # STRING attributes are bytes in ONNX; keep them as they are


def attr_value(a: onnx.AttributeProto, where: str) -> Any:
    if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        raise FuserError(
            f"{where}: has a subgraph attribute '{a.name}' (control flow); fuser handles static graphs only"
        )
    if a.type == onnx.AttributeProto.TENSOR:
        return decode_tensor(a.t, f"{where}: attribute '{a.name}'")
    if a.type == onnx.AttributeProto.TENSORS:
        return [decode_tensor(t, f"{where}: attribute '{a.name}'") for t in a.tensors]
    try:
        v = helper.get_attribute_value(a)
    except Exception as e:
        raise FuserError(
            f"{where}: attribute '{a.name}' has no usable value ({type(e).__name__}); the file is damaged"
        ) from None
    if isinstance(v, bytes):
        return _text(v)
    if isinstance(v, list) and v and isinstance(v[0], bytes):
        return [_text(s) for s in v]
    return v


_NODE_IN_MESSAGE = (
    re.compile(r"\(op_type:\s*(?P<op>[\w.]+)(?:,\s*node name:\s*(?P<name>[^)]*))?\)"),
    # onnx.checker: "... of node: name: c0 OpType: Conv ..."
    re.compile(r"\bName:\s*(?P<name>.*?)\s+OpType:\s*(?P<op>[\w.]+)", re.IGNORECASE),
)


def checker_error(source: str, e: Exception, what: str = "invalid model") -> FuserError:
    """onnx's checker / shape-inference message as one line naming the node and op."""
    raw = str(e)
    text = " ".join(raw.split())
    text = re.sub(r"\s*==> Context:.*$", "", text)
    text = re.sub(r"\[ShapeInferenceError\] Inference error\(s\):\s*", "", text)
    for pattern in _NODE_IN_MESSAGE:
        m = pattern.search(raw)
        if m:
            name = (m.group("name") or "").strip()
            detail = _NODE_IN_MESSAGE[0].sub("", text).strip(" :")
            where = f"node '{name}' ({m.group('op')})" if name else f"a {m.group('op')} node"
            return FuserError(f"{source}: {where}: {what}: {detail[:300]}; fix or re-export the model")
    return FuserError(f"{source}: {what}: {text[:300]}; fix or re-export the model")


def decode_sparse(sp: onnx.SparseTensorProto, where: str) -> np.ndarray:
    """A SparseTensorProto as a dense array (indices linear [NNZ] or per dim [NNZ, rank])."""
    values = decode_tensor(sp.values, f"{where}: values")
    indices = decode_tensor(sp.indices, f"{where}: indices").astype(np.int64)
    dims = [int(d) for d in sp.dims]
    if any(d < 0 for d in dims) or int(np.prod(dims, dtype=object)) > MAX_TENSOR_ELEMENTS:
        raise FuserError(f"{where}: sparse tensor dims {dims} are invalid; the file is damaged")
    dense = np.zeros(dims, values.dtype)
    try:
        if indices.ndim == 1:
            dense.reshape(-1)[indices] = values.reshape(-1)
        else:
            dense[tuple(indices.T)] = values.reshape(-1)
    except (IndexError, ValueError) as e:
        raise FuserError(f"{where}: sparse tensor indices do not fit its dims {dims} ({e})") from None
    return dense


def constant_node_value(node: onnx.NodeProto, where: str) -> np.ndarray:
    """The tensor an ONNX Constant node holds (any of its value attributes)."""
    attrs = {}
    for a in node.attribute:
        if a.name == "sparse_value":
            attrs["value"] = decode_sparse(a.sparse_tensor, f"{where}: attribute 'sparse_value'")
        elif a.name in ("value_string", "value_strings"):
            attrs["value"] = np.array(attr_value(a, where), dtype=object)
        else:
            attrs[a.name] = attr_value(a, where)
    return constant_value(attrs, where)


# ---- IR -> ONNX -------------------------------------------------------------------
def tensor_proto(name: str, a: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(a, order="C"), name)  # keeps 0-d arrays 0-d


def attribute_proto(key: str, v: Any, op: str | None = None) -> onnx.AttributeProto:
    """An attribute of op ``op`` (its schema settles the type of an empty list or an int
    given where a float is declared)."""
    declared = _declared_type(op, key)
    if isinstance(v, np.ndarray):
        return helper.make_attribute(key, tensor_proto("", v))
    if isinstance(v, (list, tuple)) and v and all(isinstance(a, np.ndarray) for a in v):
        return helper.make_attribute(key, [tensor_proto("", a) for a in v])
    if isinstance(v, (list, tuple)) and len(v) == 0:
        empty = declared if declared in _LIST_TYPES else onnx.AttributeProto.INTS
        return helper.make_attribute(key, [], attr_type=empty)
    if declared == onnx.AttributeProto.FLOAT and isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        v = float(v)
    elif declared == onnx.AttributeProto.FLOATS and isinstance(v, (list, tuple)):
        v = [float(a) for a in v]
    return helper.make_attribute(key, v)


_LIST_TYPES = {
    onnx.AttributeProto.INTS,
    onnx.AttributeProto.FLOATS,
    onnx.AttributeProto.STRINGS,
    onnx.AttributeProto.TENSORS,
}


def _declared_type(op: str | None, key: str) -> int | None:
    schema = SCHEMAS.get(op) if op else None
    a = schema.attributes.get(key) if schema is not None else None
    return int(a.type) if a is not None else None


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
    proto.attribute.extend(attribute_proto(k, a, n.op) for k, a in sorted(n.attrs.items()))
    return proto


def _model(graph: Graph, nodes, inputs, outputs, inits, value_infos=(), doc: str = "") -> onnx.ModelProto:
    g = helper.make_graph(nodes, graph.name, inputs, outputs, inits, value_info=list(value_infos))
    model = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", graph.opset)], producer_name="fuser", doc_string=doc
    )
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    return model


def _fresh(base: str, taken: set[str]) -> str:
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}{k}"
    taken.add(name)
    return name


def to_onnx(graph: Graph, *, doc: str = "") -> onnx.ModelProto:
    """Export the graph as an ONNX model that ONNX Runtime can run, every value under its own
    name. The graph is not changed (the names of the nodes and shapes it adds are this call's
    own): the same graph gives the same bytes every time."""
    values = graph.values()
    taken = {v.name for v in values} | {n.name for n in graph.nodes}
    nodes, inits, emitted = [], [], set()
    for v in values:
        if not v.is_const or v.name in emitted:
            continue
        emitted.add(v.name)
        if v.const.size > 16 and is_splat(v.const):  # keep fills small on disk
            fill = tensor_proto("", v.const.reshape(-1)[:1].copy())
            shape = _fresh(f"{v.name}.shape", taken)
            inits.append(tensor_proto(shape, np.array(v.const.shape, dtype=np.int64)))
            nodes.append(
                helper.make_node(
                    "ConstantOfShape", [shape], [v.name], name=_fresh(f"{v.name}_fill", taken), value=fill
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


def shape_inference_model(graph: Graph, inline_limit: int, known: Sequence[Value] = ()) -> onnx.ModelProto:
    """The graph without its weight bytes, for onnx's shape inference: constants of up to
    ``inline_limit`` elements (those that may carry shape data) inline, the rest as typed
    inputs; outputs untyped, so inference fills them in; ``known``: values whose types are
    given (fuser's own shape rules)."""
    inputs = [value_info(v) for v in graph.inputs]
    inits = []
    for v in graph.constants():
        if v.const.size <= inline_limit:
            inits.append(tensor_proto(v.name, v.const))
        else:
            inputs.append(value_info(v))
    # outputs a node makes go untyped (inference fills them in); an input or constant that is
    # also an output keeps its type
    outputs = [
        helper.make_tensor_value_info(v.name, 0, None) if v.producer is not None else value_info(v)
        for v in graph.outputs
    ]
    return _model(graph, [node_proto(n) for n in graph.nodes], inputs, outputs, inits, map(value_info, known))


def save_onnx(
    model: onnx.ModelProto | Graph, path: str | os.PathLike, *, protect: Sequence[str | os.PathLike] = ()
) -> None:
    """Save an ONNX model (or a Graph, exported first) atomically."""
    if isinstance(model, Graph):
        model = to_onnx(model)
    atomic_write(path, model.SerializeToString(deterministic=True), protect=protect)
