"""Rule ``injective``: kernels of spatial blocks only (elementwise, broadcast, layout
transforms, reshapes, concat, pad): every block inlined into the last one where it can be,
the rest (read twice, or not inlinable) at root; each block at root gets its leading loops
fused and parallel and its innermost loop vectorized where a power of two divides it."""

from __future__ import annotations

from .common import cpu_facts, inline_else_at_root, iter_kinds, root_blocks

NAME = "injective"
TUNABLE = False


def apply(sch, target, tunable: bool = False) -> bool:
    blocks = root_blocks(sch)
    if not blocks or any(set(iter_kinds(sch, b)) - {"S"} for b in blocks):
        return False
    inline_else_at_root(sch, blocks, cpu_facts(target))
    return True
