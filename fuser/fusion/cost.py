"""DRAM and on-chip buffer cost models of a fusion group: LBDF and BRR.

A fusion group G is a set of ops run as one unit: only its external inputs, its
external outputs and its weights move between DRAM and the on-chip buffer of
capacity β. Batch 1; every element takes ``element_bytes`` bytes (1: an int8
accelerator). Both models define

  F_β(G)  on-chip bytes the group needs,  F_D(G)  DRAM bytes the group moves,
  G is valid  iff  |G| = 1  or  F_β(G) < β   (strict).

A single op is always valid: the no-fusion baseline runs every op alone,
layer by layer, reading its inputs and weights once and writing its outputs once:

  F_D({op}) = (W(op) + In(op) + Out(op))·e      (no-fusion DRAM = Σ over all ops)

The layer-fusion baseline is what a compiler moves without a plan (TVM's FuseOps, ONNX
Runtime): each op with the elementwise ops that only extend it in one kernel
(``FusionGraph.layer_kernels``), Σ (W + In + Out)·e over those kernels. The paper's no-fusion
baseline counts every activation's round trip, which no CPU compiler makes; a plan's gain
over layer fusion is its gain over TVM's build (within 12% of what cachegrind measures for it
on the four #14 models, ``benchmarks/fusion_measured.py``). Over a graph of layers
(``build_fusion_graph(layers=True)``) each op is such a kernel: a lone layer is valid as a
lone op is, the tensors inside it take no rows, and no plan moves more than layer fusion.

An op whose F_β({op}) ≥ β alone (its weights, or the rows a global op must
hold, exceed the buffer) can never be fused: F_β only grows when ops are added
(more weights, more tensors, more rows), so every group holding it is invalid.
Such ops are reported as unfusable and always stay alone, as is an opaque op (a standard op
fuser knows by its ONNX schema only, ``fuser.ir.ops.Category.OPAQUE``).

Terms (elements; times e for bytes):
  W(G)     weights of the group's ops (a weight shared by several ops counts once)
  In(G)    tensors G reads that it does not produce (graph inputs, other groups' outputs)
  Out(G)   tensors G produces that are graph outputs or read outside G
  rows(t)  rows of tensor t held on chip (a line buffer), found backward through G:
           a tensor leaving G holds ``sink`` rows (it is written out row by row);
           a tensor read in G holds the most rows any of its consumers c in G needs,
           h_prev = min((h_next − 1)·stride + k, H) for a window op (see RowRule in
           ``fuser.fusion.opgraph`` for every op kind), where h_next is the rows c
           itself must produce.
  full(t)  barrier rule: a spatial reduction (GlobalAveragePool, ReduceMean over
           H, W) streams its input but emits its output only after the last row. A
           tensor t read by an op c of G that (through G) waits for a reduction over
           t — the squeeze-and-excite ``x · σ(fc(mean(x)))`` — must be held whole:
           rows(t) = H_t. Ops that need their whole input (Flatten, Gemm on
           flattened features, Softmax over rows) hold rows(t) = H_t by their rule.
  Feat(G, sink) = Σ_t rows(t)·row_elems(t)  over the tensors G reads or produces.

**LBDF** (line-buffer depth-first): all weights stay on chip for the whole group,
features are line buffers producing one output row at a time (sink = 1):

  F_β(G) = (W(G) + Feat(G, 1))·e
  F_D(G) = (W(G) + In(G) + Out(G))·e

**BRR** (buffer requirement reduction, after Optimus, Cai et al. 2021): the group
runs in T row tiles; per tile its ops run one after the other and stream their
weights in per op, so only the largest op's weights W_max(G) are on chip, but
every tile fetches all weights again. A tile produces ⌈H/T⌉ rows of each output:

  F_β(G, T) = (W_max(G) + Feat(G, ⌈H/T⌉))·e
  T*        = the fewest tiles with F_β(G, T) < β, 1 ≤ T ≤ T_max = max H of G's outputs
  F_D(G)    = (W(G)·T* + In(G) + Out(G))·e
  invalid   when even the smallest feature footprint, F_β(G, T_max), is ≥ β.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from fuser.ir import FuserError
from fuser.ir.ops import is_opaque

from .opgraph import TABLE_BITS, FusionGraph, bits, mask_of

STYLES = ("lbdf", "brr")
LOWER_BOUND_FROM = 24  # ops; below this the exact F_β is as cheap as the numpy bound
SMALL_MASK_BITS = TABLE_BITS  # masks this wide list their ops by table (opgraph.bits): the bound is cheap


@dataclass(frozen=True)
class GroupCost:
    """F_β and F_D of one group, with the terms they are made of (bytes)."""

    buffer_bytes: int
    dram_bytes: int
    valid: bool
    fits: bool  # buffer_bytes < β (a single op is valid even when it does not fit)
    weight_bytes: int
    feature_bytes: int
    input_bytes: int
    output_bytes: int
    tiles: int = 1


@dataclass
class Breakdown:
    """Who needs what in a group: the basis of the exact explanation.

    ``op_weight``: bytes of weights each op keeps on chip; ``tensor_bytes``: bytes
    held for each tensor; ``demander``: the op whose need set that tensor's size
    (its consumer needing the most rows, the op waiting on a barrier, or for a
    tensor leaving the group its producer).
    """

    op_weight: dict[int, int]
    tensor_bytes: dict[int, int]
    demander: dict[int, int]


class CostModel:
    """Shared machinery of the cost models; subclasses define F_β and F_D."""

    name = "?"
    incremental_intervals = False  # upstream_intervals costs O(1) a step (else O(interval))

    def __init__(self, fg: FusionGraph, buffer_bytes: int, element_bytes: int = 1):
        if buffer_bytes <= 0:
            raise FuserError(f"buffer size must be positive, got {buffer_bytes}")
        if element_bytes <= 0:
            raise FuserError(f"element size must be positive, got {element_bytes}")
        self.fg = fg
        self.buffer_bytes = int(buffer_bytes)
        self.element_bytes = int(element_bytes)
        self._memo: dict[int, GroupCost] = {}
        # an op fuser knows by its ONNX schema only (fuser.ir.ops) runs alone: nothing is known
        # of how it consumes rows
        self.opaque_mask = sum(1 << i for i, op in enumerate(fg.ops) if is_opaque(op))
        self._lower_dram: dict[int, int] = {}
        self._weights = np.array(fg.weight_numel, dtype=np.int64)
        # each op's outputs hold at least one row on chip
        self._output_rows = np.array(
            [sum(fg.tensor_row_numel[t] for t in outs) for outs in fg.op_outputs], dtype=np.int64
        )
        # per op: (tensor, rows it needs of that input per output row count r, its producer)
        # for each data input; a table lookup where RowRule.rows would run per group
        self._needs = [
            [
                (
                    t,
                    _need_table(
                        rule, fg.tensor_height[t], max([1, *map(fg.tensor_height.__getitem__, outs)])
                    ),
                    fg.tensor_producer[t],
                )
                for t, rule in ins
            ]
            for ins, outs in zip(fg.op_inputs, fg.op_outputs)
        ]
        self._output_rows_list = self._output_rows.tolist()
        self._refuted: set[int] = set()  # groups the lower bound proved invalid
        self._single_dram = [self._dram_elements(1 << i) for i in range(fg.n)]
        singles = [self.cost(1 << i) for i in range(fg.n)]
        self.single_dram_bytes = [c.dram_bytes for c in singles]  # per op alone, without a lookup
        self.single_buffer_bytes = [c.buffer_bytes for c in singles]
        self.fusable_mask = mask_of(
            i for i, c in enumerate(singles) if c.fits and not self.opaque_mask >> i & 1
        )

    # ---- public -------------------------------------------------------------
    def cost(self, mask: int) -> GroupCost:
        """F_β, F_D and validity of the group ``mask`` (memoised)."""
        c = self._memo.get(mask)
        if c is None:
            c = self._remember(mask, self._cost(mask))
        return c

    def _remember(self, mask: int, c: GroupCost) -> GroupCost:
        if c.valid and mask & self.opaque_mask and mask & (mask - 1):
            c = replace(c, valid=False)  # an opaque op shares no group
        self._memo[mask] = c
        return c

    def valid(self, mask: int) -> bool:
        c = self._memo.get(mask)
        if c is not None:
            return c.valid
        if mask in self._refuted:
            return False
        if (
            mask & (mask - 1)  # one op is always valid
            and (mask.bit_length() <= SMALL_MASK_BITS or mask.bit_count() > LOWER_BOUND_FROM)
            and self.lower_bound(mask) >= self.buffer_bytes
        ):
            self._refuted.add(mask)
            return False  # surely over the buffer: skip the exact count
        return self.cost(mask).valid

    def lower_bound(self, mask: int) -> int:
        """A cheap lower bound of F_β(mask): on-chip weights plus one row of every output."""
        if mask.bit_length() <= SMALL_MASK_BITS:  # plain sums over a table-made op list
            ops = bits(mask)
            rows = sum(map(self._output_rows_list.__getitem__, ops))
            return (self._weight_bound(ops) + rows) * self.element_bytes
        member = self.fg.member_vector(mask).astype(bool)
        return (self._weight_term(member) + int(self._output_rows[member].sum())) * self.element_bytes

    def _weight_term(self, member: np.ndarray) -> int:
        raise NotImplementedError

    def _weight_bound(self, ops: list[int]) -> int:
        """``_weight_term`` of the ops ``ops``."""
        raise NotImplementedError

    def dram(self, groups) -> int:
        return sum(self.cost(g).dram_bytes for g in groups)

    def batch_dram(self, c: GroupCost) -> int:
        """F_D of a group for the whole batch, when sizes are one image's (``fg.images``):
        every tile, weights and all, once per image."""
        return self.fg.images * c.dram_bytes

    def no_fusion_dram(self) -> int:
        """Σ over ops of (W + In + Out)·e: every op alone (the graph's ops, when this one's are
        layers)."""
        if self.fg.op_level is not None:
            return type(self)(self.fg.op_level, self.buffer_bytes, self.element_bytes).no_fusion_dram()
        return sum(self._single_dram) * self.element_bytes

    def layer_fusion_dram(self) -> int:
        """Σ over per-layer kernels (``FusionGraph.layer_kernels``: each op with the elementwise
        ops that only extend it) of (W + In + Out)·e: what a compiler's own fusion moves, the
        baseline a plan must beat on a CPU. Such a kernel runs layer by layer, so no buffer
        bounds it."""
        if self.fg.op_level is not None:  # each op is a layer already
            return sum(self._single_dram) * self.element_bytes
        return sum(self._dram_elements(m) for m in self.fg.layer_kernels()) * self.element_bytes

    def singles_dram(self, mask: int) -> int:
        """DRAM bytes of running the ops of ``mask`` each alone."""
        return sum(self._single_dram[i] for i in bits(mask)) * self.element_bytes

    def lower_dram(self, mask: int) -> int:
        """A lower bound of the DRAM bytes of any partition of ``mask``: (W + In + Out)·e,
        every weight, input and output moved once."""
        bound = self._lower_dram.get(mask)
        if bound is None:
            c = self._memo.get(mask)
            bound = self._lower_dram[mask] = (
                self._dram_elements(mask) * self.element_bytes
                if c is None or self.name == "brr"
                else c.dram_bytes
            )
        return bound

    def piece_dram_bound(self, mask: int) -> int:
        """A lower bound of the DRAM bytes of ``mask`` however it is split: F_D(mask) when it
        is valid, else ``lower_dram``."""
        return self.cost(mask).dram_bytes if self.valid(mask) else self.lower_dram(mask)

    def unfusable(self) -> list[tuple[int, str]]:
        """(op, reason) for each op that cannot share a group with any other."""
        out = []
        e = self.element_bytes
        for i in range(self.fg.n):
            if self.fusable_mask >> i & 1:
                continue
            c = self.cost(1 << i)
            w = self.fg.weight_numel[i] * e
            if self.opaque_mask >> i & 1:
                why = f"{self.fg.ops[i]} is opaque to fuser (known by its ONNX schema only)"
            elif w >= self.buffer_bytes:
                why = f"weights {w} B alone fill the {self.buffer_bytes} B buffer"
            else:
                why = f"needs {c.buffer_bytes} B on chip alone (feature rows), buffer {self.buffer_bytes} B"
            out.append((i, why))
        return out

    def breakdown(self, mask: int) -> Breakdown:
        raise NotImplementedError

    def upstream_intervals(self, ops: list[int], j: int):
        """Yield (i, mask, dram_bytes) for the chain intervals ``ops[i:j]``, i = j−1, j−2, ...,
        while they are valid (``ops``: a chain in topological order; F_β only grows upstream,
        so the first invalid interval ends the scan)."""
        mask = 0
        for i in range(j - 1, -1, -1):
            mask |= 1 << ops[i]
            if not self.valid(mask):
                return
            yield i, mask, self.cost(mask).dram_bytes

    # ---- shared terms -----------------------------------------------------------
    def _dram_elements(self, mask: int) -> int:
        """W + In + Out of ``mask``: what it moves when weights are read once."""
        weights, _, n_in, n_out = self._io(mask)
        return weights + n_in + n_out

    def _weights_of(self, ops: list[int]) -> int:
        """W: elements of the weights of ``ops``, a weight shared by several counted once."""
        fg = self.fg
        if fg.shared_weights:
            return sum(fg.weight_numel_by_id[w] for w in {w for i in ops for w in fg.weight_ids[i]})
        return sum(map(fg.weight_numel.__getitem__, ops))

    def _io(self, mask: int, ops: list[int] | None = None) -> tuple[int, int, int, int]:
        """(W, W_max, In, Out) of ``mask`` (whose ops are ``ops``) in elements."""
        fg = self.fg
        if ops is None:
            ops = bits(mask)
        weights = self._weights_of(ops)
        w_max = max(fg.weight_numel[i] for i in ops)
        seen_in: set[int] = set()
        n_in = n_out = 0
        # locals: this loop runs for every new group the search meets
        op_inputs, op_outputs, producer, numel = (
            fg.op_inputs,
            fg.op_outputs,
            fg.tensor_producer,
            fg.tensor_numel,
        )
        is_output, consumers, outside = fg.tensor_is_output, fg.tensor_consumer_mask, ~mask
        for i in ops:
            for t, _ in op_inputs[i]:
                p = producer[t]
                if (p < 0 or not mask >> p & 1) and t not in seen_in:
                    seen_in.add(t)
                    n_in += numel[t]
            for t in op_outputs[i]:
                if is_output[t] or consumers[t] & outside:
                    n_out += numel[t]
        return weights, w_max, n_in, n_out

    def _rows(self, ops: list[int], mask: int, sink_rows: Callable[[int], int]):
        """rows(t) for every tensor G reads or writes, the op demanding each, and the
        tensors the barrier rule holds whole (a tensor bitmask)."""
        fg = self.fg
        rows: dict[int, int] = {}
        demander: dict[int, int] = {}
        # locals: this loop runs for every new group the search meets
        needs, op_outputs = self._needs, fg.op_outputs
        is_output, consumers, outside = fg.tensor_is_output, fg.tensor_consumer_mask, ~mask
        for op in reversed(ops):
            r_out = 0
            for t in op_outputs[op]:
                r = rows.get(t, 0)
                if is_output[t] or consumers[t] & outside or r == 0:
                    s = sink_rows(t)
                    if s > r:
                        r, demander[t] = s, op
                rows[t] = r
                if r > r_out:
                    r_out = r
            for t, table, _ in needs[op]:
                need = table[r_out]
                if need > rows.get(t, 0):
                    rows[t], demander[t] = need, op
        return rows, demander, self._whole(ops, mask, demander)

    def _whole(self, ops: list[int], mask: int, demander: dict[int, int] | None = None) -> int:
        """The tensors the barrier rule holds whole (a tensor bitmask); ``demander`` gains the
        op waiting on each."""
        fg = self.fg
        whole = 0
        if mask & fg.barrier_mask:
            complete_out: dict[int, int] = {}  # tensors complete before the op emits a row
            upstream: dict[int, int] = {}  # tensors read by the op or its ancestors in G
            for op in ops:
                ready, up = 0, fg.op_input_mask[op]
                for p in fg.preds[op]:
                    if mask >> p & 1:
                        ready |= complete_out[p]
                        up |= upstream[p]
                waited = ready & fg.op_input_mask[op]
                if waited:
                    whole |= waited
                    if demander is not None:
                        for t in bits(waited):
                            demander[t] = op
                upstream[op] = up
                complete_out[op] = ready | up if fg.barrier_mask >> op & 1 else ready
        return whole

    def _feature(self, rows: dict[int, int], whole: int) -> int:
        fg = self.fg
        row_numel = fg.tensor_row_numel
        feature = sum(r * row_numel[t] for t, r in rows.items())
        for t in bits(whole) if whole else ():  # held whole, not rows(t)
            feature += (fg.tensor_height[t] - rows[t]) * row_numel[t]
        return feature

    def _tensor_bytes(self, rows, whole) -> dict[int, int]:
        fg, e = self.fg, self.element_bytes
        return {
            t: (fg.tensor_height[t] if whole >> t & 1 else r) * fg.tensor_row_numel[t] * e
            for t, r in rows.items()
        }

    def _cost(self, mask: int) -> GroupCost:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.name.upper()}, buffer {self.buffer_bytes:,} B, {self.element_bytes} B/element"


NEED_TABLE_ROWS = 1 << 16  # outputs taller than this compute row needs on demand


class _NeedsOnDemand:
    """``rule.rows(r, height)`` looked up like a ``_need_table`` tuple but computed (and kept)
    per r asked: a tuple for a tensor of 2³¹ rows would take minutes and gigabytes."""

    __slots__ = ("rule", "height", "known")

    def __init__(self, rule, height: int):
        self.rule, self.height, self.known = rule, height, {}

    def __getitem__(self, r: int) -> int:
        need = self.known.get(r)
        if need is None:
            need = self.known[r] = self.rule.rows(r, self.height)
        return need


def _need_table(rule, height: int, out_height: int):
    """``rule.rows(r, height)`` for r = 0 .. out_height (a group never asks an op for more
    rows than its tallest output has)."""
    if out_height > NEED_TABLE_ROWS:
        return _NeedsOnDemand(rule, height)
    return tuple(rule.rows(r, height) for r in range(out_height + 1))


class LBDF(CostModel):
    """Line-buffer depth-first: F_β = (W + Feat(G, 1))·e, F_D = (W + In + Out)·e."""

    name = "lbdf"
    incremental_intervals = True

    def _weight_term(self, member: np.ndarray) -> int:
        if self.fg.shared_weights:  # a per-op sum would count shared weights twice
            return int(self._weights[member].max())
        return int(self._weights[member].sum())

    def _weight_bound(self, ops: list[int]) -> int:
        numel = map(self.fg.weight_numel.__getitem__, ops)
        return max(numel) if self.fg.shared_weights else sum(numel)

    def _cost(self, mask: int) -> GroupCost:
        ops = bits(mask)
        weights, n_in, n_out, feature, _, _ = self._lbdf_terms(mask, ops)
        return self._group_cost(len(ops), weights, n_in, n_out, feature)

    def batch_dram(self, c: GroupCost) -> int:
        """A group that fits keeps its weights on chip across the images of the batch: read once."""
        if not c.fits:
            return super().batch_dram(c)
        return c.dram_bytes + (self.fg.images - 1) * (c.input_bytes + c.output_bytes)

    def _lbdf_terms(self, mask: int, ops: list[int], demander: dict[int, int] | None = None):
        """(W, In, Out, Feat(G, 1), rows, whole) in one backward pass: ``_io`` and ``_rows``
        fused for the sink of one row, where a tensor's rows are only its consumers' demand
        (at least one). ``demander``, when given, gains the op demanding each tensor's rows
        exactly as ``_rows`` finds it."""
        fg = self.fg
        weights = self._weights_of(ops)
        rows: dict[int, int] = {}
        n_in = n_out = feature = 0
        track = demander is not None
        # locals: this loop runs for every new group the search meets
        needs, op_outputs, numel, row_numel = self._needs, fg.op_outputs, fg.tensor_numel, fg.tensor_row_numel
        is_output, consumers, outside = fg.tensor_is_output, fg.tensor_consumer_mask, ~mask
        for op in reversed(ops):
            r_out = 0
            for t in op_outputs[op]:
                if is_output[t] or consumers[t] & outside:
                    n_out += numel[t]
                r = rows.get(t)
                if r is None:  # read by no op of G: one row as it is written out
                    r = rows[t] = 1
                    feature += row_numel[t]
                    if track:
                        demander[t] = op
                if r > r_out:
                    r_out = r
            for t, table, p in needs[op]:
                need = table[r_out]
                old = rows.get(t)
                if old is None:
                    if p < 0 or not mask >> p & 1:
                        n_in += numel[t]
                    rows[t] = need
                    feature += need * row_numel[t]
                elif need > old:
                    rows[t] = need
                    feature += (need - old) * row_numel[t]
                else:
                    continue
                if track:
                    demander[t] = op
        whole = self._whole(ops, mask, demander) if mask & fg.barrier_mask else 0
        if whole:
            for t in bits(whole):
                feature += (fg.tensor_height[t] - rows[t]) * row_numel[t]
        return weights, n_in, n_out, feature, rows, whole

    def _group_cost(self, n_ops: int, weights: int, n_in: int, n_out: int, feature: int) -> GroupCost:
        e = self.element_bytes
        buffer = (weights + feature) * e
        fits = buffer < self.buffer_bytes
        return GroupCost(
            buffer,
            (weights + n_in + n_out) * e,
            fits or n_ops == 1,
            fits,
            weights * e,
            feature * e,
            n_in * e,
            n_out * e,
        )

    def upstream_intervals(self, ops: list[int], j: int):
        """Incremental F_β and F_D as the chain interval grows upstream: a new first op
        changes no row demand below it, only turns its outputs from inputs into inner
        tensors (rows: the demand already there, or one row when they also leave) and
        adds its own inputs' demand. Barriers (the whole-tensor rule) and shared weights
        take the exact path."""
        fg = self.fg
        if fg.shared_weights:
            yield from super().upstream_intervals(ops, j)
            return
        e, beta = self.element_bytes, self.buffer_bytes
        rows: dict[int, int] = {}
        inputs: set[int] = set()
        mask = weights = feature = n_in = n_out = 0
        for i in range(j - 1, -1, -1):
            op = ops[i]
            mask |= 1 << op
            if mask & self.opaque_mask and mask & (mask - 1):
                return  # an opaque op shares no group
            if fg.barrier_mask >> op & 1:  # the whole-tensor rule from here on: exact costs
                for start in range(i, -1, -1):
                    mask |= 1 << ops[start]
                    if not self.valid(mask):
                        return
                    yield start, mask, self.cost(mask).dram_bytes
                return
            weights += fg.weight_numel[op]
            outside = ~mask
            r_out = 0
            for t in fg.op_outputs[op]:
                r = rows.get(t, 0)
                if t in inputs:
                    inputs.discard(t)
                    n_in -= fg.tensor_numel[t]
                leaves = fg.tensor_is_output[t] or fg.tensor_consumer_mask[t] & outside
                if leaves:
                    n_out += fg.tensor_numel[t]
                if (leaves or r == 0) and r < 1:
                    feature += (1 - r) * fg.tensor_row_numel[t]
                    r = rows[t] = 1
                r_out = max(r_out, r)
            for t, rule in fg.op_inputs[op]:
                if t not in inputs:
                    inputs.add(t)
                    n_in += fg.tensor_numel[t]
                need = rule.rows(r_out, fg.tensor_height[t])
                old = rows.get(t, 0)
                if need > old:
                    feature += (need - old) * fg.tensor_row_numel[t]
                    rows[t] = need
            if i < j - 1 and (weights + feature) * e >= beta:
                return
            yield i, mask, (weights + n_in + n_out) * e

    def piece_dram_bound(self, mask: int) -> int:
        """F_D = (W + In + Out)·e whether or not ``mask`` is valid: no F_β needed."""
        return self.lower_dram(mask)

    def breakdown(self, mask: int) -> Breakdown:
        ops = bits(mask)
        demander: dict[int, int] = {}
        weights, n_in, n_out, feature, rows, whole = self._lbdf_terms(mask, ops, demander)
        tensor_bytes = self._tensor_bytes(rows, whole)
        if mask not in self._memo:  # the splitter asks for F_β next: from the same pass
            self._remember(mask, self._group_cost(len(ops), weights, n_in, n_out, feature))
        return Breakdown(
            {i: self.fg.weight_numel[i] * self.element_bytes for i in ops}, tensor_bytes, demander
        )


class BRR(CostModel):
    """Buffer requirement reduction: F_β(T) = (W_max + Feat(G, ⌈H/T⌉))·e,
    F_D = (W·T* + In + Out)·e with T* the fewest tiles that fit."""

    name = "brr"

    def _weight_term(self, member: np.ndarray) -> int:
        return int(self._weights[member].max())

    def _weight_bound(self, ops: list[int]) -> int:
        return max(map(self.fg.weight_numel.__getitem__, ops))

    def _tiles_max(self, mask: int, ops: list[int]) -> int:
        fg = self.fg
        heights = [
            fg.tensor_height[t]
            for i in ops
            for t in fg.op_outputs[i]
            if fg.tensor_is_output[t] or fg.tensor_consumer_mask[t] & ~mask
        ]
        return max(heights, default=1)

    def _footprint(self, ops, mask, tiles: int) -> int:
        fg = self.fg
        rows, _, whole = self._rows(ops, mask, lambda t: -(-fg.tensor_height[t] // tiles))
        return self._feature(rows, whole)

    def _walk(self, mask: int, ops: list[int]) -> tuple[list, int, int, tuple[int, int, int, int]]:
        """What every footprint of the group shares, found once for the tile search: per op,
        last first, its inputs' need tables and its outputs as (tensor, leaves the group);
        the tensors the barrier rule holds whole; T_max; and ``_io``'s (W, W_max, In, Out)."""
        fg = self.fg
        is_output, consumers, outside = fg.tensor_is_output, fg.tensor_consumer_mask, ~mask
        height, numel = fg.tensor_height, fg.tensor_numel
        steps = []
        t_max = 1
        n_in = n_out = 0
        read: set[int] = set()  # inputs from outside the group, counted once
        for op in reversed(ops):
            outputs = []
            for t in fg.op_outputs[op]:
                leaves = is_output[t] or bool(consumers[t] & outside)
                if leaves:
                    n_out += numel[t]
                    if height[t] > t_max:
                        t_max = height[t]
                outputs.append((t, leaves))
            needs = self._needs[op]
            for t, _, p in needs:
                if (p < 0 or not mask >> p & 1) and t not in read:
                    read.add(t)
                    n_in += numel[t]
            steps.append((needs, outputs))
        whole = self._whole(ops, mask) if mask & fg.barrier_mask else 0
        return (
            steps,
            whole,
            t_max,
            (self._weights_of(ops), max(map(fg.weight_numel.__getitem__, ops)), n_in, n_out),
        )

    def _walk_footprint(self, steps: list, whole: int, tiles: int) -> int:
        """``_footprint`` over a prepared ``_walk``: the same rows, without the demanders."""
        height = self.fg.tensor_height
        rows: dict[int, int] = {}
        for needs, outputs in steps:
            r_out = 0
            for t, leaves in outputs:
                r = rows.get(t, 0)
                if leaves or r == 0:
                    sink = -(-height[t] // tiles)
                    if sink > r:
                        r = sink
                rows[t] = r
                if r > r_out:
                    r_out = r
            for t, table, _ in needs:
                need = table[r_out]
                if need > rows.get(t, 0):
                    rows[t] = need
        return self._feature(rows, whole)

    def _cost(self, mask: int) -> GroupCost:
        e, beta = self.element_bytes, self.buffer_bytes
        ops = bits(mask)
        steps, whole, t_max, (weights, w_max, n_in, n_out) = self._walk(mask, ops)
        self._lower_dram.setdefault(mask, (weights + n_in + n_out) * e)  # what lower_dram would count
        smallest = self._walk_footprint(steps, whole, t_max)
        fits = (w_max + smallest) * e < beta
        if len(ops) == 1 or not fits:
            # alone, an op runs layer by layer (the baseline); an invalid group is never run
            return GroupCost(
                (w_max + smallest) * e,
                (weights + n_in + n_out) * e,
                len(ops) == 1,
                fits,
                w_max * e,
                smallest * e,
                n_in * e,
                n_out * e,
                t_max,
            )
        lo, hi = 1, t_max  # fewest tiles that fit: Feat only shrinks as tiles grow
        feature_hi = smallest
        while lo < hi:
            mid = (lo + hi) // 2
            f = self._walk_footprint(steps, whole, mid)
            if (w_max + f) * e < beta:
                hi, feature_hi = mid, f
            else:
                lo = mid + 1
        return GroupCost(
            (w_max + feature_hi) * e,
            (weights * hi + n_in + n_out) * e,
            True,
            True,
            w_max * e,
            feature_hi * e,
            n_in * e,
            n_out * e,
            hi,
        )

    def breakdown(self, mask: int) -> Breakdown:
        fg = self.fg
        ops = bits(mask)
        t_max = self._tiles_max(mask, ops)
        rows, demander, whole = self._rows(ops, mask, lambda t: -(-fg.tensor_height[t] // t_max))
        heaviest = max(ops, key=lambda i: fg.weight_numel[i])
        return Breakdown(
            {i: (fg.weight_numel[i] * self.element_bytes if i == heaviest else 0) for i in ops},
            self._tensor_bytes(rows, whole),
            demander,
        )


COST_MODELS = {"lbdf": LBDF, "brr": BRR}


def make_cost_model(fg: FusionGraph, style: str, buffer_bytes: int, element_bytes: int = 1) -> CostModel:
    if style not in COST_MODELS:
        raise FuserError(f"unknown fusion style '{style}'; choose one of {', '.join(COST_MODELS)}")
    return COST_MODELS[style](fg, buffer_bytes, element_bytes)
