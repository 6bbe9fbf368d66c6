"""Rule ``window``: blocked window reductions in NCHW[x]c: direct, 1x1 and grouped
convolution, depthwise convolution, max/avg pooling and global pooling.

Matches a kernel with one reduction block of five spatial iterators (n, c_chunk, oh, ow,
c_block) followed by reduction iterators, whose output is 5-D, with only spatial blocks
after it. Kind: ``conv`` (a 6-D weight), ``depthwise`` (a 5-D weight) or ``pool``.

Register tile: reg_w output columns x reg_c channel chunks x the channel block
(vectorized). conv: the pair whose accumulators, weight vectors and broadcast inputs fit in
the registers (``common.conv_register_tile``: LLVM spilled the accumulators of 2 chunks x 14
columns on AVX-512, 44 registers, and MobileNetV2 224's FuseOps build took 8.1-10.3 ms
against 6.9-7.4 ms without the spills, 1 thread, Zen 4) and whose weights, reg_c chunks of
the whole reduction, are reloaded from the nearest cache per column tile
(``common.ConvWeights``: ResNet-18's layer3 conv took 8 x 2, 1.18 MB reloaded from L3 every
2 columns, at half the speed of 2 x 7); depthwise and pool need one input
vector per accumulator, so they get half the registers, all on the row (the largest divisor
of OW that fits). Loops: n x
c_chunk x oh fused (parallel unless the target has one thread); then the column tiles,
the reduction loops, the tile (unrolled, vectorized). Windows up to 7x7 of depthwise and
pool are unrolled. Producers (pad) at root, parallel and vectorized; the injective
epilogue (bias, activation, residual add) is computed per register tile from the local
accumulator; a concat after it runs at root (per tile it would miss its other inputs).

A depthwise conv or a pool left in plain NCHW (a channel count with no block: ShuffleNet's
58) is tiled the same way with the output row as the vectors: its columns split into vectors
of the largest divisor of OW up to the lanes (28 -> 2 x 14), which take the channel block's
place (dlight's reduction rule took it before: 0.13 ms, 7 GFLOP/s, for a 3x3 over 58 x 28 x
28). Rows narrower than 4 such lanes are left to the other rules.

Tunable: reg_w, reg_c (conv) and the unroll depth of the reduction are sampled, their
defaults being the values above.
"""

from __future__ import annotations

import math

from .common import (
    ConvWeights,
    conv_register_tile,
    cpu_facts,
    extent,
    inline_around,
    largest_divisor,
    only_reduction,
    split2,
    tile_epilogue,
    unroll_pragma,
)

NAME = "window"
TUNABLE = True
MAX_UNROLLED_WINDOW = 49


def match(sch):
    """The reduction block this rule tiles, or None."""
    return only_reduction(
        sch,
        lambda kinds, block: (
            kinds.startswith("SSSSS") and set(kinds[5:]) == {"R"} and len(block.writes[0].source.shape) == 5
        ),
    )


def match_plain(sch, lanes: int):
    """A depthwise conv or pool in plain NCHW whose output row splits into vectors of at
    least 4 lanes: (its reduction block, the vector width), or None."""

    def accept(kinds, block):
        if not (
            kinds.startswith("SSSS") and set(kinds[4:]) == {"R"} and len(block.writes[0].source.shape) == 4
        ):
            return False
        weight = block.reads[1].source.shape if len(block.reads) >= 2 else None
        return weight is None or (len(weight) == 4 and int(weight[1]) == 1)

    red = only_reduction(sch, accept)
    if red is None:
        return None
    vector = largest_divisor(extent(sch, sch.get_loops(red)[3]), lanes)
    return (red, vector) if vector >= 4 else None


def kind_of(sch, red) -> str:
    reads = sch.get(red).reads
    if len(reads) >= 2 and len(reads[1].source.shape) == 6:
        return "conv"
    return "depthwise" if len(reads) >= 2 else "pool"


def register_tile(
    sch, red, epilogue, facts, kind: str, tunable: bool = False, nred: int | None = None
) -> None:
    """Tile the last five spatial loops and the reduction loops of ``red`` as the module doc
    says; loops above them (a caller's tiles) stay outermost. ``epilogue`` (or None) is
    computed per register tile. ``nred``: how many reduction loops (default: the block's
    iterators past the five spatial ones)."""
    loops = sch.get_loops(red)
    nred = len(sch.get(red).iter_vars) - 5 if nred is None else nred
    above, (n, oc, oh, ow, ob), rloops = loops[: -5 - nred], loops[-5 - nred : -nred], loops[-nred:]
    OC, OW, OB = extent(sch, oc), extent(sch, ow), extent(sch, ob)
    vec_regs = max(-(-OB // facts.lanes), 1)
    budget = facts.vector_registers - 4 if kind == "conv" else (facts.vector_registers - 2) // 2
    window = math.prod(extent(sch, r) for r in rloops)  # a conv's: input channels x taps
    if kind == "conv":
        weights = ConvWeights(window, OB * 4, extent(sch, n) * extent(sch, oh), facts.l1d, facts.l2)
        reg_c, reg_w = conv_register_tile(OC, OW, facts.vector_registers, vec_regs, weights)
    else:
        reg_w, reg_c = largest_divisor(OW, max(budget // vec_regs, 1)), 1
    oco, oci = split2(sch, oc, reg_c, tunable and kind == "conv", 4)
    owo, owi = split2(sch, ow, reg_w, tunable, budget)
    sch.reorder(*above, n, oco, oh, owo, *rloops, oci, owi, ob)
    outer = len(above) + 4  # loops down to the column tile
    if not above:
        fused = sch.fuse(n, oco, oh)
        if facts.parallel:
            sch.parallel(fused)
        outer -= 2
    sch.unroll(owi)
    sch.unroll(oci)
    sch.vectorize(ob)
    if kind != "conv" and window <= MAX_UNROLLED_WINDOW:
        for r in rloops:
            sch.unroll(r)
    elif kind == "conv":
        unroll_pragma(sch, rloops[-1], 16, tunable)
    if epilogue is not None:
        sch.reverse_compute_at(epilogue, owo, preserve_unit_loops=True)
        tile_epilogue(sch, sch.get_loops(epilogue)[outer:], facts.lanes)
    sch.decompose_reduction(red, rloops[0])


def apply(sch, target, tunable: bool = False) -> bool:
    facts = cpu_facts(target)
    red = match(sch)
    if red is not None:
        epilogue = inline_around(sch, red, facts)
        register_tile(sch, red, epilogue, facts, kind_of(sch, red), tunable)
        return True
    plain = match_plain(sch, facts.lanes)
    if plain is None:
        return False
    red, vector = plain
    epilogue = inline_around(sch, red, facts, masked_tail=True)  # the pad's rows of 30, 58
    loops = sch.get_loops(red)
    sch.split(loops[3], [None, vector])  # the columns' vectors: the channel block's place
    register_tile(sch, red, epilogue, facts, "depthwise", tunable, nred=len(loops) - 4)
    return True
