"""The fused kernel's tile schedule executed on the CPU in numpy.

``run_schedule(schedule, x)`` walks the same CUDA blocks in the same order as the
kernel (``schedule.tile_of``), loads the same input region with its halo
(``schedule.x_region``, zeros outside the image), produces the hidden map in the
same chunks, zeroes intermediates outside the image where the kernel does, adds
the residual from the same shared-memory tile position and stores only the
in-image part of each output tile. Each step names the kernel function it
mirrors (fuser.blockfusion.cuda_templates). Only the arithmetic inside a tile is
vectorised (a numpy matmul where the kernel runs mma fragments).

precision "fp32": fp32 weights and storage, to match the unfused block exactly
(up to summation order). "fp16": the kernel's numerics: fp16 input, weights and
intermediate maps, fp32 accumulation, fp16 output.
"""

from __future__ import annotations

import numpy as np

from .schedule import BlockSchedule, Region
from .spec import activate


def _to_fp16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).astype(np.float32)


def _keep(a: np.ndarray) -> np.ndarray:
    return a


def load_region(img: np.ndarray, region: Region, oy0: int, ox0: int, c_pad: int) -> np.ndarray:
    """load_region: image [H, W, C] → region [h, w, c_pad], zeros outside the image and past C."""
    y0, x0 = region.origin(oy0, ox0)
    h, w, c = img.shape
    out = np.zeros((region.h, region.w, c_pad), np.float32)
    ya, yb, xa, xb = max(y0, 0), min(y0 + region.h, h), max(x0, 0), min(x0 + region.w, w)
    if ya < yb and xa < xb:
        out[ya - y0 : yb - y0, xa - x0 : xb - x0, :c] = img[ya:yb, xa:xb]
    return out


def mask_outside(m: np.ndarray, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """store_map's zeroing: map pixel (i, j) is image pixel (y0 + i, x0 + j); outside h × w → 0."""
    rows = np.arange(m.shape[0]) + y0
    cols = np.arange(m.shape[1]) + x0
    inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
    return m * inside[:, :, None]


def conv_taps(
    a: np.ndarray, out_h: int, out_w: int, k: int, s: int, origin: tuple[int, int], w: np.ndarray
) -> np.ndarray:
    """conv_mma_job: out[py, px, n] = Σ_tap,c a[oy + py·s + ky, ox + px·s + kx, c] · w[n, tap, c]."""
    w = w.reshape(w.shape[0], k * k, -1).astype(np.float32)
    cin = w.shape[2]
    oy, ox = origin
    out = np.zeros((out_h, out_w, w.shape[0]), np.float32)
    for tap in range(k * k):
        ky, kx = divmod(tap, k)
        patch = a[
            oy + ky : oy + ky + (out_h - 1) * s + 1 : s, ox + kx : ox + kx + (out_w - 1) * s + 1 : s, :cin
        ]
        out += patch @ w[:, tap, :].T
    return out


def grouped_conv(
    a: np.ndarray,
    out_h: int,
    out_w: int,
    k: int,
    s: int,
    gw_in: int,
    gw_out: int,
    w: np.ndarray,
    bias: np.ndarray,
    c_valid: int,
    act: str,
) -> np.ndarray:
    """grouped_conv_fma: out[py, px, c] = act(bias[c] + Σ a[py·s + ky, px·s + kx, (c / gw_out)·gw_in + j]
    · w[c, tap, j]) for c < c_valid, 0 beyond."""
    c_count = w.shape[0]
    c = np.arange(c_count)
    idx = np.minimum((c // gw_out)[:, None] * gw_in + np.arange(gw_in)[None, :], a.shape[2] - 1)
    out = np.zeros((out_h, out_w, c_count), np.float32)
    for tap in range(k * k):
        ky, kx = divmod(tap, k)
        patch = a[ky : ky + (out_h - 1) * s + 1 : s, kx : kx + (out_w - 1) * s + 1 : s, :]
        out += np.einsum("yxcj,cj->yxc", patch[:, :, idx], w[:, tap, :].astype(np.float32))
    out = activate(out + bias, act)
    out[:, :, c_valid:] = 0
    return out


def _epilogue_map(
    acc: np.ndarray,
    bias: np.ndarray,
    act: str,
    n_valid: int,
    origin: tuple[int, int],
    image: tuple[int, int],
    q,
) -> np.ndarray:
    """store_map: act(acc + bias), 0 for channels ≥ n_valid and pixels outside the image, stored fp16."""
    v = activate(acc + bias, act)
    v[:, :, n_valid:] = 0
    return q(mask_outside(v, *origin, *image))


def _convfirst_tile(s: BlockSchedule, wts: dict, img: np.ndarray, oy0: int, ox0: int, q) -> np.ndarray:
    spec = s.spec
    sp, ex, _ = spec.layers
    th, tw, hc = s.tile_h, s.tile_w, s.hidden_chunk
    x_tile = load_region(img, s.x_region, oy0, ox0, s.c_in_p)
    # grouped_conv_mma_job / grouped_conv_fma: the same sums (the mma's padded K has zero weights)
    taps = sp.kernel**2
    w_spatial = (
        wts["w_spatial"].reshape(s.c_in_p, -1)[:, : taps * sp.group_width_in].reshape(s.c_in_p, taps, -1)
    )
    spatial = q(
        grouped_conv(
            x_tile,
            th,
            tw,
            sp.kernel,
            1,
            sp.group_width_in,
            sp.group_width_out,
            w_spatial,
            wts["b_spatial"],
            spec.c_in,
            sp.activation,
        )
    )
    acc = np.zeros((th, tw, s.c_out_p), np.float32)
    for h0 in range(0, s.hidden_p, hc):
        e = conv_taps(spatial, th, tw, 1, 1, (0, 0), wts["w_expand"][h0 : h0 + hc])
        hidden = _epilogue_map(
            e, wts["b_expand"][h0 : h0 + hc], ex.activation, s.hidden - h0, (oy0, ox0), spec.out_hw, q
        )
        acc += conv_taps(hidden, th, tw, 1, 1, (0, 0), wts["w_project"][:, h0 : h0 + hc])
    return _epilogue_output(s, acc + wts["b_project"], x_tile)


def _mbconv_tile(s: BlockSchedule, wts: dict, img: np.ndarray, oy0: int, ox0: int, q) -> np.ndarray:
    spec = s.spec
    ex, dw = spec.layer("expand"), spec.layer("depthwise")
    th, tw, hc, xr = s.tile_h, s.tile_w, s.hidden_chunk, s.x_region
    x_tile = load_region(img, xr, oy0, ox0, s.c_in_p)
    acc = np.zeros((th, tw, s.c_out_p), np.float32)
    for h0 in range(0, s.hidden_p, hc):
        if ex is not None:  # the whole region, halo included; zero outside the image for the depthwise
            e = conv_taps(x_tile, xr.h, xr.w, 1, 1, (0, 0), wts["w_expand"][h0 : h0 + hc])
            hidden = _epilogue_map(
                e,
                wts["b_expand"][h0 : h0 + hc],
                ex.activation,
                s.hidden - h0,
                xr.origin(oy0, ox0),
                spec.in_hw,
                q,
            )
        else:
            hidden = x_tile[:, :, h0 : h0 + hc]
        dw_out = q(
            grouped_conv(
                hidden,
                th,
                tw,
                dw.kernel,
                dw.stride,
                1,
                1,
                wts["w_depthwise"][h0 : h0 + hc],
                wts["b_depthwise"][h0 : h0 + hc],
                s.hidden - h0,
                dw.activation,
            )
        )
        acc += conv_taps(dw_out, th, tw, 1, 1, (0, 0), wts["w_project"][:, h0 : h0 + hc])
    return _epilogue_output(s, acc + wts["b_project"], x_tile)


def _resnet_basic_tile(s: BlockSchedule, wts: dict, img: np.ndarray, oy0: int, ox0: int, q) -> np.ndarray:
    spec = s.spec
    c1, c2 = spec.layers
    xr, mr = s.x_region, s.mid_region
    x_tile = load_region(img, xr, oy0, ox0, s.c_in_p)
    a = conv_taps(x_tile, mr.h, mr.w, c1.kernel, c1.stride, (0, 0), wts["w_conv1"])
    # conv1's output outside the image is conv2's zero padding
    mid = _epilogue_map(a, wts["b_conv1"], c1.activation, c1.c_out, mr.origin(oy0, ox0), spec.out_hw, q)
    acc = conv_taps(mid, s.tile_h, s.tile_w, c2.kernel, 1, (0, 0), wts["w_conv2"])
    if spec.residual == "projection":
        acc += conv_taps(
            x_tile, s.tile_h, s.tile_w, 1, c1.stride, (-xr.offset_y, -xr.offset_x), wts["w_shortcut"]
        )
    return _epilogue_output(s, acc + wts["b_conv2"], x_tile)


def _epilogue_output(s: BlockSchedule, v: np.ndarray, x_tile: np.ndarray) -> np.ndarray:
    """store_output: + the identity residual read from the x tile, then the final activation."""
    if s.spec.residual == "identity":
        r = s.x_region
        ry, rx = -r.offset_y, -r.offset_x
        v = (
            v
            + x_tile[
                ry : ry + s.tile_h * r.scale : r.scale, rx : rx + s.tile_w * r.scale : r.scale, : v.shape[2]
            ]
        )
    return activate(v, s.spec.final_activation)


TILE_BODIES = {"convfirst": _convfirst_tile, "mbconv": _mbconv_tile, "resnet_basic": _resnet_basic_tile}


def run_schedule(schedule: BlockSchedule, x: np.ndarray, precision: str = "fp32") -> np.ndarray:
    """The block's output for ``x`` (N, C, H, W), computed tile by tile as the kernel does."""
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be 'fp32' or 'fp16', not {precision!r}")
    spec = schedule.spec
    if tuple(x.shape) != spec.input_shape:
        raise ValueError(f"input shape {tuple(x.shape)} != the block's {spec.input_shape}")
    q = _to_fp16 if precision == "fp16" else _keep
    wts = {
        name: a.astype(np.float32)
        for name, a in schedule.packed_weights(np.float16 if precision == "fp16" else np.float32)
    }
    img = q(np.ascontiguousarray(x.transpose(0, 2, 3, 1), dtype=np.float32))
    ho, wo = spec.out_hw
    y = np.zeros((spec.batch, ho, wo, spec.c_out), np.float32)
    body = TILE_BODIES[spec.kind]
    for block in range(schedule.grid):
        n, oy0, ox0 = schedule.tile_of(block)
        tile = body(schedule, wts, img[n], oy0, ox0, q)
        h, w = min(schedule.tile_h, ho - oy0), min(schedule.tile_w, wo - ox0)
        y[n, oy0 : oy0 + h, ox0 : ox0 + w] = q(tile[:h, :w, : spec.c_out])
    return y.transpose(0, 3, 1, 2)
