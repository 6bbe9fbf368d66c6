"""ONNX files in: ``from_onnx`` reads a model into a Graph with static shapes.

Reading (``read_model``) refuses what is not a readable ONNX file: a missing path, a folder,
a device or FIFO, a file that does not parse, names that are not UTF-8. Validation
(``validate_model``) then refuses what is not a valid model, each with a one-line FuserError
naming the file, node and op:
  - an IR version or default-domain opset that onnx does not know (``MAX_OPSET``);
  - tensors that do not decode (data shorter than the dims say, an unknown data type,
    external data missing, shorter than declared, or outside the model's folder);
  - whatever ``onnx.checker`` rejects with ``full_check`` (attribute names and types, input
    types, shapes that contradict the ones declared), run on a copy without the weight
    bytes (large tensors become typed inputs); a model using an op that onnx deprecated at
    its opset but ONNX Runtime runs (GroupNormalization-18) gets strict type and shape
    inference instead.
Import refuses, by name, ops of other domains, control flow, tensor sequences and optionals
(beyond a split indexed by constants) and non-tensor inputs; every default-domain op onnx
defines is admitted (``fuser.ir.ops``). After import every value has a static shape:
shape-computing subgraphs are folded to constants (``normalize.static_shapes``), and
fuser's own consistency rules (``validate``) hold.

Names are the file's: graph inputs, outputs and every value keep their exact names (node
names, a separate namespace in ONNX, are made unique among nodes). A graph input that also
has an initializer (IR 4+: a default a caller may override) is taken as that constant, as a
deployed model runs it; it is then no longer an input, and ``graph.meta["import"]`` lists it
(``defaults_taken``) so that reports can say so.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import Message

from fuser.analysis.shapes import infer_shapes, own_rule_error
from fuser.ir import FuserError, Graph, Node, Value
from fuser.ir.ops import CONTROL_FLOW_OPS, MAX_OPSET, OPS, SEQUENCE_REFUSED
from fuser.serde.onnx import (
    attr_value,
    checker_error,
    constant_node_value,
    decode_sparse,
    decode_tensor,
    np_dtype,
    value_shape,
)

from .normalize import static_shapes

InputShapes = Mapping[str, Sequence[int]] | Sequence[int] | None
MAX_DIM = 2**31 - 1  # the largest dim --input-shape accepts (ONNX Runtime indexes with int64)
# Tensors up to this many elements keep their values in the copy onnx.checker sees (shape
# inference reads shape tensors from them); bigger ones travel as typed inputs.
CHECK_INLINE_LIMIT = 1024
DEFAULT_DOMAINS = ("", "ai.onnx")


# ---- reading ------------------------------------------------------------------------------
def read_model(path_or_model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """The model as a ModelProto (external data loaded) and its source name for errors."""
    if isinstance(path_or_model, onnx.ModelProto):
        _check_text(path_or_model, "<ModelProto>")
        return path_or_model, "<ModelProto>"
    path = Path(path_or_model)
    src = str(path)
    if not src:
        raise FuserError("MODEL is an empty path; give an .onnx file")
    try:
        st = path.stat()
    except FileNotFoundError:
        raise FuserError(f"{src}: no such file") from None
    except OSError as e:
        raise FuserError(f"{src}: cannot read it ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise FuserError(f"{src}: is a folder; MODEL is an .onnx file")
    if not stat.S_ISREG(st.st_mode):
        raise FuserError(f"{src}: is not a regular file (a device, FIFO or socket); MODEL is an .onnx file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FuserError(f"{src}: cannot read it ({e.strerror or e})") from None
    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:  # protobuf raises DecodeError and friends
        first = str(e).splitlines()[0] if str(e) else "parse failed"
        raise FuserError(
            f"{src}: not a readable ONNX model ({type(e).__name__}: {first}); is the file complete?"
        ) from None
    _check_text(model, src)
    if not model.graph.output or model.ir_version == 0:
        raise FuserError(
            f"{src}: not an ONNX model (no graph, nodes or outputs); "
            "is the file truncated or of another format?"
        )
    if not model.graph.node:  # valid ONNX (outputs that are inputs), but nothing to compile
        raise FuserError(f"{src}: the graph has no nodes; fuser needs a model with at least one operator")
    _load_external_data(model, path, src)
    return model, src


def _check_text(msg: Message, source: str) -> None:
    """ONNX strings are UTF-8; protobuf hands out bytes for ones that are not."""
    for field, value in msg.ListFields():
        if field.type == field.TYPE_STRING:
            for v in value if field.is_repeated else (value,):
                if isinstance(v, bytes):
                    shown = v[:60].decode("utf-8", "backslashreplace")
                    raise FuserError(
                        f"{source}: {msg.DESCRIPTOR.name}.{field.name} '{shown}' is not valid UTF-8; "
                        "ONNX names and strings must be UTF-8 (re-export the model)"
                    )
        elif field.type == field.TYPE_MESSAGE:
            for v in value if field.is_repeated else (value,):
                _check_text(v, source)


def external_data_files(model: onnx.ModelProto, folder: Path) -> list[Path]:
    """The files a model's tensors keep their data in (resolved, inside or outside ``folder``)."""
    files = []
    for t in onnx.external_data_helper._get_all_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            location = {e.key: e.value for e in t.external_data}.get("location", "")
            files.append((folder / location).resolve())
    return list(dict.fromkeys(files))


def model_files(path: str | os.PathLike) -> list[Path]:
    """A model file and the external-data files it names: what an output must never overwrite."""
    path = Path(path)
    files = [path]
    try:
        model = onnx.load(str(path), load_external_data=False)
        files += external_data_files(model, path.resolve().parent)
    except Exception:  # not readable: the import reports it
        pass
    return files


def _external_bytes(info: dict[str, str], key: str, tensor: str, src: str) -> int | None:
    """The byte count an external-data entry gives for ``key`` (offset, length); None when
    absent."""
    text = info.get(key)
    if not text:
        return None
    try:
        count = int(text)
    except ValueError:
        raise FuserError(
            f"{src}: tensor '{tensor}': external data {key} '{text}' is not a number of bytes; "
            "the file is damaged"
        ) from None
    if count < 0:
        raise FuserError(
            f"{src}: tensor '{tensor}': external data {key} {count} is negative; the file is damaged"
        )
    return count


def _load_external_data(model: onnx.ModelProto, path: Path, src: str) -> None:
    base = path.resolve().parent
    external = [
        t
        for t in onnx.external_data_helper._get_all_tensors(model)
        if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    for t in external:
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        target = (base / location).resolve()
        if base not in target.parents:
            raise FuserError(
                f"{src}: tensor '{t.name}' points to external data '{location}' "
                "outside the model's folder; refusing to read it"
            )
        if not target.is_file():
            what = (
                "missing"
                if not target.exists()
                else "a folder, not a file"
                if target.is_dir()
                else "not a regular file (a pipe, socket or device)"
            )
            raise FuserError(
                f"{src}: tensor '{t.name}' needs external data file '{location}', which is {what}"
            )
        offset = _external_bytes(info, "offset", t.name, src) or 0
        length = _external_bytes(info, "length", t.name, src)
        try:
            size = target.stat().st_size
        except OSError as e:
            raise FuserError(f"{src}: tensor '{t.name}': cannot read external data file ({e})") from None
        if offset > size or (length is not None and length > size - offset):
            raise FuserError(
                f"{src}: tensor '{t.name}': external data file '{location}' is shorter than declared "
                f"({size} bytes, needs {offset + (length or 0)}); is the file complete?"
            )
    if external:
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(base))
        except Exception as e:
            raise FuserError(
                f"{src}: cannot read the model's external data ({type(e).__name__}: {e})"
            ) from None


# ---- validation ---------------------------------------------------------------------------
def default_opset(model: onnx.ModelProto, source: str) -> int:
    """The model's default-domain opset, checked against what onnx knows."""
    versions = [o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS]
    if not versions:
        raise FuserError(f"{source}: no default-domain opset import; not a standard ONNX model")
    opset = versions[0]
    if opset < 1 or opset > MAX_OPSET:
        raise FuserError(
            f"{source}: default-domain opset {opset} is not one onnx {onnx.__version__} knows "
            f"(1 to {MAX_OPSET}); re-export the model with opset {MAX_OPSET} or older"
        )
    if model.ir_version > onnx.IR_VERSION:
        raise FuserError(
            f"{source}: IR version {model.ir_version} is newer than onnx {onnx.__version__} reads "
            f"({onnx.IR_VERSION}); re-export with an older onnx"
        )
    return opset


def _tensor_arrays(model: onnx.ModelProto, source: str) -> dict[str, np.ndarray]:
    """Every initializer decoded, sparse ones made dense (named in the error when one does not
    decode)."""
    arrays = {t.name: decode_tensor(t, f"{source}: tensor '{t.name}'") for t in model.graph.initializer}
    for sp in model.graph.sparse_initializer:
        name = sp.values.name
        arrays[name] = decode_sparse(sp, f"{source}: sparse tensor '{name}'")
    return arrays


def _check_copy(model: onnx.ModelProto, arrays: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """The model without its large weights (typed inputs instead), for onnx.checker; sparse
    initializers dense, as ONNX Runtime loads them."""
    g = model.graph
    copy = onnx.ModelProto(
        ir_version=model.ir_version, opset_import=model.opset_import, functions=model.functions
    )
    cg = copy.graph
    cg.name = g.name
    cg.node.extend(g.node)
    cg.input.extend(g.input)
    cg.output.extend(g.output)
    cg.value_info.extend(g.value_info)
    listed = {vi.name for vi in g.input}
    for t in g.initializer:
        if int(np.prod(t.dims, dtype=np.int64)) <= CHECK_INLINE_LIMIT:
            cg.initializer.append(t)
        elif t.name not in listed:
            cg.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    for sp in g.sparse_initializer:
        name = sp.values.name
        if arrays[name].size <= CHECK_INLINE_LIMIT:
            cg.initializer.append(onnx.numpy_helper.from_array(arrays[name], name))
        elif name not in listed:
            cg.input.append(onnx.helper.make_tensor_value_info(name, sp.values.data_type, list(sp.dims)))
    _fill_output_shapes(copy)
    return copy


def validate_model(model: onnx.ModelProto, source: str) -> dict[str, np.ndarray]:
    """Refuse an invalid model (see the module docstring); returns the decoded initializers."""
    default_opset(model, source)
    _check_inputs_defined(model.graph, source)
    arrays = _tensor_arrays(model, source)
    copy = _check_copy(model, arrays)
    try:
        onnx.checker.check_model(copy, full_check=True)
    except Exception as e:  # ValidationError, InferenceError
        if "is deprecated in domain_version" in str(e):
            # an op onnx deprecated at the model's opset (GroupNormalization-18) that ONNX
            # Runtime still runs: types and shapes are checked without the checker's node rules
            _strict_inference(copy, source)
        elif not own_rule_error(e):
            raise checker_error(source, e) from None
        else:
            try:  # inference failed inside an op fuser infers itself: the rest must still pass
                onnx.checker.check_model(copy)
            except Exception as e2:
                raise checker_error(source, e2) from None
    return arrays


def _check_inputs_defined(graph: onnx.GraphProto, source: str) -> None:
    """Refuse a node input nothing defines (a missing initializer): onnx's checker calls it a
    sort-order problem."""
    defined = {vi.name for vi in graph.input} | {t.name for t in graph.initializer}
    defined |= {sp.values.name for sp in graph.sparse_initializer}
    defined.update(name for node in graph.node for name in node.output)
    for node in graph.node:
        for name in node.input:
            if name and name not in defined:
                raise FuserError(
                    f"{source}: node '{node.name}' ({node.op_type}) reads '{name}', which no node, "
                    "input or initializer defines; fix or re-export the model"
                )


def _strict_inference(model: onnx.ModelProto, source: str) -> None:
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as e:
        if not own_rule_error(e):
            raise checker_error(source, e) from None


def _fill_output_shapes(model: onnx.ModelProto) -> None:
    """Graph outputs declared without a shape take the inferred one: the checker wants one,
    ONNX Runtime (and so fuser) does not. Outputs onnx cannot infer leave the copy."""
    missing = [o for o in model.graph.output if not o.type.tensor_type.HasField("shape")]
    if not missing:
        return
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        return  # the checker reports it
    found = {vi.name: vi for vi in list(inferred.graph.output) + list(inferred.graph.value_info)}
    untyped = []
    for o in missing:
        vi = found.get(o.name)
        if vi is not None and vi.type.tensor_type.HasField("shape"):
            o.type.tensor_type.shape.CopyFrom(vi.type.tensor_type.shape)
            if not o.type.tensor_type.elem_type:
                o.type.tensor_type.elem_type = vi.type.tensor_type.elem_type
        else:
            untyped.append(o.name)
    # onnx cannot type them (an op fuser infers itself, e.g. GroupNormalization): fuser's own
    # shape inference after import checks them
    kept = [o for o in model.graph.output if o.name not in untyped]
    del model.graph.output[:]
    model.graph.output.extend(kept)


def load_model(path_or_model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Read and validate an ONNX model; returns (model, source name for errors)."""
    model, source = read_model(path_or_model)
    validate_model(model, source)
    return model, source


# ---- input shapes -------------------------------------------------------------------------
def _dims(values: Sequence, source: str, name: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in values)
    except (TypeError, ValueError):
        raise FuserError(f"{source}: input shape for '{name}' must be integers, got {values!r}") from None
    bad = [d for d in dims if d < 0 or d > MAX_DIM]
    if bad:
        raise FuserError(
            f"{source}: input shape for '{name}' has dim {bad[0]}, outside 0..{MAX_DIM}; "
            "give sizes such as 1,3,224,224"
        )
    return dims


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
        return {k: _dims(v, source, k) for k, v in input_shapes.items()}
    if len(graph_inputs) != 1:
        raise FuserError(
            f"{source}: the model has {len(graph_inputs)} inputs "
            f"{list(graph_inputs)}; name each one: --input-shape NAME:1,3,224,224"
        )
    return {graph_inputs[0]: _dims(input_shapes, source, graph_inputs[0])}


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
    shown = ",".join(str(d) if isinstance(d, int) and d >= 0 else n for d, n in zip(shape, names))
    example = ",".join(
        str(d) if isinstance(d, int) and d >= 0 else ("1" if i == 0 else n)
        for i, (d, n) in enumerate(zip(shape, names))
    )
    unknown = [
        n for i, (d, n) in enumerate(zip(shape, names)) if i > 0 and not (isinstance(d, int) and d >= 0)
    ] or ["the batch"]
    return (
        f"{source}: input '{name}' has dynamic dims [{shown}]; fix them with "
        f"--input-shape {name}:{example} putting numbers for {', '.join(unknown)} "
        f"(Python: input_shapes={{'{name}': (...)}})"
    )


def _changed_shape_message(error: str, changed: Mapping[str, tuple[list, list]]) -> str:
    """A shape error after an input shape the model declares was replaced: the model is fine
    at its own shape, so the advice is about the shape given, not the model."""
    given = ", ".join(
        f"input '{name}' at {declared}, given {shape}" for name, (declared, shape) in changed.items()
    )
    error = error.removesuffix("; fix the model").replace(": invalid model: ", ": ", 1)
    return (
        f"{error}: the model fixes {given}; keep the declared shape, or export the model "
        "with that dim dynamic"
    )


def _type_kind(t: onnx.TypeProto) -> str:
    kind = t.WhichOneof("value")
    return {"sequence_type": "a tensor sequence", "optional_type": "an optional", "map_type": "a map"}.get(
        kind, f"a {kind or 'value without a type'}"
    )


def _fixed_inputs(
    input_values: Mapping[str, object] | None, inputs: Sequence[onnx.ValueInfoProto], source: str
) -> dict[str, Value]:
    """Graph inputs given values: constants of their declared type (and shape, when static)."""
    if not input_values:
        return {}
    declared = {vi.name: vi for vi in inputs}
    unknown = sorted(set(input_values) - set(declared))
    if unknown:
        raise FuserError(
            f"{source}: --input-value names unknown input(s) {unknown}; "
            f"the model's inputs are {list(declared)}"
        )
    fixed = {}
    for name, given in input_values.items():
        vi = declared[name]
        where = f"{source}: --input-value for '{name}'"
        dtype = np_dtype(vi.type.tensor_type.elem_type, where) if vi.type.HasField("tensor_type") else None
        try:
            array = np.asarray(given, dtype=dtype)
        except (TypeError, ValueError, OverflowError) as e:
            raise FuserError(f"{where}: not a {dtype} tensor ({e})") from None
        shape = value_shape(vi)
        if shape is not None and all(isinstance(d, int) for d in shape) and array.shape != shape:
            if array.size != int(np.prod(shape, dtype=np.int64)):
                raise FuserError(
                    f"{where}: {array.size} values, the input's shape {list(shape)} holds another count"
                )
            array = array.reshape(shape)
        elif shape is not None and array.ndim != len(shape):
            raise FuserError(f"{where}: {array.ndim}-d values, the input is {len(shape)}-d {list(shape)}")
        fixed[name] = Value(name, const=array)
    return fixed


# ---- import -------------------------------------------------------------------------------
def _refuse_op(where: str, n: onnx.NodeProto) -> None:
    if n.domain not in DEFAULT_DOMAINS:
        raise FuserError(
            f"{where}: custom-domain op '{n.domain}::{n.op_type}' is not supported; "
            "export the model with standard ONNX ops"
        )
    if n.op_type in CONTROL_FLOW_OPS:
        raise FuserError(
            f"{where}: control flow is not supported; export a static graph "
            "(no If/Loop/Scan), e.g. by fixing the branch at export time"
        )
    if n.op_type in SEQUENCE_REFUSED:
        raise FuserError(
            f"{where}: tensor sequences and optionals are not supported (fuser handles tensors, and "
            "sequences only as a split indexed by constants); export the model without them"
        )
    if n.op_type not in OPS:
        raise FuserError(
            f"{where}: op '{n.op_type}' is not a standard ONNX op (onnx {onnx.__version__}, "
            f"opset {MAX_OPSET}); export the model with standard ops"
        )


def from_onnx(
    path_or_model,
    input_shapes: InputShapes = None,
    *,
    fold: bool = True,
    input_values: Mapping[str, object] | None = None,
) -> Graph:
    """Import an ONNX model (path or ModelProto) into a Graph with static shapes.

    ``input_shapes`` fixes dynamic dims: ``{"x": (1, 3, 224, 224)}``, or one
    shape for a single-input model. ``input_values`` fixes the values of graph inputs that
    shapes depend on (a Reshape's target, a Resize's sizes, reduction axes): each named
    input becomes a constant of its declared type, ``{"axes": [1]}``.
    """
    model, source = read_model(path_or_model)
    g = model.graph
    for i, n in enumerate(g.node):  # refusals by op come first: they say more than the checker
        _refuse_op(f"{source}: node '{n.name or f'{n.op_type}_{i}'}' ({n.op_type})", n)
    arrays = validate_model(model, source)
    opset = default_opset(model, source)
    graph = Graph(name=g.name or Path(source).stem, opset=opset, source=source)
    # Value names first, exactly as in the file; node names then avoid them.
    graph._names.update(vi.name for vi in g.input)
    graph._names.update(arrays)
    graph._names.update(x for n in g.node for x in n.output if x)
    values: dict[str, Value] = {}

    for name, array in arrays.items():
        values[name] = Value(name, const=array)
    real_inputs = [vi for vi in g.input if vi.name not in values]
    values.update(_fixed_inputs(input_values, real_inputs, source))
    real_inputs = [vi for vi in real_inputs if vi.name not in values]
    shapes = parse_input_shapes(input_shapes, [vi.name for vi in real_inputs], source)
    changed: dict[str, tuple[list, list]] = {}  # inputs whose declared dims the shapes given replace
    for vi in real_inputs:
        if not vi.type.HasField("tensor_type"):
            raise FuserError(
                f"{source}: input '{vi.name}' is {_type_kind(vi.type)}, not a tensor; fuser handles tensor "
                "inputs only (no sequences or optionals)"
            )
        declared = value_shape(vi)
        shape = shapes.get(vi.name, declared)
        if vi.name in shapes and declared is not None and len(declared) != len(shape):
            raise FuserError(
                f"{source}: --input-shape for '{vi.name}' has {len(shape)} dims, "
                f"the model declares {len(declared)} {list(declared)}"
            )
        if shape is None or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise FuserError(_dynamic_dims_message(source, vi.name, shape))
        if declared is not None and any(
            isinstance(d, int) and d >= 0 and d != s for d, s in zip(declared, shape)
        ):
            changed[vi.name] = (list(declared), list(shape))
        v = Value(vi.name, shape, np_dtype(vi.type.tensor_type.elem_type, f"{source}: input '{vi.name}'"))
        graph.inputs.append(v)
        values[vi.name] = v

    for i, n in enumerate(g.node):
        name = graph.unique_name(n.name or f"{n.op_type}_{i}")
        where = f"{source}: node '{name}' ({n.op_type})"
        if n.op_type == "Constant":
            values[n.output[0]] = Value(n.output[0], const=constant_node_value(n, where))
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
            v = Value(x or graph.unique_name(f"{name}_unused"), None, None)
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
            v.dtype = np_dtype(vi.type.tensor_type.elem_type, f"{source}: value '{vi.name}'")

    read = len(graph.nodes)
    try:
        static_shapes(graph) if fold else infer_shapes(graph)
    except FuserError as e:
        if not changed:
            raise
        raise FuserError(_changed_shape_message(str(e), changed)) from None
    constants = sum(n.op_type == "Constant" for n in g.node)
    graph.meta["import"] = {
        "nodes_in_file": len(g.node),
        "constant_nodes": constants,  # became constant values, not nodes
        "folded": read - len(graph.nodes),  # shape subgraphs evaluated at import
        "nodes": len(graph.nodes),
        "defaults_taken": [vi.name for vi in g.input if vi.name in arrays],
    }
    return graph
