"""Rule ``fallback``: any other kernel. Each root block's leading spatial loops are fused
and parallel; a block that is spatial only also gets its innermost loop vectorized where
a power of two divides it. Loop order and reductions stay as legalized, so this is the
rule that leaves most on the table: ``fuser compile`` names the kernels it schedules."""

from __future__ import annotations

from .common import cpu_facts, extent, iter_kinds, root_blocks, vector_factor

NAME = "fallback"
TUNABLE = False


def apply(sch, target, tunable: bool = False) -> bool:
    facts = cpu_facts(target)
    lanes = facts.lanes
    touched = False
    for b in root_blocks(sch):
        kinds = iter_kinds(sch, b)
        loops = sch.get_loops(b)
        if len(loops) != len(kinds) or not loops:
            continue
        lead = len(kinds) - len(kinds.lstrip("S"))
        if lead == len(kinds) and lead >= 2:
            v = vector_factor(extent(sch, loops[-1]), lanes)
            if v > 1:
                inner = sch.split(loops[-1], [None, v])[1] if v < extent(sch, loops[-1]) else loops[-1]
                sch.vectorize(inner)
                lead -= 1
        if lead >= 1:
            fused = sch.fuse(*loops[:lead]) if lead > 1 else loops[0]
            if facts.parallel:
                sch.parallel(fused)
            touched = True
    return touched
