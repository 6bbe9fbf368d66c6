"""Static shape inference for the IR, by onnx.shape_inference, plus fuser's own rules.

``infer_shapes`` round-trips a weight-free copy of the graph through ONNX's shape
inference (large constants travel as typed inputs, so no weight bytes are serialised).
onnx has no shape rule for a few standard ops; fuser's own (``OWN_RULES``) fill those in,
and inference runs again from there (onnx's data propagation, which reads shapes out of
small constants, trips over some valid graphs: when strict inference passes without it,
its findings are kept in non-strict mode):
  - GroupNormalization, MeanVarianceNormalization: the output has the input's shape and type
    (onnx infers these through their function bodies, which fails for some opsets: an error
    inside them leaves inference to these rules).
"""

from __future__ import annotations

import re

import onnx

from fuser.ir import Graph, Node, Value
from fuser.serde.onnx import checker_error, np_dtype, shape_inference_model, value_shape

INLINE_CONST_LIMIT = 1024  # constants up to this many elements may carry shape data


def _like_input(node: Node) -> list[tuple[tuple, object]] | None:
    x = node.input(0)
    if x is None or x.shape is None or x.dtype is None:
        return None
    return [(x.shape, x.dtype)]


OWN_RULES = {"GroupNormalization": _like_input, "MeanVarianceNormalization": _like_input}


def own_rule_error(e: Exception) -> bool:
    """Whether onnx's inference failed inside an op fuser has its own rule for (onnx then
    expands the op's function body, which fails for MeanVarianceNormalization-13)."""
    m = re.search(r"\(op_type:\s*([\w.]+)", str(e))
    return m is not None and m.group(1) in OWN_RULES


def _apply_own_rules(graph: Graph) -> list[Value]:
    """Outputs the own rules typed (newly or before), for the next inference round."""
    typed = []
    for n in graph.nodes:
        rule = OWN_RULES.get(n.op)
        if rule is None:
            continue
        result = rule(n)
        if result is None:
            continue
        for v, (shape, dtype) in zip(n.outputs, result):
            v.shape, v.dtype = tuple(shape), dtype
            typed.append(v)
    return typed


def infer_shapes(graph: Graph, strict: bool = True) -> Graph:
    """Fill in ``shape`` and ``dtype`` of every node output, in place."""
    typed: list[Value] = []
    if any(n.op in OWN_RULES for n in graph.nodes):
        # onnx stops at those ops: lenient rounds type them one layer after another, then
        # the strict round below checks the whole graph with their types given
        for _ in range(len(graph.nodes)):
            _infer_once(graph, False, typed)
            now = _apply_own_rules(graph)
            if len(now) == len(typed):
                break
            typed = now
    _infer_once(graph, strict, typed)
    return graph


def _infer_once(graph: Graph, strict: bool, known: list[Value]) -> None:
    model = shape_inference_model(graph, INLINE_CONST_LIMIT, known)
    infer = onnx.shape_inference.infer_shapes
    try:
        inferred = infer(model, strict_mode=strict, data_prop=True)
    except Exception as e:  # InferenceError carries the node in its text
        if not own_rule_error(e):
            try:  # onnx's data propagation trips on some valid graphs: consistent without it?
                infer(model, strict_mode=strict, data_prop=False)
            except Exception:
                raise checker_error(graph.source, e, "shape inference failed") from None
        inferred = infer(model, strict_mode=False, data_prop=True)
    found = {
        vi.name: vi
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output)
        if vi.type.tensor_type.elem_type
    }
    for n in graph.nodes:
        for v in n.outputs:
            vi = found.get(v.name)
            if vi is None:
                continue
            shape = value_shape(vi)
            if shape is not None:
                v.shape = shape
            v.dtype = np_dtype(vi.type.tensor_type.elem_type, f"{graph.source}: value '{v.name}'")
