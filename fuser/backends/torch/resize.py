"""Torch implementations of Resize/Upsample (with ONNX's coordinate and rounding rules exactly)
and GridSample."""

from __future__ import annotations

from functools import partial, reduce

import numpy as np
import torch
import torch.nn.functional as F

from fuser.ir import FuserError, Node
from fuser.ir.ops import register

from .context import (
    Op,
    bcast_view,
    cached,
)


def _round_half_away(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _src_coords(
    ctm: str, out_len: int, in_len: int, scale: np.float32, roi: tuple[float, float]
) -> np.ndarray:
    """Output index -> input coordinate, in float32 as ORT computes it."""
    f = np.float32
    x = np.arange(out_len, dtype=f)
    if ctm == "half_pixel":
        return (x + f(0.5)) / scale - f(0.5)
    if ctm == "pytorch_half_pixel":
        return (x + f(0.5)) / scale - f(0.5) if out_len > 1 else np.zeros_like(x)
    if ctm == "align_corners":
        return np.zeros_like(x) if out_len == 1 else x * f(in_len - 1) / f(out_len - 1)
    if ctm == "asymmetric":
        return x / scale
    if ctm == "tf_half_pixel_for_nn":
        return (x + f(0.5)) / scale
    if ctm == "half_pixel_symmetric":
        adj = f(out_len) / (scale * f(in_len))
        offset = f(in_len) / f(2) * (f(1) - adj)
        return offset + (x + f(0.5)) / scale - f(0.5)
    if ctm == "tf_crop_and_resize":
        s, e = f(roi[0]), f(roi[1])
        if out_len == 1:
            return np.full_like(x, f(0.5) * (s + e) * f(in_len - 1))
        return s * f(in_len - 1) + x * (e - s) * f(in_len - 1) / f(out_len - 1)
    raise FuserError(f"Resize coordinate_transformation_mode '{ctm}' is not supported")


def _nearest_index(x: np.ndarray, nmode: str, scale: float) -> np.ndarray:
    if nmode == "simple":  # Upsample and Resize-10: ceil when downsampling, else truncate
        return np.ceil(x) if scale < 1 else np.trunc(x)
    if nmode == "floor":
        return np.floor(x)
    if nmode == "ceil":
        return np.ceil(x)
    half = x == np.floor(x) + np.float32(0.5)
    if nmode == "round_prefer_floor":
        return np.where(half, np.floor(x), _round_half_away(x))
    if nmode == "round_prefer_ceil":
        return np.where(half, np.ceil(x), _round_half_away(x))
    raise FuserError(f"Resize nearest_mode '{nmode}' is not supported")


def _cubic_coeffs(r: np.ndarray, a: float) -> list[np.ndarray]:
    r = r.astype(np.float64)
    return [
        ((a * (r + 1) - 5 * a) * (r + 1) + 8 * a) * (r + 1) - 4 * a,
        ((a + 2) * r - (a + 3)) * r * r + 1,
        ((a + 2) * (1 - r) - (a + 3)) * (1 - r) * (1 - r) + 1,
        ((a * (2 - r) - 5 * a) * (2 - r) + 8 * a) * (2 - r) - 4 * a,
    ]


def _axis_taps(cfg: dict, in_len: int, out_len: int, scale: np.float32, roi):
    """(indices list, weights list or None, valid mask or None) for one resized axis."""
    x = _src_coords(cfg["ctm"], out_len, in_len, scale, roi)
    valid = None
    if cfg["ctm"] == "tf_crop_and_resize":
        valid = (x >= 0) & (x <= in_len - 1)
    last = in_len - 1
    if cfg["mode"] == "nearest":
        idx = np.clip(_nearest_index(x, cfg["nmode"], scale), 0, last).astype(np.int64)
        return [idx], None, valid
    if cfg["mode"] == "linear":
        xc = np.clip(x, 0, last)
        i0 = np.minimum(np.floor(xc).astype(np.int64), last)
        w1 = xc - i0
        return [i0, np.minimum(i0 + 1, last)], [1 - w1, w1], valid
    fl = np.floor(x)
    taps = [fl.astype(np.int64) + o for o in (-1, 0, 1, 2)]
    w = _cubic_coeffs(x - fl, cfg["a"])
    if cfg["exclude_outside"]:
        w = [wi * ((t >= 0) & (t <= last)) for wi, t in zip(w, taps)]
        total = sum(w)
        w = [wi / total for wi in w]
    return [np.clip(t, 0, last) for t in taps], w, valid


def _resize_config(c: Op) -> dict:
    legacy = c.op == "Upsample" or c.opset < 11
    mode = c.attr("mode", "nearest").lower()
    mode = {"bilinear": "linear", "trilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    if mode not in ("nearest", "linear", "cubic"):
        raise c.fail(f"Resize mode '{mode}' is not supported")
    return {
        "mode": mode,
        "legacy": legacy,
        "ctm": ("asymmetric" if legacy else c.attr("coordinate_transformation_mode", "half_pixel")),
        "nmode": "simple" if legacy else c.attr("nearest_mode", "round_prefer_floor"),
        "a": c.attr("cubic_coeff_a", -0.75),
        "exclude_outside": c.attr("exclude_outside", 0),
        "extrapolation": c.attr("extrapolation_value", 0.0),
    }


def _resize_targets(c: Op, in_shape, roi, scales, sizes):
    """Per-axis (out_len, float32 scale, roi) for all axes."""
    f = np.float32
    rank = len(in_shape)
    axes = [a % rank for a in (c.attr("axes") or range(rank))]
    outs, sc = list(in_shape), [f(1.0)] * rank
    rois = [(0.0, 1.0)] * rank
    if roi is not None and roi.size:
        r = roi.reshape(-1)
        for i, a in enumerate(axes):
            rois[a] = (float(r[i]), float(r[len(axes) + i]))
    if sizes is not None and sizes.size:
        sizes = [int(v) for v in sizes.reshape(-1)]
        policy = c.attr("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            ratios = [f(s) / f(in_shape[a]) for s, a in zip(sizes, axes)]
            common = min(ratios) if policy == "not_larger" else max(ratios)
            sizes = [int(_round_half_away(np.array(common * f(in_shape[a])))) for a in axes]
        for s, a in zip(sizes, axes):
            outs[a] = s
            sc[a] = common if policy != "stretch" else f(s) / f(in_shape[a])
    elif scales is not None and scales.size:
        for s, a in zip(scales.reshape(-1).astype(f), axes):
            sc[a] = s
            length = f(in_shape[a])
            if c.attr("coordinate_transformation_mode") == "tf_crop_and_resize":
                length = length * f(rois[a][1] - rois[a][0])
            outs[a] = int(s * length)
    else:
        raise c.fail("Resize needs scales or sizes")
    return outs, sc, rois


def _resize(c: Op, x, *args):
    cfg = c.cache.get("cfg") or c.cache.setdefault("cfg", _resize_config(c))
    if c.op == "Upsample":
        scales = c.array(1, args[0]) if c.opset >= 9 else np.asarray(c.attr("scales"), np.float32)
        roi = sizes = None
    elif c.opset < 11:
        roi, scales, sizes = None, c.array(1, args[0]), None
    else:

        def get(i):
            return c.array(i, args[i - 1]) if len(args) >= i else None

        roi, scales, sizes = get(1), get(2), get(3)
    key = (
        tuple(x.shape),
        x.device,
        x.dtype,
        None if c.const(2) is not None or scales is None else scales.tobytes(),
        None if c.const(3) is not None or sizes is None else sizes.tobytes(),
    )
    plan = cached(c, key, partial(_resize_plan, c, cfg, x, roi, scales, sizes))
    if plan[0] == "interp":
        return F.interpolate(x, **plan[1])
    for axis, idxs, ws, valid in plan[1]:
        if ws is None:
            y = x.index_select(axis, idxs[0])
        else:
            y = reduce(torch.add, [x.index_select(axis, i) * w for i, w in zip(idxs, ws)])
        if valid is not None:
            fill = torch.tensor(cfg["extrapolation"], dtype=y.dtype, device=y.device)
            y = torch.where(valid, y, fill)
        x = y
    return x


def _resize_plan(c: Op, cfg: dict, x, roi, scales, sizes):
    in_shape = list(x.shape)
    rank = len(in_shape)
    outs, sc, rois = _resize_targets(c, in_shape, roi, scales, sizes)
    if c.attr("antialias", 0) and cfg["mode"] != "nearest" and any(s < 1 for s in sc):
        raise c.fail("Resize with antialias when downsampling is not supported")
    changed = [
        a for a in range(rank) if outs[a] != in_shape[a] or sc[a] != 1 or cfg["ctm"] == "tf_crop_and_resize"
    ]
    ctm = cfg["ctm"]
    if (
        cfg["mode"] == "linear"
        and rank == 4
        and set(changed) <= {2, 3}
        and changed
        and x.dtype.is_floating_point
        and (
            ctm == "align_corners"
            or (
                ctm in ("half_pixel", "pytorch_half_pixel")
                and min(outs[2:]) > 1
                and sizes is not None
                and sizes.size
            )
        )
    ):
        return "interp", {"size": outs[2:], "mode": "bilinear", "align_corners": ctm == "align_corners"}
    steps = []
    for a in changed:
        idxs, ws, valid = _axis_taps(cfg, in_shape[a], outs[a], sc[a], rois[a])
        idxs = [torch.from_numpy(np.ascontiguousarray(i)).to(x.device) for i in idxs]
        if ws is not None:
            ws = [bcast_view(torch.from_numpy(np.asarray(w)).to(x.device, x.dtype), a, rank) for w in ws]
        if valid is not None:
            valid = bcast_view(torch.from_numpy(valid).to(x.device), a, rank)
        steps.append((a, idxs, ws, valid))
    return "axes", steps


def _check_resize(c: Op, node: Node):
    cfg = _resize_config(c)
    _src_coords(cfg["ctm"], 1, 1, np.float32(1), (0.0, 1.0))
    _nearest_index(np.zeros(1, np.float32), cfg["nmode"], 1.0)
    if c.attr("antialias", 0) and cfg["mode"] != "nearest":
        x, y = node.inputs[0], node.outputs[0]
        if (
            x.shape is None
            or y.shape is None
            or any(isinstance(o, int) and o < i for i, o in zip(x.shape, y.shape))
        ):
            raise c.fail("antialias when downsampling is not supported")


_GRID_MODES = {"linear": "bilinear", "bilinear": "bilinear", "nearest": "nearest", "cubic": "bicubic"}
_GRID_MODES["bicubic"] = "bicubic"  # GridSample-16 names


def _grid_sample(c: Op, x, grid):
    return F.grid_sample(
        x,
        grid.to(x.dtype),
        mode=_GRID_MODES[c.attr("mode", "linear")],
        padding_mode=c.attr("padding_mode", "zeros"),
        align_corners=bool(c.attr("align_corners", 0)),
    )


def _check_grid_sample(c: Op, node: Node):
    x = node.inputs[0]
    mode = c.attr("mode", "linear")
    if mode not in _GRID_MODES or c.attr("padding_mode", "zeros") not in ("zeros", "border", "reflection"):
        raise c.fail(f"mode '{mode}' / padding_mode '{c.attr('padding_mode')}' is not supported")
    if x.dtype is None or x.dtype.kind != "f" or len(x.shape) not in (4, 5):
        raise c.fail("only floating-point 4-d and 5-d inputs are supported")
    if len(x.shape) == 5 and _GRID_MODES[mode] == "bicubic":
        raise c.fail("cubic sampling of 5-d inputs is not supported")


register("torch", "GridSample", _grid_sample)
register("torch.check", "GridSample", _check_grid_sample)
register("torch", "Resize", _resize)
register("torch", "Upsample", _resize)
register("torch.check", "Resize", _check_resize)
register("torch.check", "Upsample", _check_resize)
