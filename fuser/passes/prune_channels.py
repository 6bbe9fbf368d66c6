"""prune_channels: structured channel pruning as a pipeline pass (``fuser optimize --prune R``).

Removes ``ratio`` of the channels of every prunable channel group, in place, by the rules
of ``fuser.pruning``: coupled groups from an explicit per-op rule (``fuser.pruning.deps``:
residual Add/Mul, Concat offsets, Split/Slice, depthwise and grouped conv, norms,
Flatten/Reshape into Gemm/MatMul, squeeze-and-excite, channel shuffle, attention heads; an
op without a rule blocks and is reported), scored by ``criterion`` (``fuser.pruning.importance``:
l1, l2, taylor with ``data``, or the data-free obs with compensation), then weights,
attributes and shape constants rewritten (``fuser.pruning.apply``). Graph outputs keep
their shapes; ratio 0 changes nothing. Options are those of ``fuser.prune``.

Stats (the pipeline report's record): channels_removed, groups_pruned, groups,
blocked_ops, macs_before/after, params_before/after. ``fuser.prune`` returns the full
per-group report.
"""

from __future__ import annotations

from fuser.ir import Graph
from fuser.pruning import prune_graph

from .base import PassResult


def run(graph: Graph, ratio: float = 0.5, criterion: str = "l2", **options) -> PassResult:
    report = prune_graph(graph, ratio, criterion, **options)
    removed = report.channels_removed
    return PassResult(
        graph,
        removed > 0,
        {
            "channels_removed": removed,
            "groups_pruned": sum(1 for g in report.groups if g.kept < g.channels),
            "groups": len(report.groups),
            "blocked_ops": len(report.blocked),
            "macs_before": report.macs_before,
            "macs_after": report.macs_after,
            "params_before": report.params_before,
            "params_after": report.params_after,
        },
    )
