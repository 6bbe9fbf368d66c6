"""Between a Graph and the torch module ``graph.to_torch()`` builds from it.

``to_torch`` registers each floating weight constant as a Parameter named after the
constant (``fuser.backends.torch``); ``parameters_of`` finds them again by that
name (and shape), so Taylor importance can read gradients and a fine-tuned module's
weights can go back into the graph (``load_weights``) for ONNX export:

    pruned = fuser.prune(model, 0.5)
    net = pruned.to_torch()            # fine-tune net (same input shape as captured)
    fuser.pruning.load_weights(pruned, net)
    fuser.save_onnx(pruned, "pruned-finetuned.onnx")
"""

from __future__ import annotations

import numpy as np

from fuser.ir import Graph


def parameters_of(graph: Graph, module) -> dict:
    """id(Value) -> the module's Parameter holding that constant."""
    from fuser.backends.torch import sanitize_name

    params = dict(module.named_parameters())
    found = {}
    for v in graph.constants():
        p = params.get(sanitize_name(v.name))
        if p is not None and tuple(p.shape) == tuple(v.shape):
            found[id(v)] = p
    return found


def load_weights(graph: Graph, module) -> int:
    """Copy ``module``'s (fine-tuned) parameters into ``graph``'s constants, in place;
    returns how many constants were updated."""
    params = parameters_of(graph, module)
    for v in graph.constants():
        p = params.get(id(v))
        if p is not None:
            v.const = np.ascontiguousarray(p.detach().cpu().numpy().astype(v.dtype))
    return len(params)
