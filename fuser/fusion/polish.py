"""Local improvement of a set of valid groups: merge neighbours, move single ops.

``merge_polish`` serves both a whole plan (``fuser.fusion.bound``: the plans a bound meets)
and the pieces of one split group (``fuser.fusion.split``: interval DP's pieces).
"""

from __future__ import annotations

from .cost import CostModel
from .opgraph import bits
from .plan import groups_acyclic


def merge_polish(cost: CostModel, groups: list[int]) -> list[int]:
    """``groups`` (a plan of valid groups) improved while DRAM falls: neighbouring groups merged
    (the merge saving most first), else one op moved to a neighbouring group (the first such
    move that saves, in op order; what it leaves behind splits into its connected pieces);
    each step kept only when every group is valid and the plan stays acyclic. ``groups`` may
    also be the pieces of one convex group (a split): edges leaving them are ignored, and a
    path between two of its ops never leaves the group, so acyclic pieces stay legal.
    Deterministic."""
    fg = cost.fg

    def legal(gs) -> bool:
        return all(cost.valid(g) for g in gs) and groups_acyclic(fg, gs)

    groups = sorted(groups)
    while True:
        owner = {}
        for k, g in enumerate(groups):
            for i in bits(g):
                owner[i] = k
        edges = [(u, v) for u, v in fg.edges if u in owner and v in owner]
        pairs = sorted({tuple(sorted((owner[u], owner[v]))) for u, v in edges if owner[u] != owner[v]})
        saving = []
        for a, b in pairs:
            merged = groups[a] | groups[b]
            if cost.valid(merged):
                gain = cost.dram((groups[a], groups[b])) - cost.cost(merged).dram_bytes
                if gain > 0:
                    saving.append((-gain, a, b))
        step = None
        for _, a, b in sorted(saving):
            trial = [g for k, g in enumerate(groups) if k not in (a, b)] + [groups[a] | groups[b]]
            if groups_acyclic(fg, trial):
                step = trial
                break
        for u, v in edges if step is None else ():
            a, b = owner[u], owner[v]
            if a == b:
                continue
            for op, src, dst in ((u, a, b), (v, b, a)):
                left = groups[src] & ~(1 << op)
                moved = [*fg.components(left), groups[dst] | 1 << op] if left else [groups[dst] | 1 << op]
                if cost.dram(moved) < cost.dram((groups[src], groups[dst])):
                    trial = [g for k, g in enumerate(groups) if k not in (src, dst)] + moved
                    if legal(moved) and groups_acyclic(fg, trial):
                        step = trial
                        break
            if step is not None:
                break
        if step is None:
            return groups
        groups = sorted(step)
