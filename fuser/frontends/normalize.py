"""Normalisation after import: shapes made static by folding shape-computing subgraphs.

``static_shapes`` alternates onnx shape inference with constant folding until
shape-computing subgraphs (Shape -> Gather -> Concat -> Reshape) are gone, then
insists that every value has a static shape.
"""

from __future__ import annotations

from fuser.analysis.shapes import infer_shapes
from fuser.ir import FuserError, Graph
from fuser.passes import fold_constants, lower_sequences


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
                raise FuserError(
                    f"{graph.source}: node '{n.name}' ({n.op}): output '{v.name}' has no "
                    f"static shape ({v.type_str()}); fix the input shapes with --input-shape"
                )
    return graph
