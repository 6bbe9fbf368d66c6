"""Rule ``injective``: kernels of spatial blocks only (elementwise, broadcast, layout
transforms, reshapes, concat, pad): every block inlined into the last one where it can be,
the rest (read twice, or not inlinable) at root; each block at root gets its leading loops
fused and parallel and its innermost loop vectorized where a power of two divides it."""

from __future__ import annotations

from ..common import tvm
from .common import cpu_facts, iter_kinds, parallel_vectorized, root_blocks

NAME = "injective"
TUNABLE = False


def apply(sch, target, tunable: bool = False) -> bool:
    blocks = root_blocks(sch)
    if not blocks or any(set(iter_kinds(sch, b)) - {"S"} for b in blocks):
        return False
    facts = cpu_facts(target)
    for b in blocks[:-1]:
        try:
            sch.compute_inline(b)
        except tvm.s_tir.ScheduleError:
            parallel_vectorized(sch, b, facts)
    parallel_vectorized(sch, blocks[-1], facts)
    return True
