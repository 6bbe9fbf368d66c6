"""Normalisation after import: shapes made static by folding shape-computing subgraphs.

``static_shapes`` alternates onnx shape inference with constant folding until
shape-computing subgraphs (Shape -> Gather -> Concat -> Reshape) are gone, then
insists that every value has a static shape. A value that still has none after that
(every graph input is static by then) is refused by name: its shape depends on the
values of non-constant tensors (NonZero, Unique, a Reshape to a computed shape, ...),
or onnx has no shape rule for its op. Last, fuser's consistency rules
(``fuser.frontends.validate``) must hold.
"""

from __future__ import annotations

import onnx

from fuser.analysis.shapes import OWN_RULES, infer_shapes
from fuser.ir import FuserError, Graph, Node, Value
from fuser.ir.ops import SCHEMAS, Role, op_def
from fuser.passes import fold_constants, lower_sequences

from . import validate


def static_shapes(graph: Graph, max_rounds: int = 8) -> Graph:
    """Infer shapes and fold shape subgraphs until fixpoint; every value must end static."""
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
            if (v.uses or graph.is_output(v)) and (not v.is_static or v.dtype is None):
                raise _not_static(graph, n, v)
    validate.run(graph)
    return graph


class ValueDependentShape(FuserError):
    """A value's shape depends on the values of non-constant tensors. ``inputs``: the graph
    inputs those values come from through configuration slots (shapes, axes, sizes); fixing
    their values (``input_values=``, ``--input-value``) makes the shape static."""

    def __init__(self, message: str, inputs: list[str]):
        super().__init__(message)
        self.inputs = inputs


def _graph_inputs_behind(graph: Graph, values: list[Value]) -> list[str]:
    inputs = {id(v): v.name for v in graph.inputs}
    seen, found, todo = set(), [], list(values)
    while todo:
        v = todo.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        if id(v) in inputs:
            found.append(inputs[id(v)])
        elif v.producer is not None:
            todo.extend(x for x in v.producer.inputs if x is not None and not x.is_const)
    return sorted(found)


def _not_static(graph: Graph, n: Node, v: Value) -> FuserError:
    where = f"{graph.source}: node '{n.name}' ({n.op}): output '{v.name}' ({v.type_str()})"
    schema = SCHEMAS.get(n.op)
    if schema is not None and not schema.has_type_and_shape_inference_function and n.op not in OWN_RULES:
        return FuserError(
            f"{where}: onnx {onnx.__version__} has no shape rule for {n.op}, so fuser cannot carry it"
        )
    unknown = [x.name for x in n.inputs if x is not None and not x.is_static]
    if unknown:
        return FuserError(
            f"{where}: inputs {unknown} have no static shape; fix the input shapes with --input-shape"
        )
    d = op_def(n.op)
    runtime = [(i, x) for i, x in enumerate(n.inputs) if x is not None and not x.is_const]
    if not runtime:
        return ValueDependentShape(
            f"{where}: onnx infers no static shape for it from its constant inputs and fuser does not "
            "evaluate it (a value-dependent output shape); export the model with that part computed",
            [],
        )
    settings = [x for i, x in runtime if d is not None and d.role(i) is not Role.DATA]
    named = ", ".join(repr(x.name) for x in (settings or [x for _, x in runtime])) or "its inputs"
    message = (
        f"{where}: the output's shape is value-dependent (it depends on the values of {named}, which are "
        "not constants); fuser needs static shapes"
    )
    inputs = _graph_inputs_behind(graph, settings)
    if inputs:
        example = " ".join(f"--input-value {name}:V,V,.." for name in inputs)
        return ValueDependentShape(
            f"{message}: fix the values of graph input(s) {inputs} with {example} "
            f"(Python: input_values={{'{inputs[0]}': [...]}}) or export them as constants",
            inputs,
        )
    return ValueDependentShape(f"{message}, so value-dependent output shapes are not supported", [])
