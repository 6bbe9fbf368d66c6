"""Structured channel pruning on the IR, for ONNX files, zoo models and torch modules.

    report = prune_graph(graph, ratio=0.5, criterion="l2")   # in place; a PruneReport

``fuser.prune(model, ...)`` is the user's entry point (any model; the graph is copied
first). ``load_weights(graph, net)`` puts fine-tuned weights of ``fuser.to_torch(graph)``
back into the graph for ONNX export. How it works: ``deps`` finds the coupled channel groups with an
explicit rule per op, ``importance`` scores channels (``obs`` adds data-free compensation),
``pruner`` chooses, ``apply`` rewrites weights, attributes and shape constants.
"""

from __future__ import annotations

from .deps import ChannelGroup, DependencyAnalysis, Member, analyze_dependencies
from .finetune import load_weights
from .importance import CRITERIA
from .pruner import GroupReport, PruneReport, prune_graph

__all__ = [
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
