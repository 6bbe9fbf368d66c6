"""What the schedule rules share: the target's vector facts and the host's caches, block
queries on a ``tir.Schedule``, and the tiling primitives (a split that tuning may resample,
register-tile epilogues, injective loop nests)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from ..common import tvm

SPATIAL, REDUCE = 0, 2  # IterVar.iter_type
CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")
DEFAULT_CACHES = {1: 32 << 10, 2: 1 << 20, 3: 8 << 20}  # where the OS does not say
MAX_UNROLL = 64  # statements an unrolled epilogue may have (a whole SE multiply unrolled: minutes of LLVM)


@dataclass(frozen=True)
class CpuFacts:
    """What the tile sizes come from: float32 lanes of the widest vector the target may use,
    its vector registers, the data-cache sizes of this host (bytes), and the threads the
    target is built for (its ``num-cores``; 0 when it does not say). A one-thread target
    gets no parallel loop: LLVM would emit each parallel body as a nameless lambda that
    profilers and cachegrind cannot attribute to its kernel, for no gain."""

    lanes: int
    vector_registers: int
    l1d: int
    l2: int
    l3: int
    threads: int = 0

    @property
    def parallel(self) -> bool:
        return self.threads != 1

    def to_dict(self) -> dict:
        return {
            "vector_lanes_f32": self.lanes,
            "vector_registers": self.vector_registers,
            "l1d_bytes": self.l1d,
            "l2_bytes": self.l2,
            "l3_bytes": self.l3,
            "threads": self.threads,
        }


def _size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


@functools.cache
def host_caches(cache_dir: str = str(CACHE_DIR)) -> dict[int, int]:
    """Data (or unified) cache size per level as the OS reports it for CPU 0; levels it does
    not report keep ``DEFAULT_CACHES``."""
    caches = dict(DEFAULT_CACHES)
    root = Path(cache_dir)
    for index in sorted(root.glob("index*")) if root.is_dir() else ():
        try:
            kind = (index / "type").read_text().strip()
            level = int((index / "level").read_text())
            size = _size((index / "size").read_text())
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified") and size:
            caches[level] = size
    return caches


def cpu_features(target) -> frozenset[str]:
    """The features LLVM enables for ``target`` (its mcpu and mattr; not the host's)."""
    return frozenset(str(f) for f in tvm.target.codegen.llvm_get_cpu_features(target))


def cpu_facts(target) -> CpuFacts:
    """Vector lanes and registers from the target's features (``llvm_get_vector_width``
    answers 512 for every x86 target, whatever its mcpu), caches from the host."""
    feats = cpu_features(target) if target.kind.name == "llvm" else frozenset()
    if "avx512f" in feats:
        lanes, regs = 16, 32
    elif "avx" in feats:
        lanes, regs = 8, 16
    else:
        lanes, regs = 4, 16 if ("sse2" in feats or "neon" in feats) else 8
    caches = host_caches(os.environ.get("FUSER_CACHE_DIR", str(CACHE_DIR)))
    threads = int(target.attrs.get("num-cores", 0) or 0) if target.kind.name == "llvm" else 0
    return CpuFacts(lanes, regs, caches[1], caches[2], caches[3], threads)


# ---- block queries -------------------------------------------------------------------------
def extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


def iter_kinds(sch, block) -> str:
    """'S' spatial, 'R' reduction, 'O' other, per block iterator."""
    return "".join(
        "S" if iv.iter_type == SPATIAL else "R" if iv.iter_type == REDUCE else "O"
        for iv in sch.get(block).iter_vars
    )


def root_blocks(sch) -> list:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def block_name(sch, block) -> str:
    return sch.get(block).name_hint


def reductions(sch) -> list:
    return [b for b in root_blocks(sch) if "R" in iter_kinds(sch, b)]


def only_reduction(sch, accept):
    """The kernel's one reduction block (every other root block is then spatial) when
    ``accept(its iterator kinds, its Block)``, else None."""
    red = reductions(sch)
    return red[0] if len(red) == 1 and accept(iter_kinds(sch, red[0]), sch.get(red[0])) else None


def split_around(sch, block) -> tuple[list, list]:
    """(blocks before ``block``, blocks after it) at root."""
    blocks = root_blocks(sch)
    i = [block_name(sch, b) for b in blocks].index(block_name(sch, block))
    return blocks[:i], blocks[i + 1 :]


def conv_registers(reg_c: int, reg_w: int, vec_regs: int = 1) -> int:
    """Vector registers a conv's register tile of reg_c channel chunks x reg_w columns (each
    ``vec_regs`` vectors) holds in its reduction loop: the accumulators, a weight vector per
    chunk, and the broadcast inputs: one a column when each feeds reg_c > 1 chunks (LLVM keeps
    them in registers), else one (AVX-512: the FMA's memory operand)."""
    return vec_regs * (reg_c * reg_w + reg_c) + (reg_w if reg_c > 1 else 1)


# Bytes a core moves per cycle from L2 and from beyond L2 into its registers, and its vector
# multiply-adds per cycle: Zen 5, fitted to ResNet-18's layer3 conv (256 -> 256, 3x3 at 14x14,
# 147 KB of weights per 16-channel chunk), whose tiles of 4 chunks x 2 columns (weights from
# L2) and 8 x 2 (from L3) took 0.79 and 1.09 cycles per multiply-add, 2 x 7 (L2) 0.53.
L2_BYTES_PER_CYCLE, L3_BYTES_PER_CYCLE, FMA_PER_CYCLE = 40, 29, 2


@dataclass(frozen=True)
class ConvWeights:
    """What a conv register tile reads of its weights: ``reduction`` elements per output
    channel (input channels x window), ``block_bytes`` per element for one channel chunk
    (the chunk's vector), ``rows`` output rows that read the same weights (images x rows),
    and the host's L1d and L2 (bytes)."""

    reduction: int
    block_bytes: int
    rows: int
    l1d: int
    l2: int

    def cycles_per_fma(self, reg_c: int, reg_w: int, columns: int, fmas: int) -> float:
        """A tile of reg_c chunks x reg_w of ``columns`` doing ``fmas`` vector multiply-adds
        per reduction step: its multiply-adds, or, when one pass of the reduction (reg_c
        chunks' weights) does not stay in half of L1, the reg_c weight vectors it reloads
        each step from L2 (or from beyond it, over 3/4 of L2), whichever takes longer. Weights
        read by one pass only (one row, one column tile) come from beyond L2 for any tile."""
        pass_bytes = reg_c * self.reduction * self.block_bytes
        once = self.rows * (columns // reg_w) == 1
        if pass_bytes <= self.l1d // 2 and not once:
            return 1 / FMA_PER_CYCLE
        rate = L2_BYTES_PER_CYCLE if pass_bytes <= 3 * self.l2 // 4 and not once else L3_BYTES_PER_CYCLE
        return max(fmas / FMA_PER_CYCLE, reg_c * self.block_bytes / rate) / fmas


def conv_register_tile(
    chunks: int, columns: int, registers: int, vec_regs: int = 1, weights: ConvWeights | None = None
) -> tuple[int, int]:
    """(reg_c, reg_w) dividing (chunks, columns) whose ``conv_registers`` fit in all registers
    but one, so that LLVM does not spill accumulators to the stack: the fewest cycles per
    multiply-add (``weights.cycles_per_fma``: a tile whose weights leave L1 waits for them),
    then the most accumulators, then the fewest vector loads per multiply-add, (reg_c + reg_w)
    / (reg_c x reg_w). Counting the accumulators alone (the registers less 4) took 4 x 7 and
    2 x 14 on AVX-512 (39 and 44 registers): their spills are unaligned 64-byte moves whose
    cost depends on where the process's stack starts (Zen 4: the same kernel 1.5-2x slower
    from one process to the next). Without the weights' cost, ResNet-18's layer3 convs took 8
    chunks x 2 columns: 1.18 MB of weights per pass, reloaded from L3 for every 2 columns,
    at 117 GFLOP/s against 242 for 2 x 7 (1 thread, Zen 5)."""
    fits = [
        (c, w)
        for c in range(1, chunks + 1)
        if chunks % c == 0
        for w in range(1, columns + 1)
        if columns % w == 0 and conv_registers(c, w, vec_regs) <= registers - 1
    ] or [(1, 1)]

    def cost(cw):
        c, w = cw
        cycles = weights.cycles_per_fma(c, w, columns, c * w * vec_regs) if weights else 0.0
        return (cycles, -c * w, (c + w) / (c * w))

    return min(fits, key=cost)


def largest_divisor(n: int, limit: int) -> int:
    for d in range(max(min(n, limit), 1), 0, -1):
        if n % d == 0:
            return d
    return 1


def vector_factor(n: int, lanes: int) -> int:
    """Largest power of two <= lanes dividing n (1 when none >= 2 does)."""
    v = lanes
    while v > 1 and n % v:
        v //= 2
    return v


# ---- tiling primitives ---------------------------------------------------------------------
def split2(sch, loop, inner: int, tunable: bool, max_inner: int):
    """loop -> (outer, inner) with ``inner`` iterations inside; in a tunable schedule a
    sampled tile whose default decision is ``inner``, so tuning searches around it."""
    return split_tiles(sch, loop, [inner], tunable, max_inner)


def split_tiles(sch, loop, inners: list[int], tunable: bool, max_inner: int):
    """loop -> (outer, *inner loops of ``inners`` iterations), one sampled perfect tile in a
    tunable schedule (its default decision ``inners``)."""
    if tunable:
        n, inner = extent(sch, loop), 1
        for f in inners:
            inner *= f
        factors = sch.sample_perfect_tile(
            loop,
            n=1 + len(inners),
            max_innermost_factor=max(max_inner, inners[-1]),
            decision=[n // inner, *inners],
        )
        return sch.split(loop, factors)
    return sch.split(loop, [None, *inners])


UNROLL_CHOICES = (0, 16, 64, 512)


def unroll_pragma(sch, loop, default: int, tunable: bool) -> None:
    """TVM's auto-unroll of the loops under ``loop`` up to ``default`` steps (sampled in a
    tunable schedule)."""
    if tunable:
        value = sch.sample_categorical(
            list(UNROLL_CHOICES),
            [1.0 / len(UNROLL_CHOICES)] * len(UNROLL_CHOICES),
            UNROLL_CHOICES.index(default),
        )
    else:
        value = default
    sch.annotate(loop, "pragma_auto_unroll_max_step", value)
    sch.annotate(loop, "pragma_unroll_explicit", 1)


def parallel_vectorized(
    sch, block, facts: CpuFacts, min_parallel: int = 4096, masked_tail: bool = False
) -> None:
    """A spatial block's innermost loop vectorized where a power of two divides it, its
    leading loops fused into one parallel loop (when the block is big enough to pay for
    the threads and the target has more than one). ``masked_tail``: a loop of at least 4 that
    no power of two from 4 up divides gets whole vectors and a masked last one instead (the
    pad of a plain NCHW depthwise conv, rows of 30: 0.042 -> 0.018 ms for ShuffleNet's; for
    injective kernels in general it lost, PicoDet's 0.9 -> 1.6 ms)."""
    lanes = facts.lanes
    loops = sch.get_loops(block)
    if not loops:
        return
    total = 1
    for lp in loops:
        total *= extent(sch, lp)
    inner = loops[-1]
    v = vector_factor(extent(sch, inner), lanes)
    outer = list(loops)
    if masked_tail and v < 4 <= extent(sch, inner):
        v = lanes
    if v >= 2:
        if v != extent(sch, inner):
            loops = list(loops[:-1]) + list(sch.split(inner, [None, v]))
        sch.vectorize(loops[-1])
        outer = list(loops[:-1])
    if outer and total >= min_parallel and facts.parallel:
        keep, n = [], 1
        for lp in outer:
            keep.append(lp)
            n *= extent(sch, lp)
            if n >= 64:
                break
        sch.parallel(sch.fuse(*keep) if len(keep) > 1 else keep[0])


def tile_epilogue(sch, loops, lanes: int) -> None:
    """Loops of an epilogue computed at a register tile: the innermost vectorized where it
    divides, the rest unrolled from the inside out while the unrolled body stays within
    MAX_UNROLL statements."""
    if not loops:
        return
    inner = loops[-1]
    v = vector_factor(extent(sch, inner), lanes)
    if v > 1:
        if v < extent(sch, inner):
            loops = list(loops[:-1]) + list(sch.split(inner, [None, v]))
        sch.vectorize(loops[-1])
        loops = loops[:-1]
    body = 1
    for lp in reversed(loops):
        e = extent(sch, lp)
        if e == 1:
            continue
        if body * e > MAX_UNROLL:
            break
        body *= e
        sch.unroll(lp)


def inline_else_at_root(sch, blocks: list, facts: CpuFacts, masked_tail: bool = False) -> None:
    """Each of ``blocks`` but the last inlined into its consumers where it can be (read twice
    or not elementwise: it stays at root); what stays at root, the last always, is
    vectorized and parallel."""
    for b in blocks[:-1]:
        try:
            sch.compute_inline(b)
        except tvm.s_tir.ScheduleError:
            parallel_vectorized(sch, b, facts, masked_tail=masked_tail)
    if blocks:
        parallel_vectorized(sch, blocks[-1], facts, masked_tail=masked_tail)


def is_concat(sch, block) -> bool:
    """A spatial block selecting between two or more tensors (a concat; a pad selects
    between one tensor and a constant)."""
    body = sch.get(block).body
    sources = {region.source.name for region in sch.get(block).reads}
    return isinstance(body, tvm.tirx.BufferStore) and len(sources) > 1 and "if_then_else" in str(body.value)


def inline_around(sch, red, facts: CpuFacts, masked_tail: bool = False):
    """Prepare a one-reduction kernel: the injective chain after ``red`` inlined into its
    last block (the epilogue), ``red`` accumulating in a local buffer, producers (pad,
    elementwise inputs) inlined into each other and the last one scheduled at root
    (``masked_tail``: see ``parallel_vectorized``). Returns the epilogue block."""
    pre, post = split_around(sch, red)
    # a concat computed per register tile would cover only the tile's own channels: the
    # other inputs' part is never written (YOLOv8n's C2f concat read garbage, NaN). The
    # epilogue stops before it; the concat and what follows run at root
    cut = next((i for i, b in enumerate(post) if is_concat(sch, b)), len(post))
    inline_else_at_root(sch, post[cut:], facts)
    post = post[:cut]
    for b in post[:-1]:
        sch.compute_inline(b)
    if post:
        epilogue = post[-1]
        sch.set_scope(red, 0, "local")
    else:
        epilogue = sch.cache_write(red, 0, "local")
    inline_else_at_root(sch, pre, facts, masked_tail)
    return epilogue
