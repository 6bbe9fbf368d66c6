"""Relax converters for data movement: reshapes, transposes, concat/split, slicing, Resize, Pad."""

from __future__ import annotations

import numpy as np

from fuser.ir.ops import implements

from ..common import R, relax, topi
from .context import Lowering


@implements("relax", "Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _to_out_shape(c: Lowering, x, *_):
    """Reshape/Flatten/Squeeze/Unsqueeze: the output's static shape says it all."""
    return R.reshape(x, c.out_shape)


@implements("relax", "Expand")
def _expand(c: Lowering, x, *_):
    return R.broadcast_to(x, c.out_shape)


@implements("relax", "Transpose")
def _transpose(c: Lowering, x):
    return R.permute_dims(x, c.attr("perm", list(range(c.rank))[::-1]))


@implements("relax", "Concat")
def _concat(c: Lowering, *xs):
    return R.concat([x for x in xs if x is not None], c.attr("axis"))


@implements("relax", "Split")
def _split(c: Lowering, x, *_):
    axis = c.attr("axis", 0) % c.rank
    sizes = [int(o.shape[axis]) for o in c.node.outputs]
    parts = c.bb.emit(R.split(x, list(np.cumsum(sizes)[:-1].tolist()), axis))
    return [relax.TupleGetItem(parts, i) for i in range(len(sizes))]


@implements("relax", "Slice")
def _slice(c: Lowering, x, *_):
    if "starts" in c.node.attrs:  # opset < 10
        starts, ends = c.attr("starts"), c.attr("ends")
        axes, steps = c.attr("axes"), None
    else:
        starts, ends, axes, steps = c.ints(1), c.ints(2), c.ints(3), c.ints(4)
    shape = c.node.input(0).shape
    axes = [a % c.rank for a in (axes or range(len(starts)))]
    steps = steps or [1] * len(starts)
    begin, end, stride = [], [], []
    for a, s, e, st in zip(axes, starts, ends, steps):
        lo, hi, st = slice(s, e, st).indices(shape[a])
        if st < 0:
            # strided_slice reads a negative end as "from the back": slice the flipped
            # axis forwards instead (no index array: a plan group may not hold one)
            x = R.flip(x, a)
            lo, hi, st = shape[a] - 1 - lo, shape[a] - 1 - hi, -st
        begin.append(lo), end.append(max(hi, lo)), stride.append(st)
    return R.strided_slice(x, axes, begin, end, stride, assume_inbound=True)


@implements("relax", "Gather")
def _gather(c: Lowering, x, idx):
    axis = c.attr("axis", 0) % c.rank
    n = int(c.node.input(0).shape[axis])
    consts = c.const(1)
    if consts is not None:
        flat = np.where(consts < 0, consts + n, consts).reshape(-1)
        step = int(flat[1] - flat[0]) if flat.size > 1 else 1
        if flat.size and step > 0 and np.array_equal(flat, flat[0] + step * np.arange(flat.size)):
            # constant evenly spaced indices (x[:, 0], a channel range): a strided slice,
            # with no index array (a plan group's function may not hold one)
            y = R.strided_slice(x, [axis], [int(flat[0])], [int(flat[-1]) + 1], [step])
            return R.reshape(y, c.out_shape)
    # wrap: a negative index counts from the back (ONNX), and none reads out of bounds
    return R.reshape(R.take(x, idx, axis, mode="wrap"), c.out_shape)


@implements("relax", "Resize")
def _resize(c: Lowering, x, *_):
    if c.rank != 4:
        raise c.fail("only 4-d (NCHW) Resize is supported")
    if c.out_shape[:2] != list(c.node.input(0).shape[:2]):
        raise c.fail("Resize may only scale the spatial (H, W) axes")
    mode = c.attr("mode", "nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    method = {"nearest": "nearest_neighbor", "linear": "linear", "cubic": "cubic"}.get(mode)
    if method is None:
        raise c.fail(f"mode {mode!r} is not supported")
    ctm = c.attr("coordinate_transformation_mode", "half_pixel")
    nearest = c.attr("nearest_mode", "round_prefer_floor")
    ctm, nearest = (s.decode() if isinstance(s, bytes) else s for s in (ctm, nearest))
    if ctm == "tf_crop_and_resize":
        raise c.fail("coordinate_transformation_mode tf_crop_and_resize is not supported")
    return R.image.resize2d(
        x,
        c.out_shape[2:],
        None,
        "NCHW",
        method,
        ctm,
        nearest if method == "nearest_neighbor" else "",
        float(c.attr("cubic_coeff_a", -0.75)),
        int(c.attr("exclude_outside", 0)),
    )


@implements("relax", "Pad")
def _pad(c: Lowering, x, *_):
    pads = c.ints(1) if c.node.input(1) is not None else list(c.attr("pads"))
    value = c.scalar(2, float(c.attr("value", 0.0)))
    axes = c.ints(3) or list(range(c.rank))
    begin, end = [0] * c.rank, [0] * c.rank
    for i, a in enumerate(axes):
        begin[a % c.rank], end[a % c.rank] = pads[i], pads[i + len(axes)]
    mode = c.attr("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if any(p < 0 for p in begin + end):
        raise c.fail("negative pads (cropping) are not supported")
    if mode == "constant":
        return c.bb.emit_te(topi.nn.pad, x, begin, end, value)
    relax_mode = {"reflect": "reflect", "edge": "replicate"}.get(mode)
    if relax_mode is None:
        raise c.fail(f"pad mode {mode!r} is not supported")
    return R.nn.pad(x, [p for be in zip(begin, end) for p in be], relax_mode)
