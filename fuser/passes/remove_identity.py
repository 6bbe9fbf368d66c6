"""remove_identity: bypass nodes that pass their input through unchanged.

Rules (y = node output, x = its data input; y := x means every use of y reads x):
  - ``Identity(x)``                                   y := x
  - ``Dropout(x)`` in inference (no ``training_mode`` input, mask unused)   y := x
  - ``Cast(x)`` to x's own dtype                      y := x
  - ``Reshape``/``Flatten``/``Squeeze``/``Unsqueeze``/``Expand`` with shape(y) == shape(x)   y := x
  - ``Transpose`` whose ``perm`` is the identity      y := x
  - ``Slice`` with shape(y) == shape(x) and all steps 1     y := x
  - ``Pad`` whose constant pads are all zero          y := x
  - ``Concat``/``Sum``/``Max``/``Min``/``Mean`` of a single input   y := x
When y is a graph output, x takes y's name so the model's interface is kept;
that is skipped when x is itself a graph input, output or constant.
"""

from __future__ import annotations

from fuser.ir import Graph, Node, Value

from .base import PassResult

SAME_SHAPE_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Expand"}
VARIADIC_OPS = {"Concat", "Sum", "Max", "Min", "Mean"}


def _passthrough(node: Node) -> Value | None:
    x = node.input(0)
    if x is None:
        return None
    y = node.outputs[0]
    op = node.op
    if op == "Identity":
        return x
    if op == "Dropout":
        mask_used = len(node.outputs) > 1 and node.outputs[1].uses
        training = node.input(2)
        if not mask_used and (training is None or (training.is_const and not training.const.any())):
            return x
        return None
    if op == "Cast":
        return x if x.dtype is not None and y.dtype == x.dtype else None
    if op in SAME_SHAPE_OPS:
        return x if x.is_static and y.shape == x.shape else None
    if op == "Transpose":
        perm = node.attr("perm")
        return x if perm is not None and list(perm) == list(range(len(perm))) else None
    if op == "Slice":
        steps = node.input(4)
        unit = steps is None or (steps.is_const and (steps.const == 1).all())
        return x if unit and x.is_static and y.shape == x.shape else None
    if op == "Pad":
        pads = node.input(1)
        mode = node.attr("mode", "constant")
        zero = pads is not None and pads.is_const and not pads.const.any()
        return x if zero and mode == "constant" else None
    if op in VARIADIC_OPS and len(node.inputs) == 1:
        return x if y.shape == x.shape and y.dtype == x.dtype else None
    return None


def run(graph: Graph) -> PassResult:
    removed = 0
    for node in list(graph.nodes):
        x = _passthrough(node)
        if x is None:
            continue
        y = node.outputs[0]
        if graph.is_output(y):
            if x.is_const or x.producer is None or graph.is_output(x):
                continue
            x.name = y.name  # keep the interface name; y disappears with its node
        graph.replace_all_uses_with(y, x)
        for extra in node.outputs[1:]:
            if extra.uses:
                break
        else:
            graph.erase_node(node)
            removed += 1
    return PassResult(graph, removed > 0, {"removed": removed})
