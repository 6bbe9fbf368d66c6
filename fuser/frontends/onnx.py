"""ONNX files in: ``from_onnx`` reads a model into a Graph with static shapes.

Import refuses what fuser cannot reason about (unknown ops, control flow,
external data that escapes the model's folder, dynamic dims left unfixed) with
a one-line FuserError naming the file, node and op. After import every value
has a static shape: shape-computing subgraphs are folded to constants.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx

from fuser.analysis.shapes import infer_shapes
from fuser.ir import FuserError, Graph, Node, Value
from fuser.ir.ops import CONTROL_FLOW_OPS, OPS
from fuser.serde.onnx import attr_value, constant_node_value, np_dtype, value_shape

from .normalize import static_shapes

InputShapes = Mapping[str, Sequence[int]] | Sequence[int] | None


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
        values[t.name] = Value(t.name, const=onnx.numpy_helper.to_array(t))
        graph._names.add(t.name)
    real_inputs = [vi for vi in g.input if vi.name not in values]
    shapes = parse_input_shapes(input_shapes, [vi.name for vi in real_inputs], source)
    for vi in real_inputs:
        if not vi.type.HasField("tensor_type"):
            raise FuserError(f"{source}: input '{vi.name}' is not a tensor; fuser needs tensor inputs")
        shape = shapes.get(vi.name, value_shape(vi))
        declared = value_shape(vi)
        if vi.name in shapes and declared is not None and len(declared) != len(shape):
            raise FuserError(
                f"{source}: --input-shape for '{vi.name}' has {len(shape)} dims, "
                f"the model declares {len(declared)} {list(declared)}"
            )
        if shape is None or not all(isinstance(d, int) and d > 0 for d in shape):
            raise FuserError(_dynamic_dims_message(source, vi.name, shape))
        v = graph.add_input(vi.name, shape, np_dtype(vi.type.tensor_type.elem_type))
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
        if n.op_type not in OPS:
            raise FuserError(f"{where}: op '{n.op_type}' is not supported by fuser")
        if n.op_type == "Constant":
            arr = constant_node_value(n, where)
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
        attrs = {a.name: attr_value(a, where) for a in n.attribute}
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
            v.dtype = np_dtype(vi.type.tensor_type.elem_type)

    read = len(graph.nodes)
    static_shapes(graph) if fold else infer_shapes(graph)
    constants = sum(n.op_type == "Constant" for n in g.node)
    graph.meta["import"] = {
        "nodes_in_file": len(g.node),
        "constant_nodes": constants,  # became constant values, not nodes
        "folded": read - len(graph.nodes),  # shape subgraphs evaluated at import
        "nodes": len(graph.nodes),
    }
    return graph
