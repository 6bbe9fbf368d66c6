"""Depth-first schedules for fused kernels: the last op's output is produced tile by tile
(rows, or rows x output-channel blocks), and every producer in the kernel is computed inside
that tile loop, so intermediates live in small line buffers instead of whole tensors.

    func, report = depth_first(prim_func, TileHint("lbdf", buffer_bytes=128 << 10), target)
    mod, reports = schedule_kernels(fused_mod, {"fuser_group_3": TileHint("brr", tiles=4)}, target)

Rules, applied to one PrimFunc (a fusion-plan group after FuseTIR, or any other kernel):

0. One op (llvm). A kernel with a single reduction over a blocked NCHW[x]c tensor (one conv,
   depthwise conv or pool and its epilogue, no concat) that reads the kernel's arguments is not
   tiled: it has no intermediate a line buffer could keep on chip (one that computes its input,
   an activation, is: the default schedule would write that input whole; so is a pad or concat
   of the arguments whose one image exceeds 3/4 of the planned buffer), and the default
   ``window`` rule already runs output-channel chunks outermost (each weight read once, the
   input kept in cache) with a register tile, while one image of its input fits 3/4 of the
   buffer (else each chunk reads it again: row tiles read it once, when the weights fit, and
   the reduction outermost streams both once when the output fits, rule 2; MobileNetV2 at
   224, 128 KB: its lone 1x1 project convs, 451 KB of input and 221 KB of weights, measured
   3.8-4.0x their prediction on the default schedule, 1.10x so; the model 1.10x -> 1.03x).
   MobileNetV2 at 224, 128 KB, x86-64-v2: lone depthwise convs measured 2.0-3.4x their
   predicted DRAM on the default schedule (the pad written whole), lone 1x1 expand convs 3.4x
   (a 301 KB input read per chunk); the model 1.67x -> 1.10x (1.03x when last measured at 224,
   before rule 0 sent lone convs to the default schedule). Measured:
   MobileNetV2 at 224, 1 thread, its last 1x1 convs (7x7 rows, 1.2-1.6 MB of weights) took
   0.9-1.0 ms tiled against 0.26-0.34 ms on the default schedule. Except when the default
   schedule would read the weights more than once: its weights exceed 3/4 of the planned
   buffer, its output has more than one row, and one iteration of the default schedule's
   innermost loop over output rows (the window rule's batch x chunk x row loop) touches more
   than 3/4 of the buffer of weights, which the next row then reads again. The cost model
   reads weights once; ResNet-18 at 64x64, 128 KB, x86-64-v2: layer4's 3x3 convs (a chunk of
   16 channels is 147-295 KB of weights, 2 rows) measured 2.2x their prediction. Rule 2b
   then blocks its output channels.

1. Inline. A spatial block is inlined into its consumers when none of them is a reduction (an
   elementwise chain becomes one epilogue) or the reductions read each of its elements once (a
   global pool: nothing is computed twice, and nothing is written whole; MobileNetV2 at 224,
   128 KB: its last ReLU6 + pool group 2.8x its predicted DRAM); a plain copy (a pad that pads
   nothing, a reshape, a split) is inlined into any consumer. A real pad (and a concat: both
   select) is kept: it is the line buffer of the op after it, and the activation before it is
   inlined into it. An output block is reverse-inlined into its one spatial producer when it
   can be and is that producer's only reader (the residual Add joins the epilogue of the last
   conv; TVM's reverse_compute_inline would drop a buffer another block still reads).
2. Anchors and tiles. Every output block whose tensor has rows (rank >= 4, H > 1) is an
   anchor; an output the kernel also reads itself is split with ``cache_write`` into an
   internal block and a copy, the copy being the anchor. Each anchor's loops become
   (batch, band, tile, rows of the tile, the rest), shared by all anchors (``merge``), each
   taking ceil(H / tiles) rows per tile. LBDF: one row of the last output per tile (the cost
   model's sink = 1 row); BRR: the plan's T* tiles. Bands split the rows between threads at
   batch 1 (each band starts its line buffers afresh). Channel-major instead, (batch, channel
   block, tile, ...), for one anchor when: (a) no op reduces over channels (elementwise,
   depthwise, pooling chains): one channel at a time, whose rows are contiguous, where a row
   of all channels touches a cache line per channel; (b) a single weighted op whose weights
   exceed 3/4 of the planned buffer: blocks of output channels whose weights are read once, as
   the cost model's single-op baseline assumes, where rows would stream all weights per tile
   (the input stays on chip across blocks, and blocks run in parallel). The fewest blocks of at
   most 1/4 of the buffer each that divide the channel loop (a blocked tensor's loop runs over
   its channel chunks: at most one block a chunk), so a block's weights stay on chip across its
   rows; when the input does
   not fit but the output does, it is not tiled at all: its reduction loops go outermost, the
   output accumulates on chip, and inputs and weights stream once.
3. Producers, last first, are computed at the tile loop (``compute_at``) when all their
   consumers are already under it. Held back: blocks whose output is a vector rather than a
   map (global pools, squeeze-and-excite vectors, flattened features: a tile would recompute
   them whole) and, through them, what they read. A held
   block with rows whose consumers are all settled starts a stage of its own, an earlier tile
   loop: the tensor a global pool reads is produced whole, tile by tile, before the pool (the
   cost model's barrier rule). Blocks that fit no stage stay whole, in program order.
4. Inner loops: ``inner(sch, blocks, target)`` schedules the loops inside the tiles (default
   ``default_inner``; the CPU default schedules replace it), then batch x bands becomes the
   parallel loop (llvm) or blockIdx.x (cuda; inner loops bound to threadIdx.x). llvm: a
   reduction whose contiguous innermost loop is at least ``MIN_VECTOR`` lanes wide (an NCHW
   row; the channel block of the blocked NCHW[x]c layout the layout passes give plan groups,
   with weights prepacked) gets a register tile (``_register_tile``), written back per tile:
   reg_c output channels (NCHW[x]c: channel chunks) x reg_w row vectors (NCHW[x]c: output
   columns, the vector being the channel block). A conv (a depthwise conv or pool, whose input
   differs per accumulator, tiles the row alone, on half the registers) takes the pair whose
   registers fit without spilling (``conv_register_tile``: accumulators, a weight vector per
   chunk, the broadcast inputs), the fewest cycles per multiply-add counting the weights it
   reloads when they leave L1 (``ConvWeights``), then the most accumulators, then the fewest
   loads per multiply-add, (reg_c + reg_w) / (reg_c x reg_w). Counting only the accumulators (at most
   the registers less 4, fewest loads) picked 4 chunks x 7 columns and 2 x 14 on AVX-512,
   39 and 44 registers: LLVM spilled accumulators to the stack in the reduction loop, with
   unaligned 64-byte moves whose cost depends on where the process's stack starts (the same
   kernel 1.5-2x slower in one process than in another, set by the environment's size).
   MobileNetV2 224, 1 thread, Zen 4 (AVX-512), per group against the old pairs: features.5
   0.29-0.52 -> 0.23 ms (1 x 28), features.8-9 0.61-0.65 -> 0.42 ms (2 x 7, 3 x 7),
   features.10-11 0.50-0.85 -> 0.46 ms; the model 8-19% less (three runs of plan_latency:
   8.22-8.94 -> 7.21-7.48 ms). As in the window rule, a conv's innermost reduction loop is
   unrolled 16 deep, a depthwise or pooling window of at most 49 taps whole, and the
   write-back's loops are unrolled, so the accumulators stay in registers (a rolled write-back
   loop indexed them on the stack). The elementwise block that alone reads a register tile's
   result (a bias and activation, a residual add) is then computed in the tile's write-back,
   from the registers: inlined where TVM can, else (a consumer under compute_at's edge
   predicate, or reading a second tensor) moved to the write-back's loop with the write-back
   inlined into it, saving a pass over the line buffer. MobileNetV2 224, 1 thread, Zen 4:
   group kernels 6.75 -> 6.21 ms (the same groups split per conv: 5.94 ms); the model at b8
   55.5 -> 51-54 ms, 1.17x -> 1.24x the FuseOps build's speed (11 processes). Other spatial
   blocks (pads, activations) are vectorized on their innermost loop when it walks only the
   last axis of every access of more than one element (a bias
   (1, C, 1, 1) is contiguous in C). A kernel LLVM does not compile is scheduled again
   without register tiles; if that fails too, the kernel as it came goes to the default
   schedules and its report says why.
5. Line buffers. Each intermediate written under a tile loop keeps only its window: E rows
   (what one tile reads of it), indexed ``row mod E``. LBDF rolls: a producer computes only the
   rows the previous tile has not (predicate ``tile == 0 or row - first >= E - S``, S rows
   advanced per tile), so every row is computed once. BRR recomputes each tile's halo (Optimus).
   A register tile's local accumulator rolls with the window its copy-out writes.
   A one-element store before the tile loop keeps the buffer's allocation outside it (it lives
   across tiles); it is added last, as it makes the producer no longer the buffer's only writer.
   TVM's ``rolling_buffer`` does this only for windows that start exactly at ``tile * S`` (a
   padded window starts at ``tile * S - pad``) and marks every block's row axis opaque, which
   stops all other buffers from compacting, so the rewrite is done here.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from fuser.ir import FuserError

from .common import require_tvm, tvm

STYLES = ("lbdf", "brr")
SCHEDULED_ATTR = "fuser.depth_first"  # PrimFunc attribute: the schedule report (JSON)
CUDA_THREADS = 128
LINE_BYTES = 64  # cache line
CUDA_ROWS_PER_BAND = 4
SPATIAL, REDUCE = 0, 2  # IterVar.iter_type of a data-parallel and of a reduction axis
TILE_ANNOTATION = "fuser.tile"  # marks tile loops: inner rules schedule only the loops below
TILE_DEPTH = 2  # an anchor's loops: batch, band (or channel block), tile, ...
MIN_VECTOR = 4  # lanes below which a one-row register tile does not pay (narrow late layers)


@dataclass(frozen=True)
class TileHint:
    """How to tile one kernel.

    ``style``: lbdf (one row per tile, rolling line buffers) or brr (``tiles`` tiles of the
    last output, halos recomputed). ``buffer_bytes``: the on-chip buffer the plan assumed (it
    sizes channel blocks; None: no channel blocking). ``threads``: CPU threads.
    """

    style: str = "lbdf"
    tiles: int | None = None
    buffer_bytes: int | None = None
    threads: int = 1

    def __post_init__(self):
        if self.style not in STYLES:
            raise FuserError(f"tile style '{self.style}': choose one of {', '.join(STYLES)}")


@dataclass
class Stage:
    """One tile loop of a kernel: its anchors, how it is split and the blocks inside it."""

    anchors: list[str]
    tiles: int
    bands: int = 1
    channel_blocks: int = 1
    blocks: list[str] = field(default_factory=list)


@dataclass
class KernelSchedule:
    """What ``depth_first`` did to one kernel (plain data for reports)."""

    kernel: str
    style: str
    stages: list[Stage] = field(default_factory=list)
    line_buffers: dict[str, int] = field(default_factory=dict)  # writer block -> rows its buffer keeps
    whole: list[str] = field(default_factory=list)  # intermediates kept whole
    note: str = ""

    @property
    def tiled(self) -> bool:
        return bool(self.stages)

    def to_dict(self) -> dict:
        return {
            "kernel": self.kernel,
            "style": self.style,
            "tiled": self.tiled,
            "stages": [vars(s) for s in self.stages],
            "line_buffers": self.line_buffers,
            "whole": self.whole,
            "note": self.note,
        }


# ---- IR queries ---------------------------------------------------------------------------
def _sblock_types():
    from tvm.s_tir import SBlock, SBlockRealize

    return SBlock, SBlockRealize


def _substitute(expr, pairs):
    """``expr`` with each Var of ``pairs`` (var, value) replaced."""
    import tvm_ffi

    def swap(v):
        return next((value for var, value in pairs if v.same_as(var)), v)

    return tvm_ffi.structural_map(expr, (tvm.ir.expr.Var, swap))


def _uses(expr, var) -> bool:
    import tvm_ffi

    found = []
    tvm_ffi.structural_walk(expr, (tvm.ir.expr.Var, lambda v: found.append(v) if v.same_as(var) else None))
    return bool(found)


def _realizes(stmt) -> list[tuple]:
    """(SBlockRealize, enclosing For loops) for every block under ``stmt``, in program order."""
    _, SBlockRealize = _sblock_types()
    tirx = tvm.tirx
    out = []

    def visit(s, loops):
        if isinstance(s, SBlockRealize):
            out.append((s, loops))
            visit(s.block.body, loops)
        elif isinstance(s, tirx.For):
            visit(s.body, (*loops, s))
        elif isinstance(s, tirx.SeqStmt):
            for x in s.seq:
                visit(x, loops)
        elif isinstance(s, tirx.IfThenElse):
            visit(s.then_case, loops)
            if s.else_case is not None:
                visit(s.else_case, loops)

    visit(stmt, ())
    return out


def _shape(buf) -> list[int]:
    return [int(d) for d in buf.ty.shape]


def _row_axis(buf) -> int | None:
    """The row axis of a buffer with more than one row, or None: axis 2 of a blocked
    NCHW[x]c tensor (rank 5, the layout passes' convs), else shape[-2] for rank >= 4."""
    shape = _shape(buf)
    axis = 2 if len(shape) == 5 else len(shape) - 2
    return axis if len(shape) >= 4 and shape[axis] > 1 else None


def _stores(block) -> list:
    import tvm_ffi

    out = []
    tvm_ffi.structural_walk(block.body, (tvm.tirx.BufferStore, out.append))
    return out


def _loads(block) -> list:
    import tvm_ffi

    out = []
    tvm_ffi.structural_walk(block.body, (tvm.ir.expr.TensorLoad, out.append))
    return out


class _Kernel:
    """A Schedule with the queries the rules need."""

    def __init__(self, sch):
        self.sch = sch
        self.final: set[str] = set()  # blocks whose loops the inner rules must not reorder

    @property
    def root(self):
        return self.sch.get_sblock("root")

    def same(self, a, b) -> bool:
        """Whether two loop or block handles name the same statement."""
        return self.sch.get(a).same_as(self.sch.get(b))

    def blocks(self) -> list:
        return list(self.sch.get_child_blocks(self.root))

    def name(self, b) -> str:
        return self.sch.get(b).name_hint

    def is_reduction(self, b) -> bool:
        return any(int(iv.iter_type) == REDUCE for iv in self.sch.get(b).iter_vars)

    def written(self, b):
        return self.sch.get(b).writes[0].source

    def has_rows(self, b) -> bool:
        return _row_axis(self.written(b)) is not None

    def height(self, b) -> int:
        buf = self.written(b)
        return _shape(buf)[_row_axis(buf)]

    def is_output(self, b) -> bool:
        block = self.sch.get(b)
        return any(self.sch.get(o).same_as(block) for o in self.sch.get_output_blocks(self.root))

    def _value(self, b):
        body = self.sch.get(b).body
        return body.value if isinstance(body, tvm.tirx.BufferStore) else None

    def selects(self, b) -> bool:
        """A spatial block choosing between inputs or a constant: a real pad, a concat."""
        value = self._value(b)
        return value is not None and "if_then_else" in str(value)

    def is_copy(self, b) -> bool:
        return isinstance(self._value(b), tvm.ir.expr.TensorLoad)

    def realize(self, b):
        block = self.sch.get(b)
        return next(r for r, _ in _realizes(self.sch.mod["main"].body) if r.block.same_as(block))

    def bound(self, b, expr):
        """``expr`` (in ``b``'s block vars) in terms of the loop vars around ``b``."""
        r = self.realize(b)
        return _substitute(expr, [(iv.var, v) for iv, v in zip(r.block.iter_vars, r.iter_values)])

    def row_loop(self, b):
        """The loop running over the rows of ``b``'s output, or None."""
        buf = self.written(b)
        axis = _row_axis(buf)
        store = next((s for s in _stores(self.sch.get(b)) if s.buffer.same_as(buf)), None)
        if axis is None or store is None:
            return None
        row = self.bound(b, store.indices[axis])
        loops = [lp for lp in self.sch.get_loops(b) if _uses(row, self.sch.get(lp).loop_var)]
        return loops[0] if len(loops) == 1 else None

    def channel_local(self) -> bool:
        """Whether no block reduces over channels: no data read has an axis indexed by reduction
        variables alone (a dense conv's input channel, a matmul's k, a global pool's rows);
        a window's reduction is added to an output position. Elementwise, depthwise, pooling and
        resize chains are channel-local. Weights are not data: a read that does not follow the
        output rows of a reduction with rows (a depthwise kernel's taps) is skipped, as in
        ``sizes``."""
        for b in self.blocks():
            block = self.sch.get(b)
            spatial = [iv.var for iv in block.iter_vars if int(iv.iter_type) != REDUCE]
            reduce = [
                iv.var for iv in block.iter_vars if int(iv.iter_type) == REDUCE and int(iv.dom.extent) > 1
            ]
            rows = self._row_vars(b) if self.is_reduction(b) and self.has_rows(b) else []
            for ld in _loads(block):
                if len(_shape(ld.source)) < 3:
                    continue
                if rows and not any(_uses(i, v) for i in ld.indices for v in rows):
                    continue  # a weight
                for index in ld.indices:
                    if any(_uses(index, v) for v in reduce) and not any(_uses(index, v) for v in spatial):
                        return False
        return True

    def varies(self, b) -> bool:
        """Whether ``b``'s output is a map (two or more non-unit axes after the batch), which a
        tile computes a part of; a vector (a pooled or fully connected output) is computed whole,
        once. A blocked NCHW[x]c tensor's two channel axes count as one."""
        shape = _shape(self.written(b))
        if len(shape) == 5:
            shape = [shape[0], shape[1] * shape[4], *shape[2:4]]
        return sum(d > 1 for d in shape[1:]) >= 2

    def _row_vars(self, b) -> list:
        """The block variables that index the row axis of what ``b`` writes."""
        block = self.sch.get(b)
        buf = self.written(b)
        store = next(s for s in _stores(block) if s.buffer.same_as(buf))
        return [iv.var for iv in block.iter_vars if _uses(store.indices[_row_axis(buf)], iv.var)]

    def sizes(self) -> _Sizes:
        """Bytes the kernel reads and writes: a weight is a parameter a reduction reads with an
        index that does not follow its output rows; other parameters are inputs or outputs."""
        func = self.sch.mod["main"]
        params = list(func.params)
        outputs = [self.written(b) for b in self.blocks() if self.is_output(b)]
        sizes = _Sizes()
        weights = []
        for b in self.blocks():
            if not self.is_reduction(b) or not self.has_rows(b):
                continue
            block = self.sch.get(b)
            rows = self._row_vars(b)
            mine = [
                ld.source
                for ld in _loads(block)
                if any(ld.source.same_as(p) for p in params)
                and not any(_uses(i, v) for i in ld.indices for v in rows)
            ]
            if mine:
                sizes.weighted.append(self.name(b))
            weights += [w for w in mine if not any(w.same_as(x) for x in weights)]
        for i, p in enumerate(params):
            if any(p.same_as(w) for w in weights):
                sizes.weight += _bytes(p)
                sizes.weight_params.append(i)
            elif any(p.same_as(o) for o in outputs):
                sizes.output += _bytes(p)
            else:
                sizes.input += _bytes(p)
        return sizes


def _bytes(buf) -> int:
    return math.prod(_shape(buf)) * tvm.DataType(str(buf.ty.dtype)).bits // 8


@dataclass
class _Sizes:
    weighted: list[str] = field(default_factory=list)  # reductions that read weights
    weight: int = 0
    input: int = 0
    output: int = 0
    weight_params: list[int] = field(default_factory=list)  # positions of the weights in the params


# ---- rule 0: one op ---------------------------------------------------------------------------
SINGLE_OP_NOTE = "not tiled: one blocked op, no intermediate to keep; default schedule"


def _single_blocked_op(k: _Kernel, hint: TileHint, target) -> bool:
    """Whether the kernel's only reduction writes a blocked (5-D) tensor, reads the kernel's
    arguments (or plain copies of them), only elementwise work follows it, and the default
    schedule reads its weights once (rule 0)."""
    reductions = [b for b in k.blocks() if k.is_reduction(b)]
    if len(reductions) != 1 or len(_shape(k.written(reductions[0]))) != 5:
        return False
    if _computes_its_input(k, reductions[0], hint):
        return False
    sizes = k.sizes()
    if _input_over_buffer(k, reductions[0], sizes, hint) and not (
        _weights_over_buffer(sizes, hint) and _output_over_buffer(k, reductions[0], sizes, hint)
    ):
        return False  # rows when the weights fit, the reduction outermost when the output does
    # rule 2b instead where the default schedule would read the weights once per output row
    return not (
        k.has_rows(reductions[0])
        and _weights_over_buffer(sizes, hint)
        and _default_rereads_weights(k.sch.mod["main"], target, sizes, hint)
    )


def _computes_its_input(k: _Kernel, reduction, hint: TileHint) -> bool:
    """Whether the kernel computes what its reduction reads (an activation; a real pad or a
    concat, of the arguments too, when one image of it exceeds 3/4 of the buffer) rather than
    reading the kernel's arguments or plain copies of them: the default schedule computes that
    tensor whole, at root, so it moves to DRAM and back, where row tiles keep it in a line
    buffer. ConvFirst at 64x64, 128 KB: its SiLU + 1x1
    conv + add groups measured 5-6x their prediction on rule 0; MobileNetV2 at 224, 128 KB: its
    lone depthwise convs (a pad of the argument, written whole) 2.0-3.4x, the model 1.67x."""
    params = list(k.sch.mod["main"].params)

    def computed(buf, reader) -> bool:
        if any(buf.same_as(p) for p in params):
            return False
        for b in k.blocks():
            if k.written(b).same_as(buf) and not k.same(b, reader):
                # a pad or concat counts when the cache does not keep it between its passes
                if not k.is_copy(b) and (not k.selects(b) or _over_buffer(_bytes(buf), hint, _shape(buf)[0])):
                    return True
                return any(computed(r.source, b) for r in k.sch.get(b).reads)
        return False

    return any(computed(r.source, reduction) for r in k.sch.get(reduction).reads)


def _input_over_buffer(k: _Kernel, reduction, sizes: _Sizes, hint: TileHint) -> bool:
    """Whether one image of the kernel's input exceeds 3/4 of the planned buffer: the default
    schedule, output-channel chunks outermost, then reads it again for every chunk, where row
    tiles read it once while the (fitting) weights stay on chip. MobileNetV2 at 224, 128 KB: a
    lone 1x1 conv over a 301 KB map (features.3's expand) measured 3.4x its prediction."""
    if not k.has_rows(reduction):  # sizes counts weights only of reductions with rows
        return False
    return _over_buffer(sizes.input, hint, _shape(k.written(reduction))[0])


def _output_over_buffer(k: _Kernel, reduction, sizes: _Sizes, hint: TileHint) -> bool:
    """Whether one image of the kernel's output exceeds 3/4 of the planned buffer. When it does
    not, while input and weights do, the reduction goes outermost (rule 2), so that the output
    accumulates on chip and both stream once, where the default schedule reads the input again
    per output chunk. MobileNetV2 at 224, 128 KB: its lone 1x1 project convs (451 KB input,
    221 KB weights, 75 KB output) measured 3.8-4.0x their prediction."""
    return _over_buffer(sizes.output, hint, _shape(k.written(reduction))[0])


def _weights_over_buffer(sizes: _Sizes, hint: TileHint) -> bool:
    """Whether the kernel's weights exceed 3/4 of the planned buffer (rules 0 and 2b)."""
    return _over_buffer(sizes.weight, hint)


def _over_buffer(nbytes: int, hint: TileHint, images: int = 1) -> bool:
    """Whether ``nbytes`` (of ``images`` images) exceed 3/4 of the planned buffer per image
    (never without a planned buffer)."""
    return bool(hint.buffer_bytes) and 4 * nbytes > 3 * hint.buffer_bytes * max(images, 1)


def _default_rereads_weights(func, target, sizes: _Sizes, hint: TileHint) -> bool:
    """Whether the default schedule of a one-op kernel reads more than 3/4 of the buffer of
    weights per output row: the next row then reads them again. Measured on the scheduled
    loops: the weights one iteration of the innermost loop over output rows touches (the
    window rule's is the fused batch x chunk x row loop, a chunk's weights inside it)."""
    from .schedules import schedule_func

    scheduled, _ = schedule_func(func, target) if target is not None else (None, None)
    if scheduled is None:
        return False
    weights = [scheduled.params[i] for i in sizes.weight_params]
    ana = tvm.sym.Analyzer()
    IntImm = tvm.ir.prim.expr.IntImm
    for realize, loops in _realizes(scheduled.body):
        block = realize.block
        loads = [ld for ld in _loads(block) if any(ld.source.same_as(w) for w in weights)]
        out = block.writes[0].source if block.writes else None
        axis = None if out is None else _row_axis(out)
        store = next((s for s in _stores(block) if out is not None and s.buffer.same_as(out)), None)
        if not loads or axis is None or store is None:
            continue
        pairs = [(iv.var, v) for iv, v in zip(block.iter_vars, realize.iter_values)]
        row = _substitute(store.indices[axis], pairs)
        at = [i for i, lp in enumerate(loops) if _uses(row, lp.loop_var)]
        if not at:
            continue
        inner = {
            lp.loop_var: tvm.sym.IntervalSet(lp.min, lp.min + lp.extent - 1) for lp in loops[at[-1] + 1 :]
        }
        per_row = 0
        for ld in loads:
            touched = _bytes(ld.source) // math.prod(_shape(ld.source))
            for index in ld.indices:
                span = ana.int_set(_substitute(index, pairs), inner)
                extent = ana.simplify(span.max_value - span.min_value + 1)
                touched *= int(extent) if isinstance(extent, IntImm) else 1 << 30
            per_row += touched
        return 4 * per_row > 3 * hint.buffer_bytes
    return False


# ---- rule 1: inline ----------------------------------------------------------------------
def _inline(k: _Kernel) -> None:
    sch = k.sch
    ScheduleError = tvm.s_tir.ScheduleError
    changed = True
    while changed:
        changed = False
        for b in k.blocks():
            if k.is_output(b) or k.is_reduction(b) or k.selects(b):
                continue
            consumers = list(sch.get_consumers(b))
            if consumers and (
                k.is_copy(b) or all(not k.is_reduction(c) or _reads_once(k, b, c) for c in consumers)
            ):
                try:
                    sch.compute_inline(b)
                except ScheduleError:
                    continue
                changed = True
                break
    for b in k.blocks():
        if k.is_output(b) and not k.is_reduction(b):
            producers = list(sch.get_producers(b))
            if (
                len(producers) == 1
                and not k.is_reduction(producers[0])
                and not k.selects(producers[0])
                and len(sch.get_consumers(producers[0])) == 1  # TVM would drop a buffer others read
            ):
                with contextlib.suppress(ScheduleError):
                    sch.reverse_compute_inline(b)


def _reads_once(k: _Kernel, b, reduction) -> bool:
    """Whether ``reduction`` reads each element of ``b``'s output once (every index one of its
    iteration variables, none twice, every non-unit one used: a global pool), so that inlining
    ``b`` computes nothing twice. MobileNetV2 at 224, 128 KB: its last ReLU6 was written whole
    before the global pool read it back, 2.8x the group's predicted DRAM."""
    block = k.sch.get(reduction)
    ivs = {iv.var: iv for iv in block.iter_vars}
    source = k.written(b)
    loads = [ld for ld in _loads(block) if ld.source.same_as(source)]
    for ld in loads:
        used = []
        for index in ld.indices:
            var = next((v for v in ivs if index.same_as(v)), None)
            if var is None or any(var.same_as(u) for u in used):
                return False
            used.append(var)
        for var, iv in ivs.items():
            if not any(var.same_as(u) for u in used) and int(iv.dom.extent) != 1:
                return False
    return bool(loads)


# ---- rules 2-3: anchors, stages, compute_at ------------------------------------------------
def _order(k: _Kernel, anchors: list, hint: TileHint, sizes: _Sizes) -> str:
    """The loop order of the first stage (rule 2): rows, channels, blocks or reduction."""
    if len(anchors) != 1:
        return "rows"
    if k.channel_local():
        return "channels"
    beta = hint.buffer_bytes
    if len(sizes.weighted) != 1 or not _weights_over_buffer(sizes, hint):
        return "rows"
    batch = _shape(k.written(anchors[0]))[0]  # tiles run image by image: what one image needs
    if 4 * sizes.input <= 3 * beta * batch or 4 * sizes.output > 3 * beta * batch:
        return "blocks"  # the input stays on chip while weight blocks stream (in parallel)
    return "reduction"


def _tile(k: _Kernel, anchors: list, hint: TileHint, kind: str, order: str, sizes: _Sizes) -> Stage:
    """Split the anchors' loops into (batch, band or channel block, tile, ...), merged."""
    sch = k.sch
    height = max(k.height(a) for a in anchors)
    tiles = height if hint.style == "lbdf" or not hint.tiles else max(1, min(hint.tiles, height))
    stage = Stage([k.name(a) for a in anchors], tiles)
    beta = hint.buffer_bytes
    per_channel = order == "channels"
    channel_mode = order in ("channels", "blocks")
    nests = []
    for a in anchors:
        row = k.row_loop(a)
        loops = list(sch.get_loops(a))
        batch = loops[0] if len(loops) > 1 and not k.same(loops[0], row) else None
        rest = [lp for lp in loops if not k.same(lp, row) and (batch is None or not k.same(lp, batch))]
        if channel_mode and rest:
            channels = int(sch.get(rest[0]).extent)
            stage.channel_blocks = channels if per_channel else _weight_blocks(channels, sizes.weight, beta)
            block, inner = sch.split(rest[0], [stage.channel_blocks, None])
            rest = [inner, *rest[1:]]
            sch.reorder(*([batch] if batch is not None else []), block, row, *rest)
            tile, _ = sch.split(row, [tiles, None])
            nests.append((batch, block, tile))
            continue
        sch.reorder(*([batch] if batch is not None else []), row, *rest)
        nests.append((batch, row, None))
    if channel_mode:
        return stage
    batch_extent = int(sch.get(nests[0][0]).extent) if nests[0][0] is not None else 1
    if kind == "cuda":  # a divisor: a partial band would put the block's syncs under a condition
        stage.bands = max(
            b for b in range(1, tiles + 1) if tiles % b == 0 and b * CUDA_ROWS_PER_BAND <= max(tiles, 4)
        )
    elif batch_extent < hint.threads and tiles >= 2 * hint.threads:
        stage.bands = hint.threads
    per_band = math.ceil(tiles / stage.bands)
    nests = [
        (batch, *sch.split(row, [stage.bands, per_band, math.ceil(k.height(a) / tiles)])[:2])
        for a, (batch, row, _) in zip(anchors, nests)
    ]
    if len(nests) > 1:
        for level in range(3):  # batch, band, tile: one loop nest for all anchors
            loops = [n[level] for n in nests]
            if all(lp is not None for lp in loops):
                sch.merge(*loops)
                nests = [_outer(k, a, n[0] is not None) for a, n in zip(anchors, nests)]
    return stage


def _weight_blocks(channels: int, weight: int, beta: int) -> int:
    """Output-channel blocks of a weight-heavy op (rule 2b): each block's weights at most 1/4 of
    the buffer, so that they stay on chip across the block's rows (the cost model reads them
    once); the fewest that divide the channel loop (a partial block's predicate would stop the
    inner loops' unrolling), at most one a channel (of a blocked tensor: a chunk of channels)."""
    want = min(channels, math.ceil(4 * weight / beta))
    return next(d for d in range(want, channels + 1) if channels % d == 0)


def _outer(k: _Kernel, anchor, has_batch: bool):
    """The (batch, band, tile) loops of ``anchor`` (loop handles change on merge)."""
    loops = list(k.sch.get_loops(anchor))
    return (loops[0], loops[1], loops[2]) if has_batch else (None, loops[0], loops[1])


def _tile_loop(k: _Kernel, stage: Stage):
    """The tile loop of a stage: below batch and band (or channel block) of its first anchor."""
    return list(k.sch.get_loops(k.sch.get_sblock(stage.anchors[0])))[TILE_DEPTH]


def _place(k: _Kernel, tile_loop, placed: set) -> list[str]:
    """compute_at every unplaced block, last first, whose consumers are all under ``tile_loop``
    (a vector, a block read outside the loop and what only they read stay where they are)."""
    sch = k.sch
    ScheduleError = tvm.s_tir.ScheduleError
    inside = set(placed)
    moved = []
    for b in reversed(k.blocks()):
        name = k.name(b)
        if name in placed or k.is_output(b):
            continue
        consumers = [k.name(c) for c in sch.get_consumers(b)]
        if not k.varies(b) or not consumers or any(c not in inside for c in consumers):
            continue
        try:
            sch.compute_at(b, tile_loop)
        except ScheduleError:
            continue
        inside.add(name)
        moved.append(name)
    return moved


def _stages(k: _Kernel, hint: TileHint, kind: str) -> tuple[list[Stage], list, str]:
    """Rules 2 and 3: the tile loops of the kernel; returns (stages, their tile loop vars, a
    note when it is not tiled)."""
    sch = k.sch
    for b in k.blocks():
        if k.is_output(b) and k.has_rows(b) and list(sch.get_consumers(b)):
            sch.cache_write(b, 0, "global", consumer_blocks=list(sch.get_consumers(b)))
    sizes = k.sizes()
    anchors = [b for b in k.blocks() if k.is_output(b) and k.has_rows(b) and k.row_loop(b) is not None]
    order = _order(k, anchors, hint, sizes)
    if order == "reduction":
        _reduction_outer(k, sch.get_sblock(sizes.weighted[0]))
        return [], [], "not tiled: reduction outermost (weights and input over the buffer, output under)"
    stages, tile_vars = [], []
    placed = {k.name(a) for a in anchors}
    while anchors:
        stage = _tile(k, anchors, hint, kind, order, sizes)
        tile = _tile_loop(k, stage)
        sch.annotate(tile, TILE_ANNOTATION, 1)
        stage.blocks = _place(k, tile, placed)
        placed.update(stage.blocks)
        stages.append(stage)
        tile_vars.append(sch.get(tile).loop_var)
        anchors = []
        for b in reversed(k.blocks()):  # the next stage: a held map whose consumers are settled
            name = k.name(b)
            if name in placed or k.is_output(b) or not k.has_rows(b) or k.row_loop(b) is None:
                continue
            if all(k.name(c) in placed or not k.varies(c) for c in sch.get_consumers(b)):
                anchors = [b]
                placed.add(name)
                break
        order = "rows"
    return stages, tile_vars, "" if stages else "not tiled: no output has rows"


def _reduction_outer(k: _Kernel, b) -> None:
    """A single op whose weights do not fit but whose output does: the first reduction loop
    (input channels) is split by a cache line of weights and its outer part goes outermost,
    so the output accumulates on chip while inputs and weights stream once; inside it the
    loops run over the output (each vector of the innermost loop accumulating in a register
    across the line of input channels and the kernel window). The inner rules leave it so: a
    register tile's write-back would store a partial sum as the result."""
    sch = k.sch
    loops = list(sch.get_loops(b))
    kinds = _loop_kinds(sch, b, loops)
    reduce = [lp for lp, kd in zip(loops, kinds) if kd == "R"]
    spatial = [lp for lp, kd in zip(loops, kinds) if kd != "R"]
    if not reduce or len(spatial) < 2:
        return
    line = LINE_BYTES // 4
    extent = int(sch.get(reduce[0]).extent)
    outer, inner = (
        sch.split(reduce[0], [None, line]) if extent > line and extent % line == 0 else (None, reduce[0])
    )
    sch.reorder(*([outer] if outer is not None else []), *spatial[:-1], inner, *reduce[1:], spatial[-1])
    if _contiguous_only(sch, b, spatial[-1]) and int(sch.get(spatial[-1]).extent) > 1:
        sch.vectorize(spatial[-1])
    k.final.add(k.name(b))


# ---- rule 4: inner loops --------------------------------------------------------------------
def _loop_kinds(sch, b, loops) -> list[str]:
    """Per loop: S (bound only to spatial iters), R (to a reduction iter) or O (other)."""
    block = sch.get(b)
    realize = next(r for r, _ in _realizes(sch.mod["main"].body) if r.block.same_as(block))
    kinds = []
    for lp in loops:
        var = sch.get(lp).loop_var
        used = [int(iv.iter_type) for iv, v in zip(block.iter_vars, realize.iter_values) if _uses(v, var)]
        kinds.append("R" if REDUCE in used else "S" if used and all(u == 0 for u in used) else "O")
    return kinds


def _vector_lanes(target) -> int:
    """float32 lanes of the target's widest vector, as the CPU default schedules read them
    (``schedules.common.cpu_facts``: AVX-512 16, AVX 8, SSE 4); cuda: 8."""
    if target is None or target.kind.name != "llvm":
        return 8
    from .schedules.common import cpu_facts

    return cpu_facts(target).lanes


def _contiguous_only(sch, b, loop) -> bool:
    """Whether ``loop`` indexes only the last (contiguous) axis of the block's reads and writes:
    the loop that may be vectorized without strided (cache-line wasting) accesses. Trailing
    axes of one element do not count (a bias of shape (1, C, 1, 1) is contiguous in C)."""
    var = sch.get(loop).loop_var
    block = sch.get(b)
    realize = next(r for r, _ in _realizes(sch.mod["main"].body) if r.block.same_as(block))
    pairs = [(iv.var, v) for iv, v in zip(block.iter_vars, realize.iter_values)]
    for access in [*_loads(block), *_stores(block)]:
        buf = access.source if isinstance(access, tvm.ir.expr.TensorLoad) else access.buffer
        shape = _shape(buf)
        last = max((i for i, d in enumerate(shape) if d > 1), default=len(shape) - 1)
        indices = [_substitute(i, pairs) for i in access.indices]
        if any(_uses(i, var) for i in indices[:last]):
            return False
    return True


def default_inner(sch, blocks: Sequence[str], target=None, register_tiles: bool = True) -> None:
    """The loops inside each tile (the hook the CPU default schedules replace).

    llvm: when the innermost spatial loop walks only the contiguous axis of every access, the
    reduction loops go outside it (decompose_reduction hoists the init) and it is vectorized
    by the target's vector width; otherwise the loop order stays (e.g. a matmul whose weight is
    read along the reduction) so that each cache line is used whole. cuda: the spatial loops
    are fused and bound to threadIdx.x."""
    ScheduleError = tvm.s_tir.ScheduleError
    kind = target.kind.name if target is not None else "llvm"
    lanes = _vector_lanes(target)
    write_backs = []
    for name in blocks:
        try:
            b = sch.get_sblock(name)
            loops = inner_loops(sch, b)
            kinds = _loop_kinds(sch, b, loops)
            spatial = [lp for lp, kd in zip(loops, kinds) if kd == "S"]
            reduce = [lp for lp, kd in zip(loops, kinds) if kd == "R"]
            if not spatial:
                continue
            if kind == "cuda":
                inner = [lp for lp, kd in zip(loops, kinds) if kd == "S"]
                if inner:
                    sch.reorder(*inner, *reduce)
                    fused = sch.fuse(*inner) if len(inner) > 1 else inner[0]
                    _, threads = sch.split(fused, [None, CUDA_THREADS])
                    sch.bind(threads, "threadIdx.x")
                    if reduce:  # accumulate in a register, store once: no shared-memory hazard
                        sch.reverse_compute_at(sch.cache_write(b, 0, "local"), threads)
                continue
            last = spatial[-1]
            if not _contiguous_only(sch, b, last):
                continue
            acc = _register_tile(sch, b, spatial, reduce, target) if reduce and register_tiles else None
            if acc is not None:
                write_backs.append(sch.get(acc).name_hint)
                continue
            if reduce:
                sch.reorder(*reduce, last)
            extent = int(sch.get(last).extent)
            if extent > lanes:
                _, last = sch.split(last, [None, lanes])
            if extent > 1:
                sch.vectorize(last)  # before decompose_reduction: vectorize needs the block whole
            if reduce:
                sch.decompose_reduction(b, reduce[0])
        except ScheduleError:
            continue
    for name in write_backs:
        _epilogue_in_write_back(sch, name, lanes)


def _epilogue_in_write_back(sch, name: str, lanes: int) -> None:
    """The elementwise block that alone reads a register tile's result (a bias and activation,
    a residual add) is computed in the tile's write-back, from the registers, not in a pass of
    its own over the line buffer. TVM's reverse_compute_inline refuses a consumer under a
    predicate (its rows clipped at the image's edges by compute_at) or one that reads another
    tensor too (a residual add's skip input): such a consumer is moved to the write-back's
    loop (``reverse_compute_at``), where the few rows just written are still in L1, and the
    write-back is inlined into it (``compute_inline``), so it reads the registers. Left as it is
    when TVM can do neither (a softmax's exp after its max); a pad's select is never moved (the
    columns it pads lie outside the tile's)."""
    from .schedules.common import tile_epilogue

    ScheduleError = (tvm.s_tir.ScheduleError, tvm.error.InternalError)
    try:
        acc = sch.get_sblock(name)
        consumers = sch.get_consumers(acc)
        if len(consumers) != 1:
            return
        consumer = sch.get(consumers[0])
        if not all(int(iv.iter_type) == SPATIAL for iv in consumer.iter_vars):
            return
        with contextlib.suppress(*ScheduleError):
            sch.reverse_compute_inline(consumers[0])
            return
        written = sch.get(acc).writes[0].source
        if "if_then_else" in str(consumer.body) or _shape(consumer.writes[0].source) != _shape(written):
            return
        reduction = sch.get_producers(acc)[0]
        common = [
            lp
            for lp, other in zip(sch.get_loops(acc), sch.get_loops(reduction))
            if sch.get(lp).same_as(sch.get(other))
        ]
        if not common:
            return
        sch.reverse_compute_at(consumers[0], common[-1], preserve_unit_loops=True)
        sch.compute_inline(acc)
        tile_epilogue(sch, _loops_below(sch, consumers[0], common[-1]), lanes)
    except ScheduleError:
        pass


def _register_tile(sch, b, spatial, reduce, target):
    """A reduction whose innermost spatial loop is contiguous (an NCHW row, or the channel
    block of NCHW[x]c): the accumulators of reg_c x reg_w vectors stay in registers
    (``cache_write`` to local, written back per tile) while the reduction loops run outside
    them. reg_w tiles the row (NCHW: vectors of the innermost loop; NCHW[x]c, whose innermost
    loop is one vector, the channel block: the output columns), reg_c the output channels
    (NCHW: the widest other loop; NCHW[x]c: the channel chunks). When no input reads both
    (a conv: each weight vector is shared by the reg_w columns, each input by the reg_c
    channels) the pair whose registers fit (``schedules.common.conv_register_tile``)
    with the fewest cycles per multiply-add (NCHW[x]c: the weights it reloads when they leave
    L1), then the most accumulators, then the fewest vector loads per multiply-add, (reg_c +
    reg_w) / (reg_c x reg_w); when one does (depthwise, pooling) each accumulator needs its own input
    vector: half the registers, all on the row.
    Returns the write-back block; None (nothing changed) when the innermost loop has no vector
    of at least 4 lanes."""
    from .schedules.common import (
        ConvWeights,
        conv_register_tile,
        cpu_facts,
        extent,
        largest_divisor,
        tile_epilogue,
        unroll_pragma,
        vector_factor,
    )
    from .schedules.window import MAX_UNROLLED_WINDOW

    if not all(isinstance(sch.get(lp).extent, tvm.tirx.IntImm) for lp in (*spatial, *reduce)):
        return None  # a loop whose extent depends on the tile (a clipped window)
    facts = cpu_facts(target) if target is not None else None
    lanes, regs = (facts.lanes, facts.vector_registers) if facts else (8, 16)
    width = extent(sch, spatial[-1])
    vec = vector_factor(width, lanes)
    if vec < MIN_VECTOR:
        return None
    block = sch.get(b)
    realize = next(r for r, _ in _realizes(sch.mod["main"].body) if r.block.same_as(block))
    pairs = [(iv.var, v) for iv, v in zip(block.iter_vars, realize.iter_values)]
    out = block.writes[0].source
    store = next(st for st in _stores(block) if st.buffer.same_as(out))
    others = spatial[:-1]

    def indexing(axis):  # the loop of ``others`` that walks this axis of the output
        index = _substitute(store.indices[axis], pairs)
        return next((lp for lp in others if _uses(index, sch.get(lp).loop_var)), None)

    row, channel = spatial[-1], max(others, key=lambda lp: extent(sch, lp)) if others else None
    weights = None
    if width == vec and len(_shape(out)) == 5:  # NCHW[x]c: the row is the columns loop
        row, channel = indexing(3), indexing(1)
        if row is None:
            row, channel = spatial[-1], None
        elif facts is not None:  # each weight vector is one chunk's: its tile waits for them
            n, _, h, _, block_width = _shape(out)
            reduction = math.prod(extent(sch, lp) for lp in reduce)
            weights = ConvWeights(reduction, block_width * 4, n * h, facts.l1d, facts.l2)
    units = extent(sch, row) // (vec if row.same_as(spatial[-1]) else 1)
    row_var = sch.get(row).loop_var
    var = sch.get(channel).loop_var if channel is not None else None

    def reads_both(load):
        indices = [_substitute(i, pairs) for i in load.indices]
        return any(_uses(i, row_var) for i in indices) and any(_uses(i, var) for i in indices)

    inputs = [ld for ld in _loads(block) if not ld.source.same_as(out)]
    shared = var is not None and not any(reads_both(ld) for ld in inputs)
    if shared:  # a conv: the tile whose registers fit, the most accumulators, fewest loads
        reg_c, reg_w = conv_register_tile(extent(sch, channel), units, regs, 1, weights)
    else:  # depthwise, pooling: an input vector per accumulator
        reg_c, reg_w = 1, largest_divisor(units, max((regs - 2) // 2, 1))
    if row.same_as(spatial[-1]):
        wo, wi, wv = sch.split(row, [None, reg_w, vec])
        rest = [lp for lp in others if not lp.same_as(channel)]
    else:
        (wo, wi), wv = sch.split(row, [None, reg_w]), spatial[-1]
        rest = [lp for lp in others if not lp.same_as(channel) and not lp.same_as(row)]
    ci = None
    if reg_c > 1:
        co, ci = sch.split(channel, [None, reg_c])
        rest = [co, *rest]
    elif channel is not None:
        rest = [channel, *rest]
    sch.reorder(*rest, wo, *reduce, *([ci] if ci is not None else []), wi, wv)
    acc = sch.cache_write(b, 0, "local")
    sch.reverse_compute_at(acc, wo, preserve_unit_loops=True)
    for lp in (ci, wi):
        if lp is not None:
            sch.unroll(lp)
    sch.vectorize(wv)  # before decompose_reduction: vectorize needs the block whole
    # as the window rule: a conv's innermost reduction loop unrolled 16 deep, a small window
    # (depthwise, pool) unrolled whole, and the write-back unrolled so that the accumulators
    # stay in registers (a write-back loop LLVM keeps rolled indexes them on the stack)
    if shared:
        unroll_pragma(sch, reduce[-1], 16, False)
    elif math.prod(extent(sch, lp) for lp in reduce) <= MAX_UNROLLED_WINDOW:
        for lp in reduce:
            sch.unroll(lp)
    tile_epilogue(sch, _loops_below(sch, acc, wo), lanes)
    sch.decompose_reduction(b, reduce[0])
    return acc


def _loops_below(sch, block, loop) -> list:
    """The loops of ``block`` nested inside ``loop``."""
    loops = list(sch.get_loops(block))
    at = next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(loop)))
    return loops[at + 1 :]


def inner_loops(sch, b) -> list:
    """The loops of block ``b`` below its tile loop (all of them in an untiled kernel): the
    loops an inner schedule may change."""
    loops = list(sch.get_loops(b))
    tiles = [i for i, lp in enumerate(loops) if TILE_ANNOTATION in (sch.get(lp).annotations or {})]
    return loops[tiles[-1] + 1 :] if tiles else [lp for lp in loops if int(sch.get(lp).kind) == 0]


def _parallel(k: _Kernel, stages: list[Stage], kind: str, threads: int) -> None:
    """The loops above each stage's tile loop: parallel on llvm, blockIdx.x on cuda."""
    sch = k.sch
    ScheduleError = tvm.s_tir.ScheduleError
    for stage in stages:
        anchor = sch.get_sblock(stage.anchors[0])
        outer = list(sch.get_loops(anchor))[:TILE_DEPTH]
        try:
            fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
            if kind == "cuda":
                sch.bind(fused, "blockIdx.x")
            elif threads > 1 and int(sch.get(fused).extent) > 1:
                sch.parallel(fused)
        except ScheduleError:
            continue


# ---- rule 5: circular line buffers ----------------------------------------------------------
@dataclass
class _Window:
    """The rows of one intermediate buffer that one tile holds."""

    buf: object
    axis: int
    rows: int  # E
    advance: int  # S: rows the window moves per tile
    tile_var: object
    writers: dict = field(default_factory=dict)  # block name -> row - first row of the window
    firsts: dict = field(default_factory=dict)  # writer block -> first row of the window
    new: object = None


def _windows(func, stages: list[Stage], tile_vars) -> list[_Window]:
    """The row window of every intermediate buffer written inside a tile loop."""
    ana = tvm.sym.Analyzer()
    params = list(func.params)
    realizes = _realizes(func.body)

    def tile_of(loops):
        return next((v for lp in reversed(loops) for v in tile_vars if lp.loop_var.same_as(v)), None)

    def read_outside(buf, tile_var) -> bool:  # a reader under no tile loop, or another one
        for r, loops in realizes[1:]:  # the root block holds them all
            if any(ld.source.same_as(buf) for ld in _loads(r.block)):
                t = tile_of(loops)
                if t is None or not t.same_as(tile_var):
                    return True
        return False

    windows: list[_Window] = []
    for realize, loops in realizes:
        block = realize.block
        at = [(i, v) for i, lp in enumerate(loops) for v in tile_vars if lp.loop_var.same_as(v)]
        if not at or not block.writes:
            continue
        (depth, tile_var) = at[-1]
        buf = block.writes[0].source
        axis = _row_axis(buf)
        store = next((s for s in _stores(block) if s.buffer.same_as(buf)), None)
        if axis is None or store is None or any(buf.same_as(p) for p in params) or buf.scope() == "local":
            continue
        if read_outside(buf, tile_var):  # the map a global pool reads: whole, not a window
            continue
        pairs = [(iv.var, v) for iv, v in zip(block.iter_vars, realize.iter_values)]
        row = _substitute(store.indices[axis], pairs)
        inner = {
            lp.loop_var: tvm.sym.IntervalSet(lp.min, lp.min + lp.extent - 1) for lp in loops[depth + 1 :]
        }
        span = ana.int_set(row, inner)
        first = span.min_value
        rows = ana.simplify(span.max_value - first + 1)
        zero, one = (tvm.tirx.const(v, tile_var.ty.dtype) for v in (0, 1))
        advance = ana.simplify(_substitute(first, [(tile_var, one)]) - _substitute(first, [(tile_var, zero)]))
        IntImm = tvm.ir.prim.expr.IntImm
        if not isinstance(rows, IntImm) or not isinstance(advance, IntImm) or int(advance) <= 0:
            continue  # not a window that slides with the tile (e.g. W of a channels-last tensor)
        w = next((w for w in windows if w.buf.same_as(buf)), None)
        if w is None:
            w = _Window(buf, axis, int(rows), int(advance), tile_var)
            windows.append(w)
        w.rows = max(w.rows, int(rows))
        w.writers[block.name_hint] = ana.simplify(row - first)
        w.firsts[block.name_hint] = first
    _accumulators(realizes, windows, ana)
    return windows


def _accumulators(realizes, windows: list[_Window], ana) -> None:
    """A register tile's local accumulator (``cache_write``) is no window of its own, but its
    writers compute the rows its copy-out writes into a window: they roll with that window
    (same predicate), or LBDF would recompute every row of the window per tile."""
    for realize, _ in realizes:
        copy = realize.block
        w = next((w for w in windows if copy.name_hint in w.writers), None)
        locals_ = [ld.source for ld in _loads(copy) if ld.source.scope() == "local"]
        if w is None or len(locals_) != 1:
            continue
        for r, _ in realizes[1:]:  # not the root block: its body holds every store
            store = next((s for s in _stores(r.block) if s.buffer.same_as(locals_[0])), None)
            if store is None or r.block.name_hint in w.writers:
                continue
            pairs = [(iv.var, v) for iv, v in zip(r.block.iter_vars, r.iter_values)]
            row = _substitute(store.indices[w.axis], pairs)
            w.writers[r.block.name_hint] = ana.simplify(row - w.firsts[copy.name_hint])


def _circular(func, windows: list[_Window], roll: bool):
    """Rule 5 on the scheduled function."""
    import tvm_ffi

    SBlock, SBlockRealize = _sblock_types()
    tirx = tvm.tirx
    Range = tvm.ir.Range
    ana = tvm.sym.Analyzer()
    for w in windows:
        shape = _shape(w.buf)
        shape[w.axis] = w.rows
        w.new = tirx.decl_buffer(shape, w.buf.ty.dtype, w.buf.name, scope=w.buf.scope())

    def window_of(buf):
        return next((w for w in windows if buf.same_as(w.buf)), None)

    def wrap(indices, w):
        out = list(indices)
        out[w.axis] = tirx.floormod(out[w.axis], tirx.const(w.rows, out[w.axis].ty.dtype))
        return out

    def on_load(load):
        w = window_of(load.source)
        return load if w is None else tirx.BufferLoad(w.new, wrap(load.indices, w))

    def on_store(store):
        w = window_of(store.buffer)
        return store if w is None else tirx.BufferStore(w.new, store.value, wrap(store.indices, w))

    def regions(rs):
        out = []
        for r in rs:
            w = window_of(r.source)
            if w is None:
                out.append(r)
                continue
            region = list(r.region)
            region[w.axis] = Range.from_min_extent(0, w.rows)
            out.append(tirx.BufferRegion(w.new, region))
        return out

    def with_body(b, body=None, allocs=None):
        return SBlock(
            b.iter_vars,
            regions(b.reads),
            regions(b.writes),
            b.name_hint,
            b.body if body is None else body,
            b.init,
            b.alloc_buffers if allocs is None else allocs,
            b.match_buffers,
            b.annotations,
        )

    writers = {name: w for w in windows for name in w.writers}

    def on_realize(r):
        w = writers.get(r.block.name_hint)
        if w is None or not roll or w.rows <= w.advance:
            return r
        delta = w.writers[r.block.name_hint]
        fresh = tirx.Or(
            tirx.EQ(w.tile_var, tirx.const(0, w.tile_var.ty.dtype)),
            tirx.GE(delta, tirx.const(w.rows - w.advance, delta.ty.dtype)),
        )
        return SBlockRealize(r.iter_values, ana.simplify(tirx.And(r.predicate, fresh)), r.block)

    def pins(tile_var):
        out = []
        for w in windows:  # shared memory is the thread block's for its whole run: no pin
            if w.tile_var.same_as(tile_var) and w.buf.scope() in ("", "global"):
                nd = len(w.new.ty.shape)
                store = tirx.BufferStore(w.new, tirx.const(0, w.new.ty.dtype), [tirx.const(0, "int64")] * nd)
                region = [tirx.BufferRegion(w.new, [Range.from_min_extent(0, 1)] * nd)]
                name = f"{next(iter(w.writers))}_pin"
                out.append(SBlockRealize([], True, SBlock([], [], region, name, store)))
        return out

    tile_vars = []
    for w in windows:
        if not any(w.tile_var.same_as(v) for v in tile_vars):
            tile_vars.append(w.tile_var)

    def tile_of(s):
        if isinstance(s, tirx.For):
            return next((v for v in tile_vars if s.loop_var.same_as(v)), None)
        return None

    def pinned(body):
        v = tile_of(body)
        before = pins(v) if v is not None else []
        return tirx.SeqStmt([*before, body]) if before else None

    def on_for(f):
        body = pinned(f.body)
        if body is None:
            return f
        return tirx.For(f.loop_var, f.min, f.extent, f.kind, body, f.thread_binding, f.annotations)

    def on_seq(q):
        items = []
        for x in q.seq:
            v = tile_of(x)
            items += [*(pins(v) if v is not None else []), x]
        return tirx.SeqStmt(items) if len(items) != len(q.seq) else q

    def on_block(b):
        allocs = [window_of(a).new if window_of(a) is not None else a for a in b.alloc_buffers]
        return with_body(b, pinned(b.body), allocs)

    return tvm_ffi.structural_map(
        func,
        [
            (tvm.ir.expr.TensorLoad, on_load),
            (tirx.BufferStore, on_store),
            (SBlock, on_block),
            (SBlockRealize, on_realize),
            (tirx.SeqStmt, on_seq),
            (tirx.For, on_for),
        ],
    )


# ---- the schedule -------------------------------------------------------------------------
def depth_first(func, hint: TileHint, target=None, inner: Callable | None = None, name: str = "kernel"):
    """Rules 1-5 on one PrimFunc; returns (scheduled PrimFunc, KernelSchedule). A kernel the
    rules cannot tile keeps its loops (with the inner schedule) and says why in the report."""
    require_tvm()

    from tvm import s_tir

    kind = target.kind.name if target is not None else "llvm"
    report = KernelSchedule(name, hint.style)
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    k = _Kernel(sch)
    if kind == "llvm" and _single_blocked_op(k, hint, target):
        report.note = SINGLE_OP_NOTE
        return func.with_attr(SCHEDULED_ATTR, json.dumps(report.to_dict())), report
    try:
        _inline(k)
        stages, tile_vars, report.note = _stages(k, hint, kind)
    except s_tir.ScheduleError as e:  # keep the kernel as it was, inner loops scheduled
        sch = s_tir.Schedule(tvm.IRModule({"main": func}))
        k = _Kernel(sch)
        stages, tile_vars = [], []
        report.note = f"not tiled: {str(e).strip().splitlines()[-1][:200]}"
    report.stages = stages
    placed = {n for s in stages for n in (*s.blocks, *s.anchors)}
    report.whole = sorted(
        k.written(b).name for b in k.blocks() if k.name(b) not in placed and not k.is_output(b)
    )
    if kind == "cuda":
        if report.whole or not stages:  # a whole intermediate would need global memory
            report.note = report.note or "cuda: a whole intermediate needs global memory; left to dlight"
            report.stages = []
            return func, report
        for name in placed - set(n for s in stages for n in s.anchors):
            sch.set_scope(sch.get_sblock(name), 0, "shared")  # line buffers live in the block's smem
    _parallel(k, stages, kind, hint.threads)
    blocks = [r.block.name_hint for r, _ in _realizes(sch.mod["main"].body)][1:]
    (inner or default_inner)(sch, [b for b in blocks if b not in k.final], target)
    windows = _windows(sch.mod["main"], stages, tile_vars)
    out = _circular(sch.mod["main"], windows, roll=hint.style == "lbdf")
    report.line_buffers = {next(iter(w.writers)): w.rows for w in windows}
    out = out.with_attr("tirx.is_scheduled", True)
    return out.with_attr(SCHEDULED_ATTR, json.dumps(report.to_dict())), report


def schedule_kernels(
    fused_mod, hints: Mapping[str, TileHint], target, default: TileHint | None = None, inner=None
):
    """Depth-first schedule every kernel of a module after ``fuse``: those named in ``hints``
    with their hint, the others with ``default`` (None: left as they are). Returns (module,
    {kernel: KernelSchedule})."""
    require_tvm()
    reports = {}
    funcs = {}
    tiled = {}  # kernel -> (its function as it came, scheduled)
    for gv, func in fused_mod.functions.items():
        hint = hints.get(gv.name_hint, default) if isinstance(func, tvm.tirx.PrimFunc) else None
        if hint is not None:
            scheduled, reports[gv.name_hint] = depth_first(func, hint, target, inner, gv.name_hint)
            if reports[gv.name_hint].tiled:
                tiled[gv.name_hint] = (func, scheduled, hint)
            func = scheduled
        funcs[gv] = func
    if _compile_error(
        {k: s for k, (_, s, _) in tiled.items()}, target
    ):  # one compile; per kernel if it fails
        for gv in funcs:
            if gv.name_hint in tiled:
                funcs[gv] = _compiling(gv.name_hint, *tiled[gv.name_hint], reports, target, inner)
    return tvm.IRModule(funcs, attrs=fused_mod.attrs, global_infos=fused_mod.global_infos), reports


def _compiling(name: str, original, scheduled, hint: TileHint, reports: dict, target, inner):
    """``scheduled`` if LLVM compiles it; else the same depth-first schedule without register
    tiles (default inner loops only); else ``original`` on its default schedule (rule 4)."""
    error = _compile_error({name: scheduled}, target)
    if not error:
        return scheduled
    if inner is None:
        plain, report = depth_first(original, hint, target, _without_register_tiles, name)
        if report.tiled and not _compile_error({name: plain}, target):
            report.note = f"register tiles off: with them the kernel did not compile ({error})"
            reports[name] = report
            return plain.with_attr(SCHEDULED_ATTR, json.dumps(report.to_dict()))
    return _fallback(original, reports[name], error)


def _without_register_tiles(sch, blocks, target=None) -> None:
    default_inner(sch, blocks, target, register_tiles=False)


def _compile_error(kernels: Mapping, target) -> str | None:
    """Why LLVM cannot compile the scheduled kernels (name -> PrimFunc) as one module (None:
    it can). A schedule that breaks TVM's lowering would otherwise fail the whole model's build
    naming no kernel: all depth-first kernels are compiled once together, and only when that
    fails each alone, to name the ones to fall back. cuda kernels are not checked (nvcc is
    seconds a kernel)."""
    if target is None or target.kind.name != "llvm" or not kernels:
        return None
    mod = tvm.IRModule({k: f.with_attr("global_symbol", k) for k, f in kernels.items()})
    try:
        tvm.compile(mod, target)
    except Exception as e:  # noqa: BLE001  (any lowering error: keep the kernel unscheduled)
        return str(e).strip().splitlines()[0][:200]
    return None


def _fallback(func, report: KernelSchedule, error: str):
    """The kernel as it came, left to the default schedules; its report says why."""
    report.note = f"depth-first schedule did not compile ({error}); default schedule used"
    report.stages, report.line_buffers, report.whole = [], {}, []
    return func.with_attr(SCHEDULED_ATTR, json.dumps(report.to_dict()))
