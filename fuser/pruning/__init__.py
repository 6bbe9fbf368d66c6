"""Structured channel pruning on the IR, for ONNX files, zoo models and torch modules.

    import fuser
    g = fuser.prune("model.onnx", ratio=0.5, criterion="l2")   # a pruned Graph
    print(g.report)                                           # MACs/params before/after
    fuser.save_onnx(g, "pruned.onnx")                         # runs in ONNX Runtime
    net = g.to_torch()                                        # a trainable nn.Module

    pruned = fuser.prune(torch_module, example_inputs=(torch.randn(1, 3, 224, 224),))

A torch module is captured (torch.export -> ONNX -> IR), pruned on the IR and returned as a
Graph like any other model; ``graph.to_torch()`` gives an ``nn.Module`` with the pruned
weights as Parameters, ready to fine-tune (its forward runs the graph, so it takes inputs
of the captured shape); ``load_weights(graph, net)`` puts fine-tuned weights back into the
graph for ONNX export. How it works: ``deps`` finds the coupled channel groups with an
explicit rule per op, ``importance`` scores channels (``obs`` adds data-free compensation),
``pruner`` chooses, ``apply`` rewrites weights, attributes and shape constants.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fuser.ir import Graph

from .deps import ChannelGroup, DependencyAnalysis, Member, analyze_dependencies
from .finetune import load_weights
from .importance import CRITERIA
from .pruner import GroupReport, PruneReport, prune_graph

__all__ = [
    "prune",
    "prune_graph",
    "analyze_dependencies",
    "load_weights",
    "PruneReport",
    "GroupReport",
    "ChannelGroup",
    "DependencyAnalysis",
    "Member",
    "CRITERIA",
]


def prune(
    model: Any,
    ratio: float = 0.5,
    criterion: str = "l2",
    *,
    example_inputs: Any = None,
    input_shapes: Any = None,
    data: Any = None,
    loss: Callable | None = None,
    global_pruning: bool = False,
    group_reduction: str = "mean",
    normalizer: str | None = "mean",
    round_to: int | None = None,
    ignored: Sequence[str] = (),
    layer_ratios: dict[str, float] | None = None,
    heads: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Graph:
    """Remove ``ratio`` of the channels of every prunable group of ``model``.

    ``model``: anything ``fuser.to_graph`` accepts (ONNX path or ModelProto, ``"zoo:NAME"``,
    a Graph -- never modified -- or an ``nn.Module`` with ``example_inputs``); the raw IR
    (BatchNormalization prunes with its conv) and the optimized one (BN folded) both work.
    ``criterion``: ``l1``, ``l2`` (magnitude), ``taylor`` (needs ``data``: inputs, or an
    (inputs, targets) pair, or an iterable of batches; ``loss(output, targets)`` optional)
    or ``obs`` (data-free, with weight compensation). ``global_pruning`` ranks all groups
    together instead of applying ``ratio`` per group; ``layer_ratios`` maps node/module name
    patterns to their own ratio; ``round_to`` keeps channel counts multiples of it;
    ``ignored`` names layers whose output channels stay (graph outputs -- the classifier --
    always keep theirs); ``heads`` prunes attention by whole heads (head count rewritten)
    rather than by head dimension (the default: the same dims go from every head).
    Returns the pruned Graph; ``graph.report`` is a PruneReport
    (per-group channels, MACs and params before/after, and the ops that blocked pruning).
    """
    from fuser.api import to_graph

    graph = to_graph(model, example_inputs, input_shapes).copy()
    report = prune_graph(
        graph,
        ratio,
        criterion,
        data=data,
        loss=loss,
        global_pruning=global_pruning,
        group_reduction=group_reduction,
        normalizer=normalizer,
        round_to=round_to,
        ignored=ignored,
        layer_ratios=layer_ratios,
        heads=heads,
        progress=progress,
    )
    graph.report = report
    return graph
