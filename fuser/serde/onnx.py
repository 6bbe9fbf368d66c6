"""ONNX in and out of the IR: ``from_onnx``, ``to_onnx``, ``save_onnx``.

Import refuses what fuser cannot reason about (unknown ops, control flow,
external data that escapes the model's folder, dynamic dims left unfixed) with
a one-line FuserError naming the file, node and op. After import every value
has a static shape: shape-computing subgraphs are folded to constants.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fuser.ir import FuserError, Graph, Node, Value, is_splat
from fuser.ir.ops import CONTROL_FLOW_OPS, SEQUENCE_OPS, SUPPORTED_OPS

InputShapes = Mapping[str, Sequence[int]] | Sequence[int] | None
MAX_IR_VERSION = 10  # what the pinned onnxruntime reads


# ---- loading ----------------------------------------------------------------
def load_model(path_or_model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Read and sanity-check an ONNX model; returns (model, source name for errors)."""
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model, "<ModelProto>"
    path = Path(path_or_model)
    src = str(path)
    if not path.is_file():
        raise FuserError(f"{src}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError and friends
        raise FuserError(
            f"{src}: not a readable ONNX model ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'parse failed'}); "
            "is the file complete?"
        ) from None
    if not model.graph.node or not model.graph.output or model.ir_version == 0:
        raise FuserError(
            f"{src}: not an ONNX model (no graph, nodes or outputs); "
            "is the file truncated or of another format?"
        )
    _load_external_data(model, path)
    return model, src


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    base = path.resolve().parent
    external = [
        t
        for t in onnx.external_data_helper._get_all_tensors(model)
        if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    for t in external:
        location = {e.key: e.value for e in t.external_data}.get("location", "")
        target = (base / location).resolve()
        if base not in target.parents:
            raise FuserError(
                f"{path}: tensor '{t.name}' points to external data '{location}' "
                "outside the model's folder; refusing to read it"
            )
        if not target.is_file():
            raise FuserError(
                f"{path}: tensor '{t.name}' needs external data file '{location}', which is missing"
            )
    if external:
        onnx.external_data_helper.load_external_data_for_model(model, str(base))


# ---- ONNX -> IR -----------------------------------------------------------------
def _np_dtype(elem_type: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def _value_shape(vi: onnx.ValueInfoProto) -> tuple | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim)


def _attr_value(a: onnx.AttributeProto, where: str) -> Any:
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


def _constant_node_value(node: onnx.NodeProto, where: str) -> np.ndarray:
    (a,) = node.attribute
    if a.name == "value":
        return numpy_helper.to_array(a.t)
    if a.name in ("value_float", "value_floats"):
        return np.asarray(helper.get_attribute_value(a), dtype=np.float32)
    if a.name in ("value_int", "value_ints"):
        return np.asarray(helper.get_attribute_value(a), dtype=np.int64)
    raise FuserError(f"{where}: Constant with attribute '{a.name}' is not supported")


def parse_input_shapes(
    input_shapes: InputShapes, graph_inputs: Sequence[str], source: str
) -> dict[str, tuple[int, ...]]:
    if input_shapes is None:
        return {}
    if isinstance(input_shapes, Mapping):
        unknown = set(input_shapes) - set(graph_inputs)
        if unknown:
            raise FuserError(
                f"{source}: --input-shape names unknown input(s) {sorted(unknown)}; "
                f"the model's inputs are {list(graph_inputs)}"
            )
        return {k: tuple(int(d) for d in v) for k, v in input_shapes.items()}
    if len(graph_inputs) != 1:
        raise FuserError(
            f"{source}: the model has {len(graph_inputs)} inputs "
            f"{list(graph_inputs)}; name each one: --input-shape NAME:1,3,224,224"
        )
    return {graph_inputs[0]: tuple(int(d) for d in input_shapes)}


def _dynamic_dims_message(source: str, name: str, shape: tuple | None) -> str:
    if shape is None:
        return (
            f"{source}: input '{name}' has no declared shape; give it with "
            f"--input-shape {name}:1,3,224,224 (your numbers)"
        )
    names = [
        d if isinstance(d, str) and d not in ("?", "") and d.isidentifier() else ("N" if i == 0 else f"D{i}")
        for i, d in enumerate(shape)
    ]
    shown = ",".join(str(d) if isinstance(d, int) and d > 0 else n for d, n in zip(shape, names))
    example = ",".join(
        str(d) if isinstance(d, int) and d > 0 else ("1" if i == 0 else n)
        for i, (d, n) in enumerate(zip(shape, names))
    )
    unknown = [
        n for i, (d, n) in enumerate(zip(shape, names)) if i > 0 and not (isinstance(d, int) and d > 0)
    ] or ["the batch"]
    return (
        f"{source}: input '{name}' has dynamic dims [{shown}]; fix them with "
        f"--input-shape {name}:{example} putting numbers for {', '.join(unknown)} "
        f"(Python: input_shapes={{'{name}': (...)}})"
    )


def from_onnx(path_or_model, input_shapes: InputShapes = None, *, fold: bool = True) -> Graph:
    """Import an ONNX model (path or ModelProto) into a Graph with static shapes.

    ``input_shapes`` fixes dynamic dims: ``{"x": (1, 3, 224, 224)}``, or one
    shape for a single-input model.
    """
    model, source = load_model(path_or_model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise FuserError(f"{source}: no default-domain opset import; not a standard ONNX model")
    g = model.graph
    graph = Graph(name=g.name or Path(source).stem, opset=opset, source=source)
    values: dict[str, Value] = {}

    for t in g.initializer:
        values[t.name] = Value(t.name, const=numpy_helper.to_array(t))
        graph._names.add(t.name)
    real_inputs = [vi for vi in g.input if vi.name not in values]
    shapes = parse_input_shapes(input_shapes, [vi.name for vi in real_inputs], source)
    for vi in real_inputs:
        if not vi.type.HasField("tensor_type"):
            raise FuserError(f"{source}: input '{vi.name}' is not a tensor; fuser needs tensor inputs")
        shape = shapes.get(vi.name, _value_shape(vi))
        declared = _value_shape(vi)
        if vi.name in shapes and declared is not None and len(declared) != len(shape):
            raise FuserError(
                f"{source}: --input-shape for '{vi.name}' has {len(shape)} dims, "
                f"the model declares {len(declared)} {list(declared)}"
            )
        if shape is None or not all(isinstance(d, int) and d > 0 for d in shape):
            raise FuserError(_dynamic_dims_message(source, vi.name, shape))
        v = graph.add_input(vi.name, shape, _np_dtype(vi.type.tensor_type.elem_type))
        values[vi.name] = v

    for i, n in enumerate(g.node):
        name = graph.unique_name(n.name or f"{n.op_type}_{i}")
        where = f"{source}: node '{name}' ({n.op_type})"
        if n.domain not in ("", "ai.onnx"):
            raise FuserError(
                f"{where}: custom-domain op '{n.domain}::{n.op_type}' is not "
                "supported; export the model with standard ONNX ops"
            )
        if n.op_type in CONTROL_FLOW_OPS:
            raise FuserError(
                f"{where}: control flow is not supported; export a static graph "
                "(no If/Loop/Scan), e.g. by fixing the branch at export time"
            )
        if n.op_type not in SUPPORTED_OPS | SEQUENCE_OPS:
            raise FuserError(f"{where}: op '{n.op_type}' is not supported by fuser")
        if n.op_type == "Constant":
            arr = _constant_node_value(n, where)
            values[n.output[0]] = Value(graph.unique_name(n.output[0]), const=arr)
            continue
        ins = []
        for x in n.input:
            if x == "":
                ins.append(None)
            elif x not in values:
                raise FuserError(
                    f"{where}: input '{x}' is not defined before use; "
                    "the graph is not topologically sorted or is incomplete"
                )
            else:
                ins.append(values[x])
        attrs = {a.name: _attr_value(a, where) for a in n.attribute}
        outs = []
        for x in n.output:
            v = Value(graph.unique_name(x or f"{name}_unused"), None, None)
            if x:
                values[x] = v
            outs.append(v)
        graph.insert_node(Node(n.op_type, ins, outs, attrs, name))

    for vi in g.output:
        if vi.name not in values:
            raise FuserError(f"{source}: output '{vi.name}' is not produced by any node")
        graph.outputs.append(values[vi.name])
    # Declared types for values (ONNX value_info) seed shape inference.
    for vi in list(g.value_info) + list(g.output):
        v = values.get(vi.name)
        if v is not None and v.dtype is None and vi.type.tensor_type.elem_type:
            v.dtype = _np_dtype(vi.type.tensor_type.elem_type)

    from fuser.analysis.shapes import infer_shapes, static_shapes

    static_shapes(graph) if fold else infer_shapes(graph)
    return graph


# ---- IR -> ONNX -------------------------------------------------------------
def _tensor(name: str, a: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(a, order="C"), name)  # keeps 0-d arrays 0-d


def _attr(key: str, v: Any) -> onnx.AttributeProto:
    if isinstance(v, np.ndarray):
        return helper.make_attribute(key, _tensor("", v))
    if isinstance(v, (list, tuple)) and len(v) == 0:
        return helper.make_attribute(key, [], attr_type=onnx.AttributeProto.INTS)
    return helper.make_attribute(key, v)


def _value_info(v: Value) -> onnx.ValueInfoProto:
    elem = helper.np_dtype_to_tensor_dtype(v.dtype) if v.dtype is not None else 0
    return helper.make_tensor_value_info(v.name, elem, list(v.shape) if v.shape is not None else None)


def to_onnx(graph: Graph, *, doc: str = "") -> onnx.ModelProto:
    """Export the graph as an ONNX model that ONNX Runtime can run."""
    nodes, inits, emitted = [], [], set()
    for v in graph.values():
        if not v.is_const or v.name in emitted:
            continue
        emitted.add(v.name)
        if v.const.size > 16 and is_splat(v.const):  # keep fills small on disk
            fill = _tensor("", v.const.reshape(-1)[:1].copy())
            shape = graph.unique_name(f"{v.name}_shape")
            inits.append(_tensor(shape, np.array(v.const.shape, dtype=np.int64)))
            nodes.append(
                helper.make_node(
                    "ConstantOfShape", [shape], [v.name], name=graph.unique_name(f"{v.name}_fill"), value=fill
                )
            )
        else:
            inits.append(_tensor(v.name, v.const))
    for n in graph.nodes:
        proto = helper.make_node(
            n.op,
            [v.name if v is not None else "" for v in n.inputs],
            [v.name for v in n.outputs],
            name=n.name,
            domain=n.domain or None,
        )
        proto.attribute.extend(_attr(k, a) for k, a in sorted(n.attrs.items()))
        nodes.append(proto)
    outputs = graph.outputs
    inner = [v for n in graph.nodes for v in n.outputs if v.shape is not None and not graph.is_output(v)]
    g = helper.make_graph(
        nodes,
        graph.name,
        [_value_info(v) for v in graph.inputs],
        [_value_info(v) for v in outputs],
        inits,
        value_info=[_value_info(v) for v in inner],
    )
    model = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", graph.opset)], producer_name="fuser", doc_string=doc
    )
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    return model


def atomic_write(path: str | os.PathLike, data: bytes, *, protect: Sequence[str | os.PathLike] = ()) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename; never over an input."""
    path = Path(path)
    for p in protect:
        if Path(p).exists() and path.exists() and path.resolve() == Path(p).resolve():
            raise FuserError(f"{path}: refusing to overwrite the input; choose another output path")
    if path.parent and not path.parent.exists():
        raise FuserError(f"{path}: folder '{path.parent}' does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_onnx(
    model: onnx.ModelProto | Graph, path: str | os.PathLike, *, protect: Sequence[str | os.PathLike] = ()
) -> None:
    """Save an ONNX model (or a Graph, exported first) atomically."""
    if isinstance(model, Graph):
        model = to_onnx(model)
    atomic_write(path, model.SerializeToString(deterministic=True), protect=protect)
