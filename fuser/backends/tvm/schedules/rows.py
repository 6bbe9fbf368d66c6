"""Rule ``rows``: kernels that reduce each row over its innermost axes and then use the
result on the same row (softmax, layer norm, RMS norm, a mean over the last axis): the whole
kernel runs row by row in one loop, and each reduction accumulates in vector lanes.

Pattern: every block at root iterates the same leading row axes first (the reductions'
spatial axes), then only its reduced axes (a reduction) or the row's own elements (spatial);
the last block is spatial and writes the output; every buffer a block writes is indexed by
the row it is on; each reduction covers at least two vectors a row (YOLOv8's 16-wide DFL
softmax ran 10% slower in lanes). Anything else is left to ``reduction`` (dlight's rule).

Schedule:
1. a spatial block that one block reads is inlined into it (softmax's ``x - max`` into its
   exp); a block read twice (the exp that the sum and the division read) stays, one row of it;
2. a reduction over K elements: its reduced axes fused, split by the vector lanes
   and ``rfactor``-ed, so lane l accumulates elements l, l + lanes, ... in one vector (a
   vector max or add per ``lanes`` elements instead of a chain of K scalar ones, which is
   what dlight's rule leaves); the lanes are then merged by an unrolled loop;
3. every block's row loops fused and all merged into one loop, parallel when the target has
   threads: the row's intermediates stay in L1 from one block to the next;
4. each block's element loop vectorized; a row that is not whole vectors gets its last,
   partial vector peeled into a loop of its own (one predicated loop masks every vector).
   A reduction's last vector is peeled only on a one-thread target: peeling copies the block
   with its init, which then runs again (TVM 0.27), so the init must be decomposed first,
   and a row loop over a decomposed reduction is refused by ``parallel``; with threads the
   reduction's vectors stay masked. ViT-Tiny's 3x197x197 softmax, one thread: dlight's rule
   0.26 ms, this 0.034 (0.057 with the reductions masked).
The rows are merged with ``merge``, not ``compute_at``: compute_at rebuilds a block's loops
from its domain and drops the predicate that the split of K needs (TVM 0.27), and the last
vector would then read the next row.
"""

from __future__ import annotations

import math

from .common import cpu_facts, extent, iter_kinds, root_blocks

NAME = "rows"
TUNABLE = False


def apply(sch, target, tunable: bool = False) -> bool:
    facts = cpu_facts(target)
    blocks = root_blocks(sch)
    rows = _row_count(sch, blocks, facts.lanes)
    if rows is None:
        return False
    for b in blocks[:-1]:
        if "R" not in iter_kinds(sch, b) and len(sch.get_consumers(b)) == 1:
            sch.compute_inline(b)
    blocks = root_blocks(sch)
    lanes_of = {}  # block accumulating in the lanes -> elements it reduces (None: not peeled)
    inits = set()
    for b in blocks:
        kinds = iter_kinds(sch, b)
        if "R" not in kinds:
            continue
        reduced = [loop for loop in sch.get_loops(b)[rows:] if extent(sch, loop) > 1]
        k = sch.fuse(*reduced) if len(reduced) > 1 else reduced[0]
        reduced = extent(sch, k)
        _, lane = sch.split(k, [None, facts.lanes])
        rf = sch.rfactor(lane, factor_axis=rows)
        sch.vectorize(sch.get_loops(rf)[-1])
        if not facts.parallel:  # see 4.: the init apart, so the last vector can be peeled
            init = sch.decompose_reduction(rf, sch.get_loops(rf)[rows])
            sch.vectorize(sch.get_loops(init)[-1])
            inits.add(sch.get(init).name_hint)
        lanes_of[sch.get(rf).name_hint] = None if facts.parallel else reduced
    row_loops = []
    for b in root_blocks(sch):
        loops = sch.get_loops(b)
        if any(sch.get(loops[0]).same_as(sch.get(r)) for r in row_loops):
            continue  # an init's rows are its update's, fused already
        row_loops.append(sch.fuse(*loops[:rows]) if rows > 1 else loops[0])
    row = sch.merge(*row_loops) if len(row_loops) > 1 else row_loops[0]
    if facts.parallel:
        sch.parallel(row)
    peel = []  # (loop of whole vectors, elements it covers)
    for b in sch.get_child_blocks(row):
        inner = sch.get_loops(b)[1:]
        if not inner:
            continue
        name = sch.get(b).name_hint
        if name in inits:
            continue  # vectorized before the merge
        if name in lanes_of:  # vectorized before the merge
            if lanes_of[name] is not None:
                peel.append((inner[0], lanes_of[name]))
            continue
        if "R" in iter_kinds(sch, b):
            sch.unroll(inner[-1])  # merging the lanes
        else:
            fused = sch.fuse(*inner) if len(inner) > 1 else inner[0]
            n = extent(sch, fused)
            vectors, lanes = sch.split(fused, [None, facts.lanes])
            sch.vectorize(lanes)
            peel.append((vectors, n))
    # a partial last vector (a row not a multiple of the lanes) gets a loop of its own, so that
    # the others go unmasked (one predicated loop masks every vector). After all the
    # vectorizing: the two copies of a block that a partition leaves fail vectorize's check
    for vectors, n in peel:
        if n % facts.lanes and extent(sch, vectors) > 1:
            sch.loop_partition(vectors, [None, 1])
    return True


def _row_count(sch, blocks, lanes: int) -> int | None:
    """How many leading axes are the rows, or None when the kernel is not of this pattern or
    reduces fewer than two vectors a row (YOLOv8's 16-wide DFL softmax ran 10% slower in
    lanes than as dlight's chain)."""
    reductions = [b for b in blocks if "R" in iter_kinds(sch, b)]
    if not reductions or "R" in iter_kinds(sch, blocks[-1]):
        return None
    first = sch.get(reductions[0]).iter_vars
    rows = iter_kinds(sch, reductions[0]).index("R")
    while rows > 1 and int(first[rows - 1].dom.extent) == 1:
        rows -= 1  # a kept dimension (mean(keepdim=True)) is not a row axis; one row stays one
    if rows == 0:
        return None
    shape = None
    written = [region.source for b in blocks for region in sch.get(b).writes]
    for b in blocks:
        block = sch.get(b)
        kinds = iter_kinds(sch, b)
        loops = sch.get_loops(b)
        if len(block.writes) != 1 or len(loops) != len(kinds) or len(kinds) < rows:
            return None  # already scheduled, or a multi-output block
        if "R" in kinds:
            rest = block.iter_vars[rows:]
            if any(kind == "S" and int(iv.dom.extent) != 1 for kind, iv in zip(kinds[rows:], rest)):
                return None  # a reduction must reduce the whole row
            if math.prod(int(iv.dom.extent) for iv in rest) < 2 * lanes:
                return None
        if any(extent(sch, loop) != int(iv.dom.extent) for loop, iv in zip(loops, block.iter_vars)):
            return None
        extents = [int(iv.dom.extent) for iv in block.iter_vars[:rows]]
        if shape is None:
            shape = extents
        if extents != shape or "S" * rows != kinds[:rows]:
            return None
        row_vars = [iv.var for iv in block.iter_vars[:rows]]
        for region in [*block.reads, *block.writes]:
            if any(region.source.same_as(w) for w in written) and not _at_row(region, row_vars):
                return None
    return rows


def _at_row(region, row_vars) -> bool:
    """Whether an access touches only the block's own row: its leading indices are the row
    variables, one element each (another row's value would not exist yet once merged)."""
    if len(region.region) < len(row_vars):
        return False
    return all(r.min.same_as(v) and int(r.extent) == 1 for r, v in zip(region.region, row_vars))
