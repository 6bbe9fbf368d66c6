"""Blocked (NCHW[x]c) layouts for CPU builds, chosen per convolution, with the weights
transformed once at build time.

``layout_passes(target)`` (before LegalizeOps), in order:

1. ``RewriteForLayout``: ops TVM 0.27's ConvertLayout cannot carry through a blocked layout
   (no FRelaxInferLayout) become ops it can: ``clip(x, lo, hi)`` ->
   ``minimum(maximum(x, lo), hi)``; ``leakyrelu(x, a)`` with 0 <= a <= 1 -> ``maximum(x, a*x)``.
   Both compute the same numbers (max and min are exact). A ``split`` at indices cutting
   equal parts becomes a split into sections (ConvertLayout gets blocked split indices
   wrong: YOLOv8's channel halves came out as all and nothing).
2. ``ConvertLayout`` with ``make_layout_cb``: a conv2d in NCHW/OIHW whose channel counts have
   a block (16, 8 or 4 channels, at most the target's float lanes; a count below the lanes is
   its own block; a block under 8 of a count of at least the lanes is refused unless a
   grouped conv needs it: ShuffleNet's 116 channels as 4-channel blocks filled a quarter of
   each 16-lane vector, and its 1x1 convs ran 3.5x faster as plain matmuls over the pixels;
   a depthwise conv keeps such a block, between layout transforms: plain it falls to the
   reduction rule, and ShuffleNet's 116-channel ones took 0.46 ms a run there, > 3x blocked)
   runs as ``NCHW{bi}c`` x ``OIHW{bi}i{bo}o`` -> ``NCHW{bo}c``; depthwise as
   ``NCHW{b}c`` x ``OIHW{b}o``; a grouped conv blocks within a group. One block per channel
   count for the whole model (``group_limits``): TVM cannot change between two blocked
   layouts, and a grouped conv caps the block of every channel count it touches at its
   per-group width. A conv with no block stays NCHW (``["NCHW", "OIHW", "NCHW"]``: returning
   nothing crashes ConvertLayout on a blocked input; so does a conv2d_transpose, which stays
   NCHW/IOHW: PaddleOCR's detector head); if it is 1x1, stride 1, unpadded and
   ungrouped it becomes ``W[O, C] @ X[N, C, H*W]`` (reshapes are free), which the matmul rule
   vectorizes over the pixels. Elementwise ops, pools, means, concat and split follow the
   layout of their input. Before it, ``PadOutChannels``: a dense conv with constant weights
   whose output channels are not whole vectors (SqueezeNet's 1000 classes, PP-OCRv4 det's 24:
   blocks of 8 on a 16-lane CPU) computes zero-padded channels up to whole vectors and slices
   them off when that pays (``_padded_out_channels``); ``SinkChannelSlices`` moves that slice
   past the per-channel ops after it (bias, activation, a global pool), so they stay in the
   conv's kernel.
3. ``HoistLayoutsOutOfGroups``: plan groups (Primitive functions, converted one by one, so each
   starts and ends in the plain layout) exchange blocked tensors. A parameter read only by
   ``layout_transform``s into one layout (one or several: ConvertLayout blocks a tensor once per
   reader), or given a constant by every call and read only by one op on it alone (Gemm's
   transpose), takes that op's result instead: the op moves to the calls, where pass 4
   prepacks a weight's layout and FoldConstant folds the rest. A function whose result is a
   ``layout_transform`` of a blocked tensor back to plain returns the blocked tensor; so does
   each field of a result tuple that is one and that nothing else in the function reads (a
   group with two outputs: MobileNetV2's residual sum and the next expansion); the transform
   moves to its calls (to the ``TupleGetItem`` of a field). At a call, a transform that
   undoes the one its argument came from (a group's blocked result into a group that blocks
   it the same way) is dropped: the groups pass the blocked tensor. A result (field) or data
   parameter moves only where every tensor crossing that boundary cancels so, and a tuple is
   read only field by field; the transforms left in ``main`` are kernels of their own (at the
   model's input and output, or between groups with different blocks). Groups sharing one
   function (identical shapes) keep sharing it. Before it, ``TransformsBeforeEpilogues``
   moves a transform into the blocked layout above an elementwise op of scalars and tensors
   of its result's plain shape: a ReLU/max/min by scalars, or an add/subtract/multiply/max/min
   of two or more tensors that are all parameters (a residual add at a group's start), each
   tensor blocked on its own, repeated up a chain, so a group starting with the previous
   conv's activation or with a residual sum blocks its parameters directly. The op's plain
   result may have one other reader, the function's result tuple, which then reads the
   inverse transform of the blocked op (a field this pass sinks). A group that is only an
   elementwise chain on one tensor (a ReLU6 the plan put alone: MobileNetV2's 960-channel
   stage at batch 8), every call of which takes a result this pass can sink, in one block,
   runs on that block (a transform in, the chain, a transform back), and keeps it only if both
   transforms move out.
4. ``PrepackWeights``: each ``layout_transform`` of a constant is done here, once, in numpy
   (the index map evaluated on index grids). FoldConstant would compile one TIR function per
   weight: most of the build time of a 150-conv model.

``legalize_map()`` gives LegalizeOps fuser's TE computes for blocked convolutions
(``conv2d_nchwc``, ``depthwise_nchwc``: separate reduction axes for input-channel chunk,
kernel row, kernel column and channel in block, which the window schedule rule tiles) and
the fast forms of softmax, exp, sigmoid, tanh, erf and GELU (TVM's ``topi.fast_*``: polynomial
approximations that vectorize; LLVM turns ``exp`` of a vector into one libm call per lane).
"""

from __future__ import annotations

import math
import re

import numpy as np

from .common import relax, require_tvm, tvm
from .converters.context import relax_const

BLOCKS = (16, 8, 4)
MIN_BLOCK = 8  # smallest block of a count that has at least the lanes (not grouped)


def channel_block(c: int, lanes: int) -> int | None:
    """Channels per block for a tensor of ``c`` channels: the largest of 16/8/4 that is at
    most ``lanes`` and divides ``c``; ``c`` itself when smaller than ``lanes``; else None."""
    for b in BLOCKS:
        if b <= lanes and c % b == 0:
            return b
    return c if c < lanes else None


def _dims(expr) -> list[int]:
    return [int(d) for d in expr.ty.shape]


def _static_dims(expr) -> list[int] | None:
    """``expr``'s shape when it is a tensor of known dims, else None (a tuple, a scalar)."""
    ty = getattr(expr, "ty", None)
    shape = getattr(ty, "shape", None) if isinstance(ty, relax.TensorType) else None
    if shape is None or not all(isinstance(d, tvm.tirx.IntImm | int) for d in shape):
        return None
    return [int(d) for d in shape]


def _calls(mod, op_name: str) -> list:
    op = tvm.ir.Op.get(op_name)
    found: list = []
    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(
                func.body, lambda e: found.append(e) if isinstance(e, relax.Call) and e.op == op else None
            )
    return found


def conv_block(c: int, lanes: int, limits: dict[int, int]) -> int | None:
    """The block a dense conv's tensor of ``c`` channels gets (None: plain NCHW)."""
    b = channel_block(c, limits.get(c, lanes))
    if b is not None and c not in limits and c >= lanes and b < min(lanes, MIN_BLOCK):
        return None  # a quarter (half) vector: plain NCHW, its 1x1 convs as full-width matmuls
    return b


def group_limits(mod, lanes: int) -> dict[int, int]:
    """Channel count -> largest block allowed: every grouped (not depthwise) conv caps the
    block of its input and output channel counts at its per-group width's block, and every
    concat over channels caps the counts it joins at the largest block dividing them all (1:
    plain). DenseNet's 16 + 8 channels came as 16- and 8-channel blocks, which ConvertLayout
    cannot join ("Invalid layout axis 16b"); the result in the parts' block is read without a
    transform (PP-OCRv4 det's 4 x 24 channels in blocks of 8: left to its own block of 16,
    the 96 channels cost a transform and a slower conv, 47 -> 60 ms). Plain parts (ShuffleNet's
    116 + 116) are left alone: capping them made its 116-channel 1x1 convs blocked by 4
    instead of full-width matmuls (1.13x -> 1.92x ORT); parts that share no block join plain,
    and the result's count keeps its own."""
    limits: dict[int, int] = {}
    for call in _calls(mod, "relax.nn.conv2d"):
        groups = int(call.attrs.groups)
        cin, cout = _dims(call.args[0])[1], _dims(call.args[1])[0]
        if groups == 1 or groups == cin == cout:
            continue
        for c in (cin, cout):
            limits[c] = min(limits.get(c, lanes), channel_block(c // groups, lanes) or 1)
    for call in _calls(mod, "relax.concat"):
        parts = [_static_dims(f) for f in getattr(call.args[0], "fields", [])]
        out = _static_dims(call)
        if out is None or len(out) != 4 or int(call.attrs.axis) % 4 != 1 or any(p is None for p in parts):
            continue
        if {conv_block(p[1], lanes, limits) for p in parts} == {None}:
            continue  # plain parts join into a plain result, which consumers may block
        counts = {p[1] for p in parts} | {out[1]}
        common = next((b for b in BLOCKS if b <= lanes and all(c % b == 0 for c in counts)), 1)
        if common == 1:  # the parts made plain; the result's count keeps its own block
            counts -= {out[1]}
        for c in counts:
            limits[c] = min(limits.get(c, lanes), common)
    return limits


def make_layout_cb(lanes: int, limits: dict[int, int] | None = None):
    """ConvertLayout's per-call callback: the layouts for one conv2d (see the module doc)."""
    limits = limits or {}

    def block(c):
        return conv_block(c, lanes, limits)

    def layout_cb(call):
        op = call.op.name
        if op == "relax.nn.conv2d_transpose":  # stays plain: {} crashes it on a blocked input
            return {op: ["NCHW", "IOHW", "NCHW"]}
        if op != "relax.nn.conv2d":
            return {}
        if call.attrs.data_layout != "NCHW" or call.attrs.kernel_layout != "OIHW":
            return {}
        cin, cout = _dims(call.args[0])[1], _dims(call.args[1])[0]
        groups = int(call.attrs.groups)
        if groups == cin == cout:  # depthwise: blocked, between plain layouts if need be
            bo = channel_block(cout, limits.get(cout, lanes))
            if bo is None or bo == 1:
                return {op: ["NCHW", "OIHW", "NCHW"]}
            return {op: [f"NCHW{bo}c", f"OIHW{bo}o", f"NCHW{bo}c"]}
        bi, bo = block(cin), block(cout)
        plain = {op: ["NCHW", "OIHW", "NCHW"]}
        if bi is None or bo is None or bi == 1 or bo == 1:
            return plain
        if groups > 1 and ((cin // groups) % bi or (cout // groups) % bo):
            return plain
        return {op: [f"NCHW{bi}c", f"OIHW{bi}i{bo}o", f"NCHW{bo}c"]}

    return layout_cb


# ---- pass 1: ops ConvertLayout can carry --------------------------------------------------
def _rewrite_call(call):
    """``call`` in ops that have layout inference, or None to keep it."""
    dtype = call.ty.dtype if isinstance(call.ty, relax.TensorType) else None
    if not dtype:
        return None
    R = relax.op
    if call.op.name == "relax.clip":
        lo, hi = (float(a.value) for a in call.args[1:3])
        return R.minimum(R.maximum(call.args[0], relax.const(lo, dtype)), relax.const(hi, dtype))
    if call.op.name == "relax.nn.leakyrelu" and 0.0 <= float(call.attrs.alpha) <= 1.0:
        x = call.args[0]
        return R.maximum(x, R.multiply(x, relax.const(float(call.attrs.alpha), dtype)))
    return None


def _split_sections(call):
    """``split`` at indices cutting equal parts -> ``split`` into that many sections:
    ConvertLayout keeps channel indices in channels on a blocked axis (YOLOv8's halves
    came out as 2 chunks and 0), while a section count needs no change."""
    if call.op.name != "relax.split" or isinstance(call.attrs.indices_or_sections, tvm.tirx.IntImm | int):
        return None
    indices = [int(i) for i in call.attrs.indices_or_sections]
    size = _dims(call.args[0])[int(call.attrs.axis)]
    cuts = [0, *indices, size]
    parts = {b - a for a, b in zip(cuts, cuts[1:])}
    if len(parts) != 1:
        return None
    return relax.op.split(call.args[0], len(cuts) - 1, int(call.attrs.axis))


_BROADCAST_BINARY = frozenset(
    f"relax.{op}" for op in ("add", "subtract", "multiply", "divide", "maximum", "minimum", "power")
)
_CHANNEL_REDUCTIONS = {f"relax.{op}": getattr(relax.op, op) for op in ("mean", "max", "min", "sum")}


def _one_channel_operands(call):
    """A binary op of a 4-D map of C channels and a 4-D map of one (a spatial attention map,
    CBAM's): the one-channel operand broadcast to C first. ConvertLayout gives the C-channel
    operand the blocked layout and cannot block one channel ("Cannot broadcast from 5 to 4")."""
    if call.op.name not in _BROADCAST_BINARY or len(call.args) != 2:
        return None
    shapes = [_static_dims(a) for a in call.args]
    if any(s is None or len(s) != 4 for s in shapes):
        return None
    (a, b), (sa, sb) = call.args, shapes
    if sa[1] > 1 and sb[1] == 1:
        return relax.Call(call.op, [a, relax.op.broadcast_to(b, [sb[0], sa[1], *sb[2:]])], call.attrs)
    if sb[1] > 1 and sa[1] == 1:
        return relax.Call(call.op, [relax.op.broadcast_to(a, [sa[0], sb[1], *sa[2:]]), b], call.attrs)
    return None


def _scalar_operand(call):
    """A binary op of a 4-D map and a one-element tensor of lower rank (a scalar weight of
    shape (1,): PP-LCNetV3's learnable affine blocks, after every conv): that operand made 0-d.
    ConvertLayout cannot give a rank-1 tensor the blocked layout and took the map back to NCHW
    around the op and blocked again after it: PP-OCRv4's detector at 640 spent 25 ms of 80
    in those layout transforms."""
    if call.op.name not in _BROADCAST_BINARY or len(call.args) != 2:
        return None
    dims = [_static_dims(x) for x in call.args]
    if any(d is None for d in dims) or not any(len(d) == 4 for d in dims):
        return None
    args = list(call.args)
    changed = False
    for i, d in enumerate(dims):
        if 0 < len(d) < 4 and math.prod(d) == 1:
            args[i] = relax.op.reshape(args[i], [])
            changed = True
    return relax.Call(call.op, args, call.attrs) if changed else None


def _channel_reduction(call):
    """A reduction over the channels of a 4-D map keeping its axis (CBAM's channel mean and
    max): reduced without keeping it, then the axis put back. ConvertLayout cannot map a
    blocked layout onto the kept one-channel axis ("Could not normalize iterators")."""
    reduce = _CHANNEL_REDUCTIONS.get(call.op.name)
    if reduce is None or not call.attrs.keepdims or call.attrs.axis is None:
        return None
    dims = _static_dims(call.args[0])
    rank = len(dims or ())
    axes = sorted(int(a) % rank for a in call.attrs.axis) if rank else []
    if rank != 4 or 1 not in axes:
        return None
    return relax.op.expand_dims(reduce(call.args[0], axes, keepdims=False), axes)


def _rewrite_for_layout(call):
    for rewrite in (
        _rewrite_call,
        _split_sections,
        _scalar_operand,
        _one_channel_operands,
        _channel_reduction,
    ):
        new = rewrite(call)
        if new is not None:
            return new
    return None


def _call_mutator(name: str, rewrite):
    """A module pass applying ``rewrite(call) -> Expr | None`` to every call of every Relax
    function, bottom up."""
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Mutator(PyExprMutator):
        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            new = rewrite(call) if isinstance(call.op, tvm.ir.Op) else None
            return call if new is None else new

    return _mutator_pass(name, _Mutator)


def _mutator_pass(name: str, mutator_class):
    """A module pass running ``mutator_class`` (a PyExprMutator) over every Relax function."""

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pass(mod, _ctx):
        m = mutator_class(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                m.builder_.update_func(gv, m.visit_expr(func))
        return m.builder_.get()

    return _pass


_UNARY = frozenset(
    f"relax.{op}"
    for op in ("nn.gelu", "nn.gelu_tanh", "nn.relu", "nn.silu", "sigmoid", "tanh", "clip", "exp")
)


def _rows_of(expr):
    """(y, shape) when ``expr`` is a reshape of a 2-D (rows, N) ``y`` to a ``shape`` ending in
    N (the MatMul converter's token map, put back), else None."""
    if not (
        isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == "relax.reshape"
    ):
        return None
    y, out = expr.args[0], _static_dims(expr)
    dims = _static_dims(y)
    if dims is None or out is None or len(dims) != 2 or len(out) < 3 or out[-1] != dims[1]:
        return None
    return y, out


def sink_row_reshapes():
    """A bias Add or activation after a token map's matmul computed on its 2-D rows, the
    reshape back moved after it: FuseOps fuses a matmul with the elementwise ops after it, not
    with a reshape between (ConvNeXt-T: each MLP matmul, its bias and its GELU in one kernel).
    Rules: op(reshape(y)) -> reshape(op(y)) for an activation; add/multiply/... (reshape(y), c)
    -> reshape(op(y, c')) for a c of one element or of N along the last axis only (c' 0-d or
    (N,)); reshape(reshape(y)) -> reshape(y)."""
    return _producer_pass("SinkRowReshapes", _sink_row_reshape)


def _sink_row_reshape(_, call, inner):
    name = call.op.name
    if name == "relax.reshape" and isinstance(inner, relax.Call) and inner.op == call.op:
        # a reshape of a reshape is one: two became a copy kernel, one is a view
        return relax.op.reshape(inner.args[0], call.args[1])
    if name not in _UNARY and name not in _BROADCAST_BINARY:
        return None
    found = _rows_of(inner)
    if found is None:
        return None
    y, shape = found
    args = [y, *call.args[1:]]
    if name in _BROADCAST_BINARY:
        other = _static_dims(call.args[1]) if len(call.args) == 2 else None
        if other is None:
            return None
        size = math.prod(other)
        if size == shape[-1] and other[-1] == size:
            args[1] = relax.op.reshape(call.args[1], [size])
        elif size == 1:
            args[1] = relax.op.reshape(call.args[1], [])
        else:
            return None
    return relax.op.reshape(relax.Call(call.op, args, call.attrs), shape)


def _producer_pass(name: str, rewrite):
    """A module pass applying ``rewrite(mutator, call, producer) -> Expr | None`` to every op
    call whose first argument is a bound variable (``producer``: the expression bound to it),
    bottom up."""
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Mutator(PyExprMutator):
        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if not isinstance(call.op, tvm.ir.Op) or not call.args or not isinstance(call.args[0], relax.Var):
                return call
            new = rewrite(self, call, self.lookup_binding(call.args[0]))
            return call if new is None else new

    return _mutator_pass(name, _Mutator)


def _pointwise_as_matmul(call, layout_cb):
    """A 1x1, stride-1, unpadded, ungrouped NCHW conv that gets no blocked layout (a channel
    count with no block: ShuffleNet's 58, DeepLab's 21 classes) as W[O, C] @ X[N, C, H*W]:
    the matmul rule vectorizes it over the pixels."""
    if call.op.name != "relax.nn.conv2d" or layout_cb(call).get(call.op.name, [""])[0] != "NCHW":
        return None
    a = call.attrs
    x, w = call.args
    if (
        a.out_layout != "NCHW"
        or int(a.groups) != 1
        or any(int(s) != 1 for s in a.strides)
        or any(int(p) for p in a.padding)
        or _dims(w)[2:] != [1, 1]
        or not isinstance(w, tvm.ir.expr.Constant)
    ):
        return None
    n, c, h, wd = _dims(x)
    o = _dims(w)[0]
    R = relax.op
    weight = relax_const(w.value.numpy().reshape(o, c))
    y = R.matmul(weight, R.reshape(x, [n, c, h * wd]))
    return R.reshape(y, [n, o, h, wd])


def _padded_out_channels(call, lanes: int):
    """A dense NCHW conv with constant weights whose output channels are not whole vectors
    computes zero-padded channels up to whole vectors, then slices them off. Blocks of 8 on a
    16-lane CPU leave half of every vector idle; full vectors run about twice as fast, which
    pays for the padding and the slice's copy when
    - there are at least 16 vectors of channels (padding under 1/16: SqueezeNet's 1000
      classes as 1008, its classifier 1.55 -> 0.74 ms, 1 thread), or
    - the padding is at most a third (24 -> 32) and the conv is heavy: at least 512
      multiply-adds an output (the slice's copy is then small beside them) and 32 M in all
      (PP-OCRv4 det's 96 -> 24 3x3 convs at 160x160, 530 M each: 9.4 -> 7.5 ms; a
      squeeze-excite's 672 -> 28 on one pixel gains nothing and gets no slice)."""
    if call.op.name != "relax.nn.conv2d" or lanes < 16:
        return None
    a = call.attrs
    x, w = call.args
    if a.data_layout != "NCHW" or a.kernel_layout != "OIHW" or a.out_layout != "NCHW" or int(a.groups) != 1:
        return None
    out = _static_dims(call)
    if not isinstance(w, tvm.ir.expr.Constant) or out is None:
        return None
    o, per_output = _dims(w)[0], math.prod(_dims(w)[1:])
    whole = -(-o // lanes) * lanes
    heavy = per_output >= 512 and math.prod(out) * per_output >= 1 << 25
    if o % lanes == 0 or not (o >= 16 * lanes or (3 * whole <= 4 * o and heavy)):
        return None
    weight = w.value.numpy()
    padded = np.zeros((whole, *weight.shape[1:]), weight.dtype)
    padded[:o] = weight
    y = relax.op.nn.conv2d(
        x, relax_const(padded), a.strides, a.padding, a.dilation, 1, "NCHW", "OIHW", "NCHW", a.out_dtype
    )
    return relax.op.strided_slice(y, axes=[1], begin=[0], end=[o])


def _channel_slice(expr):
    """(y, channels kept) when ``expr`` is a slice like ``_padded_out_channels``': the first
    channels of y, at least 3/4 of them (a model's own x[:, :k] of a few channels is left
    alone: sunk, the ops after it would run on all of y's channels), else None."""
    if not (isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op)):
        return None
    if expr.op.name != "relax.strided_slice" or len(expr.args) != 4:
        return None
    axes, begin, end = ([int(f.value) for f in t.fields] for t in expr.args[1:])
    dims = _static_dims(expr.args[0])
    if axes != [1] or begin != [0] or dims is None or 4 * end[0] < 3 * dims[1]:
        return None
    return expr.args[0], end[0]


def sink_channel_slices():
    """The slice after a channel-padded conv moved down past what works channel by channel,
    so the conv keeps its bias and activation in its kernel and the slice lands on a small
    tensor (SqueezeNet's classifier: conv + bias + ReLU in one kernel, the slice after the
    global pool). Rules: op(slice(y)) -> slice(op(y)) for an activation; add/multiply/...
    (slice(y), c) -> slice(op(y, c')) for a constant c of one element or one per channel
    (c' padded with its last channel's value); mean/max/min/sum over axes without the
    channels -> the reduction of y, then the slice."""
    return _producer_pass("SinkChannelSlices", _sink_channel_slice)


def _sink_channel_slice(mutator, call, producer):
    found = _channel_slice(producer)
    if found is None:
        return None
    y, kept = found
    name, padded = call.op.name, _dims(y)[1]
    if name in _UNARY:
        new = relax.Call(call.op, [y, *call.args[1:]], call.attrs)
    elif name in _BROADCAST_BINARY and len(call.args) == 2:
        c = _bound_constant(mutator, call.args[1])
        if c is None:
            return None
        if c.size != 1:
            if c.ndim != len(_dims(y)) or c.shape[1] != kept or c.size != kept:
                return None
            c = np.pad(c, [(0, 0), (0, padded - kept)] + [(0, 0)] * (c.ndim - 2), mode="edge")
        new = relax.Call(call.op, [y, relax_const(c)], call.attrs)
    elif name in _CHANNEL_REDUCTIONS and call.attrs.axis is not None:
        axes = [int(a) % len(_dims(y)) for a in call.attrs.axis]
        keep = bool(call.attrs.keepdims)
        if 1 in axes or (not keep and any(a < 1 for a in axes)):
            return None
        new = _CHANNEL_REDUCTIONS[name](y, axes, keep)
    else:
        return None
    return relax.op.strided_slice(new, axes=[1], begin=[0], end=[kept])


def _bound_constant(mutator, expr):
    """The value of a constant, or of a reshape of one (a converter's bias), or None."""
    if isinstance(expr, relax.Var):
        bound = mutator.lookup_binding(expr)
        if not (isinstance(bound, relax.Call) and bound.op == tvm.ir.Op.get("relax.reshape")):
            return None
        inner, shape = bound.args[0], _static_dims(bound)
        if not isinstance(inner, tvm.ir.expr.Constant) or shape is None:
            return None
        return inner.value.numpy().reshape(shape)
    return expr.value.numpy() if isinstance(expr, tvm.ir.expr.Constant) else None


# ---- pass 3: layouts out of plan groups ----------------------------------------------------
def _callers(mod) -> dict[str, list]:
    """Function name -> the calls of it in the module's Relax functions."""
    calls: dict[str, list] = {}

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.GlobalVar):
            calls.setdefault(e.op.name_hint, []).append(e)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    return calls


def _hoistable(func, calls: list) -> dict[int, object]:
    """Parameter index -> the one binding reading it, an op on it alone (a layout_transform, a
    transpose), for parameters every call passes a constant."""
    uses: dict[int, list] = {}
    bindings = [b for block in func.body.blocks for b in block.bindings]
    for b in bindings:
        seen = _vars(b.value)
        for i, p in enumerate(func.params):
            uses.setdefault(i, []).extend(b for v in seen if v.same_as(p))
    out = {}
    for i, users in uses.items():
        if len(users) > 1 and _same_layout_transforms(users):
            users = users[:1]  # ConvertLayout blocks a tensor once per reader: one is enough
        if len(users) != 1 or not calls:
            continue
        value = users[0].value
        if (
            isinstance(value, relax.Call)
            and isinstance(value.op, tvm.ir.Op)
            and value.args
            and value.args[0].same_as(func.params[i])
            and not any(isinstance(a, relax.Var) for a in value.args[1:])
            and (_is_layout_transform(value) or all(_constant(c.args[i]) for c in calls))
        ):
            out[i] = users[0]
    return out


def _readers(func, param) -> list:
    """The bindings of ``func`` that read ``param``."""
    bindings = [b for block in func.body.blocks for b in block.bindings]
    return [b for b in bindings if any(v.same_as(param) for v in _vars(b.value))]


def _same_layout_transforms(bindings) -> bool:
    first = bindings[0].value
    return all(
        _is_layout_transform(b.value)
        and b.value.args[0].same_as(first.args[0])
        and b.value.attrs.index_map.is_equivalent_to(first.attrs.index_map)
        for b in bindings
    )


def _primitive(func) -> bool:
    return isinstance(func, relax.Function) and bool(func.attrs) and "Primitive" in func.attrs


def _boundaries(mod, callers: dict) -> tuple[dict, dict]:
    """(function name -> {parameter index: binding to hoist}, function name -> {result field:
    binding to sink}): weights' ops always; a layout_transform of a data parameter or of a result only where
    every tensor crossing that boundary goes from a sunk result straight into a hoisted
    parameter that undoes it, so no transform is left in ``main`` (plan groups stay exactly the
    kernels), found by dropping what fails until nothing changes."""
    prim = {gv.name_hint: f for gv, f in mod.functions_items() if _primitive(f)}
    hoists = {n: _hoistable(f, callers.get(n, [])) for n, f in prim.items()}
    results = {n: _blocked_results(f) for n, f in prim.items() if callers.get(n)}
    produced: list = []  # (var in a caller, the group whose call it is bound to, result field)
    uses: list = []  # (var, (group, parameter index) or None for any other use)

    def producer(var):
        return next(((n, f) for v, n, f in produced if v.same_as(var)), None)

    for func in mod.functions.values():
        if not isinstance(func, relax.Function) or _primitive(func):
            continue
        for block in func.body.blocks:
            for b in block.bindings:
                v = b.value
                if (
                    isinstance(v, relax.Call)
                    and isinstance(v.op, tvm.ir.GlobalVar)
                    and v.op.name_hint in prim
                ):
                    produced.append((b.var, v.op.name_hint, None))
                    uses += [
                        (a, (v.op.name_hint, i)) for i, a in enumerate(v.args) if isinstance(a, relax.Var)
                    ]
                elif isinstance(v, relax.TupleGetItem) and producer(v.tuple_value) is not None:
                    produced.append((b.var, producer(v.tuple_value)[0], int(v.index)))
                else:
                    uses += [(a, None) for a in _vars(v)]
        uses += [(a, None) for a in _vars(func.body.body)]

    def cancels(group, i, var) -> bool:
        b, (src, field) = hoists.get(group, {}).get(i), producer(var) or (None, None)
        sunk = results.get(src, {}).get(field)
        return (
            b is not None
            and sunk is not None
            and _is_layout_transform(b.value)
            and _undoes(b.value.attrs.index_map, b.var.ty, sunk.value)
        )

    changed = True
    while changed:
        changed = False
        for name, fields in results.items():
            for field in list(fields):
                # a tuple's fields: the tuple itself may be read only through TupleGetItem
                mine = [v for v, n, f in produced if n == name and f in (field, None)]
                if not all(
                    u is not None and cancels(*u, v) for v, u in uses if any(v.same_as(m) for m in mine)
                ):
                    del fields[field]
                    changed = True
        for name, hoisted in hoists.items():
            for i in list(hoisted):
                calls = callers.get(name, [])
                if all(_constant(c.args[i]) for c in calls):
                    continue
                if not all(cancels(name, i, c.args[i]) for c in calls):
                    del hoisted[i]
                    changed = True
    return hoists, results


def _is_layout_transform(expr) -> bool:
    return (
        isinstance(expr, relax.Call)
        and isinstance(expr.op, tvm.ir.Op)
        and expr.op.name == "relax.layout_transform"
        and expr.attrs.pad_value is None
    )


def _blocked_results(func) -> dict:
    """Result field (None: the whole result) -> its binding, for each that is a layout_transform
    of a blocked (5-D) tensor back to a plain one: the result, or fields of a result tuple
    that nothing else in the function reads."""
    bindings = [b for block in func.body.blocks for b in block.bindings]

    def bound(var):
        return next((b for b in bindings if b.var.same_as(var)), None)

    def blocked(b) -> bool:
        shape = getattr(b.value.args[0].ty, "shape", None) if b and _is_layout_transform(b.value) else None
        return shape is not None and len(shape) == 5

    whole = bound(func.body.body)
    if blocked(whole):
        return {None: whole}
    if whole is None or not isinstance(whole.value, relax.Tuple):
        return {}
    fields = list(whole.value.fields)
    return {
        k: bound(f)
        for k, f in enumerate(fields)
        if blocked(bound(f)) and len(_readers(func, f)) == 1 and sum(g.same_as(f) for g in fields) == 1
    }


def _undoes(index_map, result_ty, inner) -> bool:
    """Whether a layout_transform by ``index_map`` giving ``result_ty`` undoes layout_transform
    ``inner``: its result is ``inner``'s input."""
    if not _is_layout_transform(inner):
        return False
    import tvm_ffi

    x = inner.args[0]
    if not isinstance(x.ty, relax.TensorType) or not tvm_ffi.structural_equal(x.ty, result_ty):
        return False
    back = inner.attrs.index_map.inverse(list(x.ty.shape))
    return bool(back.is_equivalent_to(index_map))


def _apply(call, arg):
    """``call`` (an op on one tensor) on ``arg`` instead."""
    return relax.Call(call.op, [arg, *call.args[1:]], call.attrs, call.ty_args)


def _vars(expr) -> list:
    seen: list = []
    relax.analysis.post_order_visit(expr, lambda e: seen.append(e) if isinstance(e, relax.Var) else None)
    return seen


def _constant(expr) -> bool:
    return isinstance(expr, tvm.ir.expr.Constant) and isinstance(getattr(expr, "ty", None), relax.TensorType)


ELEMENTWISE = (
    "relax.maximum",
    "relax.minimum",
    "relax.nn.relu",
    "relax.add",
    "relax.subtract",
    "relax.multiply",
)


def _elementwise(expr, func) -> bool:
    """An elementwise op whose arguments are scalar constants and tensors of its result's
    plain 4-D shape, at least one: it commutes with any layout_transform. A tensor of two or
    more must be a parameter of ``func`` (a residual add at a group's start), so the blocked
    copies it needs are hoisted to the calls, not left in the group."""
    if not (isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name in ELEMENTWISE):
        return False
    shape = getattr(expr.ty, "shape", None)
    if shape is None or len(shape) != 4:
        return False
    tensors = [a for a in expr.args if not (_constant(a) and len(a.ty.shape) == 0)]
    if not tensors or not all(
        isinstance(a, relax.Var) and getattr(a.ty, "shape", None) is not None and _dims(a) == _dims(expr)
        for a in tensors
    ):
        return False
    return len(tensors) == 1 or all(any(a.same_as(p) for p in func.params) for a in tensors)


def transforms_before_epilogues():
    """Module pass: in a Primitive function, ``layout_transform(op(x, ...))`` into the blocked
    layout, for an elementwise op (``_elementwise``), becomes ``op(layout_transform(x), ...)``,
    repeated: a group that starts with the previous conv's activation (MobileNetV2 at batch 8:
    ReLU6, then a 1x1 conv) or with a residual add of two plain parameters then blocks its
    parameters itself, which pass 3 can hoist. Where the op's plain result has other readers
    (only the function's result: MobileNetV2's residual sum, returned for the next block's
    skip) they read the inverse transform of the blocked one, a result pass 3 can sink."""
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Swap(PyExprMutator):
        def __init__(self, src, lts: list, others: bool):  # op binding, its transforms into a layout
            super().__init__()
            self.src, self.lts, self.others = src, lts, others

        def visit_var_binding_(self, binding):
            if any(binding.same_as(t) for t in self.lts):
                return  # its readers read the blocked op (remapped below)
            if not binding.same_as(self.src):
                return super().visit_var_binding_(binding)
            src, lts = self.src, self.lts
            lt, op = lts[0].value, src.value
            args = [
                a if _constant(a) else self.builder_.emit(_apply(lt, self.visit_expr(a))) for a in op.args
            ]
            blocked = self.builder_.emit(relax.Call(op.op, args, op.attrs, op.ty_args))
            for t in lts:
                self.set_var_remap(t.var, blocked)
            if self.others:
                back = lt.attrs.index_map.inverse(list(src.var.ty.shape))
                plain = self.builder_.normalize(relax.op.layout_transform(blocked, back))
                self.builder_.emit_normalized(relax.VarBinding(src.var, plain))

    def moves(func) -> list:
        bindings = [b for block in func.body.blocks for b in block.bindings]
        out = []
        for src in bindings:
            if not _elementwise(src.value, func):
                continue
            readers = _readers(func, src.var)
            lts = [
                b
                for b in readers
                if _is_layout_transform(b.value)
                and len(b.var.ty.shape) == 5
                and b.value.args[0].same_as(src.var)
            ]
            lts = [b for b in lts if b.value.attrs.index_map.is_equivalent_to(lts[0].value.attrs.index_map)]
            others = [b for b in readers if not any(b.same_as(t) for t in lts)]
            returned = src.var.same_as(func.body.body)  # its plain value stays the result
            if lts and all(_returns_only(func, b) for b in others):
                out.append((src, lts, bool(others) or returned))
        return out

    @tvm.transform.module_pass(opt_level=0, name="TransformsBeforeEpilogues")
    def _pass(mod, _ctx):
        for _ in range(16):  # one op per function and round: bindings change under the next
            changed = False
            for gv, func in list(mod.functions_items()):
                moved = moves(func) if _primitive(func) else []
                for src, lts, others in moved[:1]:
                    new = _Swap(src, lts, others).visit_expr(func)
                    mod[gv] = relax.Function(new.params, new.body, func.ret_ty, func.is_pure, func.attrs)
                    changed = True
            if not changed:
                break
        return mod

    return _pass


def _returns_only(func, binding) -> bool:
    """Whether ``binding`` is the function's result tuple (its value only returned)."""
    return binding.var.same_as(func.body.body) and isinstance(binding.value, relax.Tuple)


def _elementwise_group(func):
    """The tensor parameter of a Primitive function that is only an elementwise chain on it
    (a ReLU6 the plan put in a group of its own: MobileNetV2 at batch 8), else None."""
    tensors = [p for p in func.params if len(getattr(p.ty, "shape", None) or []) == 4]
    bindings = [b for block in func.body.blocks for b in block.bindings]
    if len(tensors) != 1 or not bindings or not isinstance(func.body.body, relax.Var):
        return None
    for b in bindings:
        if not isinstance(b.value, relax.Var) and not (
            _elementwise(b.value, func) and sum(isinstance(a, relax.Var) for a in b.value.args) == 1
        ):
            return None
    return tensors[0] if _dims(func.body.body) == _dims(tensors[0]) else None


def _blocked_chain(func, param, block: int):
    """``func`` on ``param`` in NCHW{block}c (ConvertLayout's index map), its result
    transformed back: the transforms pass 3 can move to the calls."""
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Blocked(PyExprMutator):
        def visit_var_binding_(self, binding):
            if not self.started:
                self.started = True
                into = relax.op.layout_transform(param, lambda n, c, h, w: (n, c // block, h, w, c % block))
                self.set_var_remap(param, self.builder_.emit(into))
            if not binding.var.same_as(func.body.body):
                return super().visit_var_binding_(binding)
            blocked = self.builder_.emit(self.visit_expr(binding.value))
            back = relax.op.layout_transform(blocked, lambda n, o, h, w, i: (n, o * block + i, h, w))
            plain = self.builder_.normalize(back)
            self.builder_.emit_normalized(relax.VarBinding(binding.var, plain))

    mutator_ = _Blocked()
    mutator_.started = False
    new = mutator_.visit_expr(func)
    return relax.Function(new.params, new.body, func.ret_ty, func.is_pure, func.attrs)


def _block_elementwise_groups(mod, callers: dict) -> tuple:
    """(the module with every elementwise-only group whose calls all take a blocked group
    result of one layout rewritten by ``_blocked_chain``, {name: original function})."""
    bound = {}
    for func in mod.functions.values():
        if isinstance(func, relax.Function) and not _primitive(func):
            bound.update({b.var: b.value for block in func.body.blocks for b in block.bindings})
    originals = {}
    for gv, func in list(mod.functions_items()):
        param = _elementwise_group(func) if _primitive(func) else None
        if param is None or not callers.get(gv.name_hint):
            continue
        index = next(i for i, p in enumerate(func.params) if p.same_as(param))
        blocks = []
        for call in callers[gv.name_hint]:
            src = bound.get(call.args[index])
            if not (isinstance(src, relax.Call) and isinstance(src.op, tvm.ir.GlobalVar)):
                break
            result = _blocked_results(mod[src.op]).get(None) if _primitive(mod[src.op]) else None
            if result is None:
                break
            blocks.append(int(result.value.args[0].ty.shape[4]))
        if len(blocks) == len(callers[gv.name_hint]) and len(set(blocks)) == 1:
            originals[gv] = func
            mod[gv] = _blocked_chain(func, param, blocks[0])
    return mod, originals


def hoist_group_layouts():
    """Pass 3 (module doc)."""
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Body(PyExprMutator):
        def __init__(self, hoisted: dict, results: list):  # binding var -> the new parameter
            super().__init__()
            self.hoisted, self.results = hoisted, results

        def visit_var_binding_(self, binding):
            new = next((p for v, p in self.hoisted.items() if v.same_as(binding.var)), None)
            if new is not None:
                self.set_var_remap(binding.var, new)
            elif any(binding.same_as(r) for r in self.results):  # return the blocked tensor itself
                value = self.visit_expr(binding.value.args[0])
                out = relax.Var(binding.var.name, value.ty)
                self.builder_.emit_normalized(relax.VarBinding(out, value))
                self.set_var_remap(binding.var, out)
            else:
                super().visit_var_binding_(binding)

    @mutator
    class _Calls(PyExprMutator):
        def __init__(self, mod, moved: dict):  # function name -> (new gvar, {index: binding})
            super().__init__(mod)
            self.moved = moved

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if not isinstance(call.op, tvm.ir.GlobalVar) or call.op.name_hint not in self.moved:
                return call
            gv, hoisted, result = self.moved[call.op.name_hint]
            args = list(call.args)
            for i, b in hoisted.items():
                # a group's blocked result going into a group that blocks it again: that tensor
                inner = self.lookup_binding(args[i]) if isinstance(args[i], relax.Var) else None
                if _is_layout_transform(b.value) and _undoes(b.value.attrs.index_map, b.var.ty, inner):
                    args[i] = inner.args[0]
                else:
                    args[i] = _apply(b.value, args[i])
            out = relax.Call(gv, args)
            return out if None not in result else _apply(result[None].value, out)

        def visit_tuple_getitem_(self, op):
            op = self.visit_expr_post_order(op)
            call = self.lookup_binding(op.tuple_value) if isinstance(op.tuple_value, relax.Var) else None
            if isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.GlobalVar):
                sunk = self.moved.get(call.op.name_hint, (None, None, {}))[2].get(int(op.index))
                if sunk is not None:  # the field is blocked now: its transform moves here
                    return _apply(sunk.value, op)
            return op

    @tvm.transform.module_pass(opt_level=0, name="HoistLayoutsOutOfGroups")
    def _pass(mod, _ctx):
        callers = _callers(mod)
        mod, blocked = _block_elementwise_groups(mod, callers)
        while True:  # an elementwise group stays blocked only if both its transforms move out
            hoists, results = _boundaries(mod, callers)
            undo = [
                gv
                for gv in blocked
                if not (hoists.get(gv.name_hint) and None in results.get(gv.name_hint, {}))
            ]
            for gv in undo:
                mod[gv] = blocked.pop(gv)
            if not undo:
                break
        funcs, moved = {}, {}
        for gv, func in mod.functions_items():
            if not _primitive(func):
                continue
            hoisted, result = hoists.get(gv.name_hint, {}), results.get(gv.name_hint, {})
            if not hoisted and not result:
                continue
            params = list(func.params)
            for i, b in hoisted.items():
                params[i] = relax.Var(params[i].name, b.var.ty)
            readers = {b.var: params[i] for i in hoisted for b in _readers(func, func.params[i])}
            body = _Body(readers, list(result.values())).visit_expr(func.body)
            ret = body.body.ty if result else func.ret_ty
            funcs[gv] = relax.Function(params, body, ret, func.is_pure, func.attrs)
            new = tvm.ir.GlobalVar(gv.name_hint)
            tvm.get_global_func("relax.UpdateType")(new, funcs[gv].ty)  # callers type-check on it
            moved[gv.name_hint] = (new, hoisted, result)
        if not moved:
            return mod
        mod = tvm.IRModule(
            {
                (moved[gv.name_hint][0] if gv in funcs else gv): funcs.get(gv, f)
                for gv, f in mod.functions_items()
            },
            attrs=mod.attrs,
            global_infos=mod.global_infos,
        )
        calls = _Calls(mod, moved)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function) and gv.name_hint not in moved:
                calls.builder_.update_func(gv, calls.visit_expr(func))
        return calls.builder_.get()

    return _pass


# ---- pass 4: weights transformed at build time ---------------------------------------------
def _eval_index(expr, env: dict):
    """A TIR index expression (vars, constants, + - * // %) on numpy index grids."""
    tirx = tvm.tirx
    if isinstance(expr, tvm.ir.expr.Var):
        return env[expr.name]
    if isinstance(expr, tirx.IntImm):
        return int(expr.value)
    ops = {
        tirx.Add: np.add,
        tirx.Sub: np.subtract,
        tirx.Mul: np.multiply,
        tirx.FloorDiv: np.floor_divide,
        tirx.FloorMod: np.mod,
    }
    for kind, fn in ops.items():
        if isinstance(expr, kind):
            return fn(_eval_index(expr.a, env), _eval_index(expr.b, env))
    raise NotImplementedError(type(expr).__name__)


def transform_constant(array: np.ndarray, index_map) -> np.ndarray | None:
    """``array`` moved by a layout_transform's ``index_map`` (no padding), or None when the
    map uses more than + - * // %."""
    grids = np.indices(array.shape, sparse=True)
    env = {str(v.name): g for v, g in zip(index_map.initial_indices, grids)}
    try:
        where = [_eval_index(e, env) for e in index_map.final_indices]
    except NotImplementedError:
        return None
    shape = [int(d) for d in index_map.map_shape(list(array.shape))]
    out = np.empty(shape, array.dtype)
    out[tuple(np.broadcast_arrays(*where))] = array
    return out


def _prepack(call):
    if call.op.name != "relax.layout_transform" or not isinstance(call.args[0], tvm.ir.expr.Constant):
        return None
    if call.attrs.pad_value is not None:
        return None
    array = call.args[0].value.numpy()
    index_map = call.attrs.index_map
    if int(np.prod(index_map.map_shape(list(array.shape)))) != array.size:  # padded
        return None
    out = transform_constant(array, index_map)
    return None if out is None else relax_const(out)  # relax.const would narrow float64


def layout_passes(target) -> list:
    """Passes 1-4 (module doc) for an llvm target."""
    require_tvm()
    from .schedules.common import cpu_facts

    lanes = cpu_facts(target).lanes

    @tvm.transform.module_pass(opt_level=0, name="FuserConvertLayout")
    def convert_layout(mod, ctx):
        cb = make_layout_cb(lanes, group_limits(mod, lanes))
        mod = _call_mutator("PlainPointwiseAsMatmul", lambda call: _pointwise_as_matmul(call, cb))(mod)
        return relax.transform.ConvertLayout({}, cb)(mod)

    return [
        sink_row_reshapes(),
        relax.transform.Normalize(),
        _call_mutator("RewriteForLayout", _rewrite_for_layout),
        relax.transform.Normalize(),
        _call_mutator("PadOutChannels", lambda call: _padded_out_channels(call, lanes)),
        relax.transform.Normalize(),
        sink_channel_slices(),
        relax.transform.Normalize(),
        convert_layout,
        relax.transform.Normalize(),
        transforms_before_epilogues(),
        hoist_group_layouts(),
        _call_mutator("PrepackWeights", _prepack),
    ]


# ---- legalization ---------------------------------------------------------------------------
_BLOCKED = re.compile(r"^NCHW(\d+)c$")


def _padded_window(data, kh: int, kw: int, strides, padding, dilation):
    """(data padded in H and W, output height, output width) of a KHxKW window over a blocked
    NCHW[x]c ``data``."""
    _, _, ih, iw, _ = (int(d) for d in data.shape)
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = strides, dilation, padding
    oh = (ih + pt + pb - (kh - 1) * dh - 1) // sh + 1
    ow = (iw + pl + pr - (kw - 1) * dw - 1) // sw + 1
    if pt or pl or pb or pr:
        data = tvm.topi.nn.pad(data, [0, 0, pt, pl, 0], [0, 0, pb, pr, 0], name="data_pad")
    return data, oh, ow


def conv2d_nchwc(data, kernel, strides, padding, dilation, groups=1):
    """data [N, Cc, H, W, cb], kernel [Oc, Cc/groups, KH, KW, cb, ob] -> [N, Oc, OH, OW, ob];
    output chunk oc reads the input chunks of its group."""
    te = tvm.te
    n, icb = int(data.shape[0]), int(data.shape[4])
    occ, icc_g, kh, kw, _, ocb = (int(d) for d in kernel.shape)
    oc_per_group = occ // groups
    (sh, sw), (dh, dw) = strides, dilation
    data, oh, ow = _padded_window(data, kh, kw, strides, padding, dilation)
    rco = te.reduce_axis((0, icc_g), "rco")
    rkh = te.reduce_axis((0, kh), "rkh")
    rkw = te.reduce_axis((0, kw), "rkw")
    rci = te.reduce_axis((0, icb), "rci")

    def chunk(oc):
        return (oc // oc_per_group) * icc_g + rco if groups > 1 else rco

    return te.compute(
        (n, occ, oh, ow, ocb),
        lambda b, oc, y, x, ob: te.sum(
            data[b, chunk(oc), y * sh + rkh * dh, x * sw + rkw * dw, rci]
            * kernel[oc, rco, rkh, rkw, rci, ob],
            axis=[rco, rkh, rkw, rci],
        ),
        name="conv2d_nchwc",
    )


def depthwise_nchwc(data, kernel, strides, padding, dilation):
    """data [N, Cc, H, W, cb], kernel [Cc, 1, KH, KW, cb] -> [N, Cc, OH, OW, cb]."""
    te = tvm.te
    n, cc, _, _, cb = (int(d) for d in data.shape)
    kh, kw = (int(d) for d in kernel.shape[2:4])
    (sh, sw), (dh, dw) = strides, dilation
    data, oh, ow = _padded_window(data, kh, kw, strides, padding, dilation)
    rkh = te.reduce_axis((0, kh), "rkh")
    rkw = te.reduce_axis((0, kw), "rkw")
    return te.compute(
        (n, cc, oh, ow, cb),
        lambda b, c, y, x, k: te.sum(
            data[b, c, y * sh + rkh * dh, x * sw + rkw * dw, k] * kernel[c, 0, rkh, rkw, k], axis=[rkh, rkw]
        ),
        name="depthwise_nchwc",
    )


def _legalize_conv2d(bb, call):
    a = call.attrs
    if not _BLOCKED.match(a.data_layout) or not _BLOCKED.match(a.out_layout):
        from tvm.relax.transform.legalize_ops.nn import _nn_conv2d

        return _nn_conv2d(bb, call)
    args = {
        "strides": [int(s) for s in a.strides],
        "padding": [int(p) for p in a.padding],
        "dilation": [int(d) for d in a.dilation],
    }
    x, w = call.args
    if len(w.ty.shape) == 6:
        return bb.call_te(conv2d_nchwc, x, w, groups=int(a.groups), primfunc_name_hint="conv2d_nchwc", **args)
    return bb.call_te(depthwise_nchwc, x, w, primfunc_name_hint="dwconv_nchwc", **args)


def _fast(name: str, fn):
    def legalize(bb, call):
        return bb.call_te(fn, call.args[0], primfunc_name_hint=name)

    return legalize


def fast_math() -> dict:
    """LegalizeOps entries: softmax, exp, sigmoid, tanh, erf and GELU through topi's
    fast_softmax, fast_exp, fast_tanh and fast_erf (relative error ~1e-7 on float32)."""
    te, topi = tvm.te, tvm.topi

    def sigmoid(x):
        one = tvm.tirx.const(1.0, x.dtype)
        e = topi.fast_exp(te.compute(x.shape, lambda *i: -x(*i), name="neg"))
        return te.compute(x.shape, lambda *i: one / (one + e(*i)), name="sigmoid")

    def gelu(x):
        half, root = tvm.tirx.const(0.5, x.dtype), tvm.tirx.const(0.7071067811865476, x.dtype)
        erf = topi.fast_erf(te.compute(x.shape, lambda *i: x(*i) * root, name="scaled"))
        return te.compute(
            x.shape, lambda *i: half * x(*i) * (tvm.tirx.const(1.0, x.dtype) + erf(*i)), name="gelu"
        )

    def softmax(bb, call):
        return bb.call_te(
            topi.nn.fast_softmax, call.args[0], int(call.attrs.axis), primfunc_name_hint="softmax"
        )

    return {
        "relax.nn.softmax": softmax,
        "relax.exp": _fast("fast_exp", topi.fast_exp),
        "relax.tanh": _fast("fast_tanh", topi.fast_tanh),
        "relax.erf": _fast("fast_erf", topi.fast_erf),
        "relax.sigmoid": _fast("sigmoid", sigmoid),
        "relax.nn.gelu": _fast("gelu", gelu),
    }


def legalize_map() -> dict:
    """LegalizeOps' customize_legalize_map for CPU builds with fuser's schedules."""
    return {"relax.nn.conv2d": _legalize_conv2d, **fast_math()}
