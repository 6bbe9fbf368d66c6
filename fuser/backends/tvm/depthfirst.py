"""Depth-first schedules for fused kernels: the last op's output is produced tile by tile
(rows), and every producer in the kernel is computed inside that tile loop, so the
intermediates live in small buffers instead of whole tensors.

    func, report = depth_first(prim_func, TileHint("lbdf"), "llvm")
    mod, reports = schedule_kernels(fused_mod, {"fuser_group_3": TileHint("brr", tiles=4)}, target)

Rules, applied to one PrimFunc (a fusion-plan group after FuseTIR, or any other kernel):

1. Inline. A spatial block is inlined into its consumers when none of them is a reduction
   (an elementwise chain becomes one epilogue); a plain copy (a pad that pads nothing, a
   reshape) is inlined into any consumer. A real pad is kept: it is the line buffer of the
   window op after it, and the activation before it is inlined into it. An output block is
   reverse-inlined into its spatial producer when it can be (the residual Add joins the
   epilogue of the last conv).
2. Anchors. Every output block whose tensor has rows (rank >= 4, H > 1) is an anchor. An
   output the kernel also reads itself is split with ``cache_write`` into an internal block and
   a copy, the copy being the anchor. Each anchor's loops become batch, band, tile, rows of
   the tile, the rest; anchors share the batch, band and tile loops (``merge``), each taking
   ceil(H / tiles) rows per tile. LBDF: one row of the last output per tile (the cost model's
   sink = 1 row); BRR: the plan's T* tiles.
3. Producers, last first, are computed at the tile loop (``compute_at``) when all their
   consumers are already under it. Held back: blocks whose tensor has no rows (global pools,
   the squeeze-and-excite vectors, flattened features) and, through them, what they read. A
   held block with rows whose consumers are all settled starts a stage of its own (its own tile
   loop, earlier in the kernel): the tensor a global pool reads is produced whole, tile by tile,
   before the pool (the cost model's barrier rule); see ``Stage``.
4. Buffers. Each intermediate written under a tile loop keeps only its window: E rows (what one
   tile reads of it), indexed ``row mod E`` (a circular line buffer). LBDF rolls: a producer
   computes only the rows the previous tile has not (predicate ``tile == 0 or row - first >=
   E - S``, S rows advanced per tile), so every row is computed once. BRR recomputes each
   tile's halo, as Optimus does. A one-element store before the tile loop keeps the buffer's
   allocation outside it (it lives across tiles). TVM's own ``rolling_buffer`` does the same
   for windows that start exactly at ``tile * S``; padded windows start at ``tile * S - pad``,
   and it marks every block's row axis opaque, which stops other buffers from compacting, so
   the rewrite is done here.
5. Inner loops and targets: ``inner(sch, blocks, target_kind)`` schedules each block's loops
   under its tile (default ``default_inner``: llvm vectorizes the innermost spatial loop and
   parallelises batch x bands; cuda binds batch x bands to blocks and each block's inner loops
   to threads, and line buffers go to shared memory). The tile structure is the same for both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from fuser.ir import FuserError

from .common import require_tvm, tvm

STYLES = ("lbdf", "brr")
SCHEDULED_ATTR = "fuser.depth_first"  # PrimFunc attribute: the tile report, once scheduled
CUDA_THREADS = 128


@dataclass(frozen=True)
class TileHint:
    """How to tile one kernel: ``style`` lbdf (one row per tile, rolling line buffers) or brr
    (``tiles`` tiles, halos recomputed); ``threads`` CPU threads (parallel bands at batch 1)."""

    style: str = "lbdf"
    tiles: int | None = None
    threads: int = 1

    def __post_init__(self):
        if self.style not in STYLES:
            raise FuserError(f"tile style '{self.style}': choose one of {', '.join(STYLES)}")


@dataclass
class Stage:
    """One tile loop of a kernel: its anchors, the blocks computed inside it and the rows each
    tile advances."""

    anchors: list[str]
    tiles: int
    bands: int
    blocks: list[str] = field(default_factory=list)


@dataclass
class KernelSchedule:
    """What ``depth_first`` did to one kernel (plain data for reports)."""

    kernel: str
    style: str
    stages: list[Stage] = field(default_factory=list)
    line_buffers: dict[str, int] = field(default_factory=dict)  # buffer -> rows kept
    whole: list[str] = field(default_factory=list)  # intermediates kept whole (held blocks)
    note: str = ""

    @property
    def tiled(self) -> bool:
        return bool(self.stages)

    def to_dict(self) -> dict:
        return {
            "kernel": self.kernel,
            "style": self.style,
            "tiled": self.tiled,
            "stages": [
                {"anchors": s.anchors, "tiles": s.tiles, "bands": s.bands, "blocks": s.blocks}
                for s in self.stages
            ],
            "line_buffers": self.line_buffers,
            "whole": self.whole,
            "note": self.note,
        }


# ---- IR helpers ---------------------------------------------------------------------------
def _sblock_types():
    from tvm.s_tir import SBlock, SBlockRealize

    return SBlock, SBlockRealize


def _substitute(expr, pairs):
    """``expr`` with each Var of ``pairs`` (var, value) replaced."""
    import tvm_ffi

    def swap(v):
        for var, value in pairs:
            if v.same_as(var):
                return value
        return v

    return tvm_ffi.structural_map(expr, (tvm.ir.expr.Var, swap))


def _realizes(stmt) -> list[tuple]:
    """(SBlockRealize, enclosing For loops) for every block under ``stmt``, in program order."""
    SBlock, SBlockRealize = _sblock_types()
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
    """The row axis of a buffer (shape[-2] for rank >= 4 with more than one row), or None."""
    shape = _shape(buf)
    return len(shape) - 2 if len(shape) >= 4 and shape[-2] > 1 else None


def _store_to(block, buf):
    import tvm_ffi

    stores = []
    tvm_ffi.structural_walk(block.body, (tvm.tirx.BufferStore, stores.append))
    return next((s for s in stores if s.buffer.same_as(buf)), None)


class _Kernel:
    """A Schedule with the queries the rules need."""

    def __init__(self, sch):
        self.sch = sch

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
        return any(int(iv.iter_type) == 2 for iv in self.sch.get(b).iter_vars)

    def written(self, b):
        return self.sch.get(b).writes[0].source

    def has_rows(self, b) -> bool:
        return _row_axis(self.written(b)) is not None

    def is_output(self, b) -> bool:
        return any(self.sch.get(o).same_as(self.sch.get(b)) for o in self.sch.get_output_blocks(self.root))

    def is_pad(self, b) -> bool:
        """A spatial block that selects between its input and a constant (a real pad)."""
        body = self.sch.get(b).body
        return isinstance(body, tvm.tirx.BufferStore) and "if_then_else" in str(body.value)

    def is_copy(self, b) -> bool:
        body = self.sch.get(b).body
        return isinstance(body, tvm.tirx.BufferStore) and isinstance(body.value, tvm.ir.expr.TensorLoad)


# ---- rule 1: inline ----------------------------------------------------------------------
def _inline(k: _Kernel) -> None:
    sch = k.sch
    ScheduleError = tvm.s_tir.ScheduleError
    changed = True
    while changed:
        changed = False
        for b in k.blocks():
            if k.is_output(b) or k.is_reduction(b) or k.is_pad(b):
                continue
            consumers = list(sch.get_consumers(b))
            if not consumers:
                continue
            if k.is_copy(b) or not any(k.is_reduction(c) for c in consumers):
                try:
                    sch.compute_inline(b)
                    changed = True
                    break
                except ScheduleError:
                    pass
    for b in k.blocks():
        if k.is_output(b) and not k.is_reduction(b):
            producers = list(sch.get_producers(b))
            if len(producers) == 1 and not k.is_reduction(producers[0]):
                try:
                    sch.reverse_compute_inline(b)
                except ScheduleError:
                    pass


# ---- rules 2-3: anchors, stages, compute_at ------------------------------------------------
def _row_loop(k: _Kernel, b):
    """The loop that runs over the rows of ``b``'s output (``b`` still at its own loops)."""
    sch = k.sch
    buf = k.written(b)
    axis = _row_axis(buf)
    store = _store_to(sch.get(b), buf)
    if axis is None or store is None:
        return None
    realize = next(r for r, _ in _realizes(sch.mod["main"].body) if r.block.same_as(sch.get(b)))
    index = _substitute(store.indices[axis], list(zip([iv.var for iv in realize.block.iter_vars], realize.iter_values)))
    loops = [lp for lp in sch.get_loops(b) if _uses(index, sch.get(lp).loop_var)]
    return loops[0] if len(loops) == 1 else None


def _uses(expr, var) -> bool:
    import tvm_ffi

    found = []
    tvm_ffi.structural_walk(expr, (tvm.ir.expr.Var, lambda v: found.append(v) if v.same_as(var) else None))
    return bool(found)


def _tile_anchors(k: _Kernel, anchors: list, tiles: int, threads: int, target_kind: str):
    """Split and merge the anchors' loops into (batch, band, tile); returns (tile loop, bands)."""
    sch = k.sch
    heights = [_shape(k.written(a))[_row_axis(k.written(a))] for a in anchors]
    tiles = max(1, min(tiles, max(heights)))
    nested = []
    for a, h in zip(anchors, heights):
        row = _row_loop(k, a)
        loops = list(sch.get_loops(a))
        same = k.same
        first = loops[0] if len(loops) > 1 and not same(loops[0], row) else None
        rest = [lp for lp in loops if not same(lp, row) and (first is None or not same(lp, first))]
        sch.reorder(*([first] if first is not None else []), row, *rest)
        nested.append((first, row, math.ceil(h / tiles)))
    batch = nested[0][0]
    batch_extent = int(sch.get(batch).extent) if batch is not None else 1
    if target_kind == "cuda":
        bands = max(1, tiles // 4)
    else:
        bands = threads if batch_extent < threads and tiles >= 2 * threads else 1
    per_band = math.ceil(tiles / bands)
    split = []
    for first, row, rows in nested:
        band, tile, _ = sch.split(row, [bands, per_band, rows])
        split.append((first, band, tile))
    if len(split) > 1:
        for level in range(3):  # batch, band, tile: one loop nest for all anchors
            loops = [s[level] for s in split]
            if all(lp is not None for lp in loops):
                sch.merge(*loops)
                split = [_outer_loops(k, a, s) for a, s in zip(anchors, split)]
    first, band, tile = split[0]
    return tile, band, first, bands


def _outer_loops(k: _Kernel, anchor, old):
    """The (batch, band, tile) loops of ``anchor`` after a merge (merged loops get new RVs)."""
    loops = list(k.sch.get_loops(anchor))
    if old[0] is None:
        return (None, loops[0], loops[1])
    return (loops[0], loops[1], loops[2])


def _place_producers(k: _Kernel, tile_loop, placed: set, held: set) -> list[str]:
    """compute_at every unplaced block, last first, whose consumers are all under ``tile_loop``."""
    sch = k.sch
    ScheduleError = tvm.s_tir.ScheduleError
    inside = set(placed)
    moved = []
    for b in reversed(k.blocks()):
        name = k.name(b)
        if name in placed or name in held:
            continue
        consumers = [k.name(c) for c in sch.get_consumers(b)]
        if not k.has_rows(b) or not consumers or any(c not in inside for c in consumers):
            held.add(name)
            continue
        try:
            sch.compute_at(b, tile_loop)
        except ScheduleError:
            held.add(name)
            continue
        inside.add(name)
        moved.append(name)
    return moved


def _stages(k: _Kernel, hint: TileHint, target_kind: str) -> tuple[list[Stage], list]:
    """Rules 2 and 3: the tile loops of the kernel; returns (stages, tile loop vars)."""
    sch = k.sch
    for b in k.blocks():
        if k.is_output(b) and k.has_rows(b) and sch.get_consumers(b):
            consumers = list(sch.get_consumers(b))
            sch.cache_write(b, 0, "global", consumer_blocks=consumers)
    anchors = [b for b in k.blocks() if k.is_output(b) and k.has_rows(b) and _row_loop(k, b) is not None]
    stages, loop_vars = [], []
    placed: set[str] = set()
    anchor_names = {k.name(a) for a in anchors}
    held: set[str] = {k.name(b) for b in k.blocks() if k.is_output(b) and k.name(b) not in anchor_names}
    while anchors:
        names = [k.name(a) for a in anchors]
        height = max(_shape(k.written(a))[_row_axis(k.written(a))] for a in anchors)
        tiles = height if hint.style == "lbdf" or not hint.tiles else min(hint.tiles, height)
        tile, band, batch, bands = _tile_anchors(k, anchors, tiles, hint.threads, target_kind)
        placed.update(names)
        held.difference_update(names)
        stage = Stage(names, tiles, bands, [])
        stage.blocks = _place_producers(k, tile, placed, held)
        placed.update(stage.blocks)
        stages.append(stage)
        loop_vars.append((sch.get(tile).loop_var, batch, band))
        anchors = []
        for b in reversed(k.blocks()):
            name = k.name(b)
            if name not in held or not k.has_rows(b) or _row_loop(k, b) is None:
                continue
            consumers = [k.name(c) for c in sch.get_consumers(b)]
            if all(c in placed or not k.has_rows(c_b) for c, c_b in zip(consumers, sch.get_consumers(b))):
                anchors = [b]
                break
    return stages, loop_vars


# ---- rule 4: circular line buffers ----------------------------------------------------------
@dataclass
class _Window:
    buf: object
    axis: int
    rows: int  # E: rows one tile holds
    advance: int  # S: rows the window moves per tile
    writer: str
    delta: object  # row - first row of the window, in the writer's loop vars
    tile_var: object
    new: object = None


def _windows(func, stages: list[Stage], loop_vars) -> list[_Window]:
    """The row window of every buffer written by a block computed under a tile loop."""
    ana = tvm.sym.Analyzer()
    by_block = {name: i for i, s in enumerate(stages) for name in s.blocks}
    out = []
    for realize, loops in _realizes(func.body):
        block = realize.block
        if block.name_hint not in by_block:
            continue
        tile_var = loop_vars[by_block[block.name_hint]][0]
        buf = block.writes[0].source
        axis = _row_axis(buf)
        store = _store_to(block, buf)
        if axis is None or store is None:
            continue
        row = _substitute(store.indices[axis], list(zip([iv.var for iv in block.iter_vars], realize.iter_values)))
        at = [i for i, lp in enumerate(loops) if lp.loop_var.same_as(tile_var)]
        if not at:
            continue
        inner = {lp.loop_var: tvm.sym.IntervalSet(lp.min, lp.min + lp.extent - 1) for lp in loops[at[0] + 1 :]}
        span = ana.int_set(row, inner)
        first = span.min_value
        rows = ana.simplify(span.max_value - first + 1)
        zero = tvm.tirx.const(0, tile_var.ty.dtype)
        one = tvm.tirx.const(1, tile_var.ty.dtype)
        advance = ana.simplify(_substitute(first, [(tile_var, one)]) - _substitute(first, [(tile_var, zero)]))
        if not isinstance(rows, tvm.ir.prim.expr.IntImm) or not isinstance(advance, tvm.ir.prim.expr.IntImm):
            continue
        out.append(_Window(buf, axis, int(rows), int(advance), block.name_hint, ana.simplify(row - first), tile_var))
    return out


def _circular(func, windows: list[_Window], roll: bool):
    """Rule 4 on the scheduled function: each window's buffer shrinks to its rows, indexed
    row mod rows; rolling producers skip the rows an earlier tile computed; pins go before
    each tile loop."""
    import tvm_ffi

    SBlock, SBlockRealize = _sblock_types()
    tirx = tvm.tirx
    Range = tvm.ir.Range
    ana = tvm.sym.Analyzer()
    for w in windows:
        shape = _shape(w.buf)
        shape[w.axis] = w.rows
        w.new = tirx.decl_buffer(shape, w.buf.ty.dtype, w.buf.name)

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

    def on_block(b):
        allocs = [window_of(a).new if window_of(a) is not None else a for a in b.alloc_buffers]
        return SBlock(
            b.iter_vars,
            regions(b.reads),
            regions(b.writes),
            b.name_hint,
            b.body,
            b.init,
            allocs,
            b.match_buffers,
            b.annotations,
        )

    writers = {w.writer: w for w in windows}

    def on_realize(r):
        w = writers.get(r.block.name_hint)
        if w is None or not roll or w.rows <= w.advance:
            return r
        dtype = w.delta.ty.dtype
        fresh = tirx.Or(
            tirx.EQ(w.tile_var, tirx.const(0, w.tile_var.ty.dtype)),
            tirx.GE(w.delta, tirx.const(w.rows - w.advance, dtype)),
        )
        return SBlockRealize(r.iter_values, ana.simplify(tirx.And(r.predicate, fresh)), r.block)

    def pins(tile_var):
        out = []
        for w in windows:
            if not w.tile_var.same_as(tile_var):
                continue
            nd = len(w.new.ty.shape)
            index = [tirx.const(0, "int64")] * nd
            store = tirx.BufferStore(w.new, tirx.const(0, w.new.ty.dtype), index)
            region = [tirx.BufferRegion(w.new, [Range.from_min_extent(0, 1)] * nd)]
            out.append(SBlockRealize([], True, SBlock([], [], region, f"{w.writer}_pin", store)))
        return out

    tile_vars = []
    for w in windows:
        if not any(w.tile_var.same_as(v) for v in tile_vars):
            tile_vars.append(w.tile_var)

    def tile_loop_var(s):
        if isinstance(s, tirx.For):
            return next((v for v in tile_vars if s.loop_var.same_as(v)), None)
        return None

    def on_for(f):
        v = tile_loop_var(f.body)
        if v is None:
            return f
        return tirx.For(
            f.loop_var, f.min, f.extent, f.kind, tirx.SeqStmt([*pins(v), f.body]), f.thread_binding, f.annotations
        )

    def on_seq(q):
        items = []
        for x in q.seq:
            v = tile_loop_var(x)
            if v is not None:
                items += pins(v)
            items.append(x)
        return tirx.SeqStmt(items) if len(items) != len(q.seq) else q

    def on_root(b):
        v = tile_loop_var(b.body)
        if v is None or b.name_hint != "root":
            return on_block(b)
        b = on_block(b)
        return SBlock(
            b.iter_vars, b.reads, b.writes, b.name_hint, tirx.SeqStmt([*pins(v), b.body]), b.init,
            b.alloc_buffers, b.match_buffers, b.annotations,
        )

    return tvm_ffi.structural_map(
        func,
        [
            (tvm.ir.expr.TensorLoad, on_load),
            (tirx.BufferStore, on_store),
            (SBlock, on_root),
            (SBlockRealize, on_realize),
            (tirx.SeqStmt, on_seq),
            (tirx.For, on_for),
        ],
    )


# ---- rule 5: inner loops --------------------------------------------------------------------
def _vector_lanes(target) -> int:
    if target is None or target.kind.name != "llvm":
        return 8
    attrs = " ".join(str(a) for a in target.attrs.get("mattr", [])) + " " + str(target.attrs.get("mcpu", ""))
    return 16 if "avx512" in attrs or "znver4" in attrs or "znver5" in attrs or "sapphire" in attrs else 8


def default_inner(sch, blocks: Sequence[str], target=None) -> None:
    """The inner loops of each block under a tile (the hook the CPU default schedules replace):
    llvm: the innermost spatial loop split by the vector width and vectorized, reductions'
    init hoisted (decompose_reduction); cuda: the block's inner spatial loops fused and bound
    to threadIdx.x."""
    ScheduleError = tvm.s_tir.ScheduleError
    kind = target.kind.name if target is not None else "llvm"
    lanes = _vector_lanes(target)
    for name in blocks:
        try:
            b = sch.get_sblock(name)
        except (ScheduleError, ValueError):
            continue
        block = sch.get(b)
        loops = list(sch.get_loops(b))
        kinds = _loop_kinds(sch, b, loops)
        spatial = [lp for lp, kd in zip(loops, kinds) if kd == "S"]
        reduce = [lp for lp, kd in zip(loops, kinds) if kd == "R"]
        if not spatial:
            continue
        try:
            if kind == "cuda":
                _bind_threads(sch, b, loops, kinds)
                continue
            if reduce:
                # reduction loops outside the innermost spatial loop: a vector of outputs per step
                sch.reorder(*reduce, spatial[-1])
                sch.decompose_reduction(b, reduce[0])
                loops = list(sch.get_loops(b))
                spatial = [lp for lp in loops if sch.get(lp).loop_var.same_as(sch.get(spatial[-1]).loop_var)]
            inner = spatial[-1]
            extent = int(sch.get(inner).extent)
            if extent > lanes:
                _, inner = sch.split(inner, [None, lanes])
            if extent > 1:
                sch.vectorize(inner)
        except ScheduleError:
            continue
        del block


def _loop_kinds(sch, b, loops) -> list[str]:
    """Per loop: S (bound only to spatial iters), R (to a reduction iter) or O (other)."""
    SBlock, SBlockRealize = _sblock_types()
    block = sch.get(b)
    realize = next(r for r, _ in _realizes(sch.mod["main"].body) if r.block.same_as(block))
    kinds = []
    for lp in loops:
        var = sch.get(lp).loop_var
        used = [int(iv.iter_type) for iv, v in zip(block.iter_vars, realize.iter_values) if _uses(v, var)]
        kinds.append("R" if 2 in used else "S" if used and all(u == 0 for u in used) else "O")
    return kinds


def _bind_threads(sch, b, loops, kinds) -> None:
    spatial = [lp for lp, kd in zip(loops, kinds) if kd == "S"]
    if not spatial:
        return
    fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    _, inner = sch.split(fused, [None, CUDA_THREADS])
    sch.bind(inner, "threadIdx.x")


# ---- the schedule -------------------------------------------------------------------------
def depth_first(func, hint: TileHint, target=None, inner: Callable | None = None, name: str = "kernel"):
    """Rules 1-5 on one PrimFunc; returns (scheduled PrimFunc, KernelSchedule)."""
    require_tvm()
    from tvm import s_tir

    kind = target.kind.name if target is not None else "llvm"
    report = KernelSchedule(name, hint.style)
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    k = _Kernel(sch)
    _inline(k)
    stages, loop_vars = _stages(k, hint, kind)
    report.stages = stages
    if not stages:
        report.note = "no output with rows: not tiled"
    scheduled = sch.mod["main"]
    windows = _windows(scheduled, stages, loop_vars)
    scheduled = _circular(scheduled, windows, roll=hint.style == "lbdf")
    report.line_buffers = {w.buf.name: w.rows for w in windows}
    placed = {n for s in stages for n in s.blocks} | {n for s in stages for n in s.anchors}
    sch = s_tir.Schedule(tvm.IRModule({"main": scheduled}))
    k = _Kernel(sch)
    report.whole = sorted(
        k.written(b).name for b in k.blocks() if k.name(b) not in placed and not k.is_output(b)
    )
    _parallel(sch, stages, kind, hint.threads)
    (inner or default_inner)(sch, [k.name(b) for b in _all_blocks(sch)], target)
    out = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    return out.with_attr(SCHEDULED_ATTR, report.to_dict()["stages"] and str(report.to_dict())), report


def _all_blocks(sch) -> list:
    return [sch.get_sblock(r.block.name_hint) for r, _ in _realizes(sch.mod["main"].body) if r.block.name_hint != "root"]


def _parallel(sch, stages: list[Stage], kind: str, threads: int) -> None:
    """Batch x bands of each stage: parallel on llvm, blockIdx.x on cuda."""
    ScheduleError = tvm.s_tir.ScheduleError
    for stage in stages:
        loops = list(sch.get_loops(sch.get_sblock(stage.anchors[0])))
        outer = loops[:2] if len(loops) > 3 else loops[:1]
        try:
            fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
            if kind == "cuda":
                sch.bind(fused, "blockIdx.x")
            elif threads > 1 and int(sch.get(fused).extent) > 1:
                sch.parallel(fused)
        except ScheduleError:
            continue


def schedule_kernels(fused_mod, hints: Mapping[str, TileHint], target, default: TileHint | None = None, inner=None):
    """Depth-first schedule every kernel of a module after ``fuse``: those named in ``hints``
    with their hint, the others with ``default`` (None: left as they are). Returns (module,
    {kernel: KernelSchedule})."""
    require_tvm()
    reports = {}
    funcs = {}
    for gv, func in fused_mod.functions.items():
        hint = hints.get(gv.name_hint, default) if isinstance(func, tvm.tirx.PrimFunc) else None
        if hint is not None:
            func, reports[gv.name_hint] = depth_first(func, hint, target, inner, gv.name_hint)
        funcs[gv] = func
    return tvm.IRModule(funcs, attrs=fused_mod.attrs, global_infos=fused_mod.global_infos), reports
