"""Rule ``matmul``: matmul / dense over ([batch..], i, j, k), the result read along j.

Matches a kernel with one reduction block whose iterators are spatial ones then exactly
one reduction, reading two buffers, with only spatial blocks after it.

Padding: j to a multiple of the lanes when only a smaller power of two divides it and
there are several row tiles to share the padded copy of B (never for a GEMV), i to
a multiple of the row tile when its divisors fall below half of it (``pad_einsum``: padded
input copies, the result copied back).

Register tile: reg_m rows x nvec vectors of j (nvec up to 4 vectors, reg_m the largest
divisor of the rows whose accumulators fit beside the nvec B vectors and the broadcast A).
A GEMV (one row: a classifier at batch 1) reads each B vector once, straight into its
multiply-add, so nvec takes the registers less two (the broadcast A and a spare): a
contiguous run of B's row per k. With at most 4 vectors, MobileNetV2's 1280 x 1000 head
(vectors of 8: 1000 = 8 x 125) walked B 32 bytes per row of 4000: 0.145 ms alone at
batch 1 on Zen 5, 1 thread, against 0.063 ms with 25 vectors.
K is blocked so that a kc x (nvec x lanes) panel of B
fits in half the L1 data cache and is reused by every row tile of a row block (one block
when K has no divisor near that: ViT's 197 tokens, prime, ran in blocks of one k); a row
block's A (rows x kc) and C (rows x panel) fit in half the L2. Loops: batch x j tiles x
row blocks fused and parallel, k blocks, row tiles, k, the tile (unrolled, vectorized).
The epilogue is computed per row block and column panel once its k blocks are done.

Tunable: reg_m, nvec, the row block, kc and the unroll depth of k.
"""

from __future__ import annotations

from .common import (
    cpu_facts,
    extent,
    inline_around,
    largest_divisor,
    only_reduction,
    split2,
    split_tiles,
    tile_epilogue,
    unroll_pragma,
    vector_factor,
)

NAME = "matmul"
TUNABLE = True
MAX_NVEC = 4


def match(sch):
    return only_reduction(
        sch, lambda kinds, block: kinds.endswith("SSR") and set(kinds[:-1]) == {"S"} and len(block.reads) == 2
    )


def _row_cap(facts, nvec: int) -> int:
    """Rows of the register tile: accumulators beside nvec B vectors and one broadcast A."""
    return max((facts.vector_registers - nvec - 1) // nvec, 1)


def _pad(sch, mm, facts):
    """Pad j to a multiple of the lanes when a power of two below them would be the
    vector, and i to a multiple of the row tile when its divisors fall below half of it
    (ViT's 197 tokens: prime): a padded copy of the inputs and a copy back beat scalar
    code or one-row tiles."""
    loops = sch.get_loops(mm)
    M, N = extent(sch, loops[-3]), extent(sch, loops[-2])
    lanes = facts.lanes
    pads = [1] * len(sch.get(mm).iter_vars)
    cap = _row_cap(facts, MAX_NVEC)
    if lanes < N and vector_factor(N, lanes) < lanes and cap < M:  # (a GEMV would copy all of B)
        pads[-2] = lanes
    nvec = largest_divisor(-(-N // lanes), MAX_NVEC) if pads[-2] > 1 else 1
    cap = _row_cap(facts, nvec)
    if cap < M and 2 * largest_divisor(M, cap) <= cap:
        pads[-3] = cap
    if pads == [1] * len(pads):
        return mm
    name = sch.get(mm).name_hint
    sch.pad_einsum(mm, pads)
    return sch.get_sblock(name)


def apply(sch, target, tunable: bool = False) -> bool:
    mm = match(sch)
    if mm is None:
        return False
    facts = cpu_facts(target)
    lanes = facts.lanes
    mm = _pad(sch, mm, facts)
    epilogue = inline_around(sch, mm, facts)
    loops = sch.get_loops(mm)
    batch, (im, jn, k) = loops[:-3], loops[-3:]
    M, N, K = extent(sch, im), extent(sch, jn), extent(sch, k)
    vec = vector_factor(N, lanes)
    # a GEMV reads each B vector once: no register holds it, so the accumulators take them all
    nvec = largest_divisor(N // vec, facts.vector_registers - 2 if M == 1 else MAX_NVEC)
    reg_m = largest_divisor(M, _row_cap(facts, nvec))
    jo, jv = sch.split(jn, [None, vec])
    jo, jt = split2(sch, jo, nvec, tunable, 8)
    panel = nvec * vec * 4  # bytes of B (and of a C row) per k
    cap_k = max(facts.l1d // 2 // panel, 1)
    kc = largest_divisor(K, cap_k)
    if kc < min(K, cap_k) // 4:
        # K has no divisor near the cap (ViT's 197 tokens: prime): one k block. Blocks of
        # one k wrote the accumulators back after every multiply-add (57 GFLOP/s)
        kc = K
    rows = M // reg_m
    row_tiles = largest_divisor(rows, max(facts.l2 // 2 // (reg_m * (kc * 4 + panel)), 1))
    mo, io, ii = split_tiles(sch, im, [row_tiles, reg_m], tunable, 16)
    ko, ki = split2(sch, k, kc, tunable, K)
    sch.reorder(*batch, jo, mo, ko, io, ki, ii, jt, jv)
    outer = sch.fuse(*batch, jo, mo)
    if facts.parallel:
        sch.parallel(outer)
    sch.unroll(ii)
    sch.unroll(jt)
    if vec > 1:
        sch.vectorize(jv)
    unroll_pragma(sch, ki, 0, tunable)
    sch.reverse_compute_at(epilogue, outer, preserve_unit_loops=True)
    tile_epilogue(sch, sch.get_loops(epilogue)[1:], lanes)
    sch.decompose_reduction(mm, ko)
    return True
