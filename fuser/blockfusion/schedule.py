"""The tile schedule of one fused block: the single source of truth for the CUDA
kernel (fuser.blockfusion.cuda emits its numbers as constants) and for the CPU
reference (fuser.blockfusion.reference walks the same tiles).

Geometry. The output (N, C_out, HO, WO) is cut into TILE_H × TILE_W tiles; CUDA
block b computes tile (n, ty, tx) with tx = b mod TX, ty = ⌊b / TX⌋ mod TY,
n = ⌊b / (TX·TY)⌋, output origin (oy0, ox0) = (ty·TILE_H, tx·TILE_W). The tile
reads an input *region* of the block input x (the tile plus its halo),

    y0 = oy0·scale + offset_y,  x0 = ox0·scale + offset_x,  size h × w

  convfirst     scale 1, offset −pad, h = TILE_H + k − 1
  mbconv        scale s, offset −pad, h = (TILE_H − 1)·s + k   (1×1 expand runs on all of it)
  resnet_basic  mid region (conv1's output): scale 1, offset −pad2, h = TILE_H + k2 − 1;
                x region: scale s, offset −pad2·s − pad1, h = (mid_h − 1)·s + k1

Region pixels outside the image are zeros (the convs' zero padding). An
intermediate that a later k×k conv reads (mbconv's hidden map, resnet's mid map)
is zeroed outside the image too: its zero padding applies to it, not to x.
Output pixels past HO/WO are computed and not stored.

Channels are padded to multiples of 16 (the mma K step) with zeros; shared-memory
rows get 8 more halves of skew so the eight rows of an mma fragment land in
different banks. Wide hidden maps are produced and consumed HIDDEN_CHUNK channels
at a time: the 1×1 projection accumulates over chunks in registers.

Choice (``choose_schedule``): every tile with sides in {1, 2, 4, ..., 32} (at most the
map's side rounded up to a power of two, at least 16 pixels unless the map is
smaller), every hidden chunk (a multiple of 16 dividing the padded hidden width, at
most 256) and 4, 8 or 16 warps that fit the device's shared memory per block and
the register budget (accumulators + REGS_OVERHEAD ≤ min(255, 64 K / threads)) are
scored by

    time = max(tensor_flops / (P_tensor·u_tensor) + simt_flops / (P_fp32·u_simt), dram_bytes / B)
           / wave_efficiency

where the flops include the halo recompute and the rows padded to 16; u is the share
of warps (threads) busy when a tile's jobs are dealt round-robin; the DRAM bytes
count each tile's in-image input region (halo re-reads included), the output and
the weights once; wave_efficiency = grid / (waves · SMs · CTAs per SM). The fastest
wins; ties go to the larger tile, then fewer warps. The kernel's __launch_bounds__
asks for the CTAs per SM assumed here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .devices import Device, schedule_target
from .spec import BlockSpec, ConvLayer

MMA_M, MMA_N, MMA_K = 16, 8, 16
SMEM_SKEW = 8  # halves of padding per shared-memory row
MAX_THREAD_REGS = 255
REGS_OVERHEAD = 64  # addresses, fragments and loop state, besides accumulators (ptxas -v)
TILE_SIDES = (1, 2, 4, 8, 16, 32)
WARP_CHOICES = (4, 8, 16)
MAX_HIDDEN_CHUNK = 256


class NoSchedule(ValueError):
    """No tile of this block fits the device's shared memory and registers."""


def pad16(c: int) -> int:
    return -(-c // 16) * 16


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Region:
    """The part of an image one tile reads: origin (oy0·scale + offset_y, ox0·scale + offset_x), h × w."""

    scale: int
    offset_y: int
    offset_x: int
    h: int
    w: int

    def origin(self, oy0: int, ox0: int) -> tuple[int, int]:
        return oy0 * self.scale + self.offset_y, ox0 * self.scale + self.offset_x

    @property
    def pixels(self) -> int:
        return self.h * self.w


@dataclass(frozen=True)
class Gemm:
    """One tensor-core GEMM of a tile: m pixel rows × n_pad channels, reduction k_pad, ``times``
    per tile (once per hidden chunk). Warps take jobs of 16 rows × 8·nfw columns."""

    name: str
    m: int
    n_pad: int
    k_pad: int
    times: int = 1
    fixed_nfw: int = 0  # grouped convs: 1 (each 8-column fragment reads its own group's channels)

    @property
    def nfw(self) -> int:
        """n-fragments (8 columns each) per warp job: 4 when they divide the width, else 2."""
        if self.fixed_nfw:
            return self.fixed_nfw
        return 4 if (self.n_pad // MMA_N) % 4 == 0 else 2

    @property
    def jobs(self) -> int:
        return ceil_div(self.m, MMA_M) * (self.n_pad // (MMA_N * self.nfw))

    @property
    def flops(self) -> int:
        """Executed flops per tile (rows padded to 16)."""
        return 2 * ceil_div(self.m, MMA_M) * MMA_M * self.n_pad * self.k_pad * self.times


@dataclass(frozen=True)
class Buffer:
    name: str
    rows: int
    ld: int  # halves per row (channels + skew)

    @property
    def nbytes(self) -> int:
        return self.rows * self.ld * 2


def _pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows, *a.shape[1:]), a.dtype)
    out[: a.shape[0]] = a
    return out


def _pack_conv(layer: ConvLayer, rows: int, cin: int) -> np.ndarray:
    """[C_out, C_in/g, k, k] → [rows, k², cin]: row n is output channel n, taps outer, channels inner
    (the kernel's B operand / FMA weight order); padding is zeros."""
    w = layer.weight.transpose(0, 2, 3, 1).reshape(layer.c_out, layer.kernel**2, -1)
    out = np.zeros((rows, layer.kernel**2, cin), np.float32)
    out[: layer.c_out, :, : w.shape[2]] = w
    return out


@dataclass(frozen=True)
class BlockSchedule:
    """A tile schedule for ``spec`` on ``target`` (a GPU name of fuser.blockfusion.devices)."""

    spec: BlockSpec = field(compare=False)
    tile_h: int
    tile_w: int
    hidden_chunk: int
    warps: int
    target: str = "h100"

    # ---- sizes --------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def threads(self) -> int:
        return 32 * self.warps

    @property
    def out_h(self) -> int:
        return self.spec.out_hw[0]

    @property
    def out_w(self) -> int:
        return self.spec.out_hw[1]

    @property
    def tiles_y(self) -> int:
        return ceil_div(self.out_h, self.tile_h)

    @property
    def tiles_x(self) -> int:
        return ceil_div(self.out_w, self.tile_w)

    @property
    def grid(self) -> int:
        return self.spec.batch * self.tiles_y * self.tiles_x

    @property
    def tile_pixels(self) -> int:
        return self.tile_h * self.tile_w

    @property
    def c_in_p(self) -> int:
        return pad16(self.spec.c_in)

    @property
    def c_out_p(self) -> int:
        return pad16(self.spec.c_out)

    @property
    def hidden(self) -> int:
        return self.spec.hidden

    @property
    def hidden_p(self) -> int:
        return pad16(self.hidden)

    @property
    def chunks(self) -> int:
        return self.hidden_p // self.hidden_chunk if self.kind != "resnet_basic" else 1

    def tile_of(self, block: int) -> tuple[int, int, int]:
        """CUDA block index → (n, oy0, ox0): the decode the kernel does."""
        tx = block % self.tiles_x
        ty = (block // self.tiles_x) % self.tiles_y
        n = block // (self.tiles_x * self.tiles_y)
        return n, ty * self.tile_h, tx * self.tile_w

    # ---- regions ------------------------------------------------------------------
    @property
    def mid_region(self) -> Region | None:
        """resnet_basic: the part of conv1's output that conv2 reads for one tile."""
        if self.kind != "resnet_basic":
            return None
        c2 = self.spec.layers[1]
        return Region(1, -c2.pad_top, -c2.pad_left, self.tile_h + c2.kernel - 1, self.tile_w + c2.kernel - 1)

    @property
    def x_region(self) -> Region:
        spec = self.spec
        if self.kind == "convfirst":
            layer = spec.layers[0]
            return Region(
                1,
                -layer.pad_top,
                -layer.pad_left,
                self.tile_h + layer.kernel - 1,
                self.tile_w + layer.kernel - 1,
            )
        if self.kind == "mbconv":
            layer = spec.layer("depthwise")
            return Region(
                layer.stride,
                -layer.pad_top,
                -layer.pad_left,
                (self.tile_h - 1) * layer.stride + layer.kernel,
                (self.tile_w - 1) * layer.stride + layer.kernel,
            )
        c1 = spec.layers[0]
        mid = self.mid_region
        s = c1.stride
        return Region(
            s,
            mid.offset_y * s - c1.pad_top,
            mid.offset_x * s - c1.pad_left,
            (mid.h - 1) * s + c1.kernel,
            (mid.w - 1) * s + c1.kernel,
        )

    @property
    def residual_origin(self) -> int:
        """Pixel index in the x region of what output pixel (0, 0) adds (identity or projection):
        x at (oy·scale, ox·scale), i.e. region row −offset_y, column −offset_x."""
        r = self.x_region
        return -r.offset_y * r.w - r.offset_x

    # ---- work -----------------------------------------------------------------------
    @property
    def grouped_layer(self) -> ConvLayer | None:
        return next((layer for layer in self.spec.layers if not layer.is_dense), None)

    @property
    def grouped_on_tensor_cores(self) -> bool:
        """A grouped conv runs as mma when each 8-channel output fragment lies in one group and
        input channels pair up: reduction (tap, channel of the group) padded to 16, e.g. 9·8 = 72
        → 80 for ConvFirst's group width 8 (1.1× the MACs at 15× the FP32 FMA rate). Depthwise
        convs (group width 1) would pad 9 → 16 per output: they stay on FMAs."""
        layer = self.grouped_layer
        return (
            layer is not None
            and self.kind == "convfirst"
            and layer.group_width_out % MMA_N == 0
            and layer.group_width_in % 2 == 0
        )

    @property
    def grouped_k_pad(self) -> int:
        layer = self.grouped_layer
        return pad16(layer.kernel**2 * layer.group_width_in)

    @property
    def gemms(self) -> list[Gemm]:
        spec, m = self.spec, self.tile_pixels
        if self.kind == "resnet_basic":
            c1, c2 = spec.layers
            out = [
                Gemm("conv1", self.mid_region.pixels, pad16(c1.c_out), c1.kernel**2 * self.c_in_p),
                Gemm("conv2", m, self.c_out_p, c2.kernel**2 * pad16(c1.c_out)),
            ]
            if spec.residual == "projection":
                out.append(Gemm("shortcut", m, self.c_out_p, self.c_in_p))
            return out
        out = []
        if self.grouped_on_tensor_cores:
            out.append(Gemm("spatial", m, self.c_in_p, self.grouped_k_pad, fixed_nfw=1))
        if spec.layer("expand") is not None:
            rows = m if self.kind == "convfirst" else self.x_region.pixels
            out.append(Gemm("expand", rows, self.hidden_chunk, self.c_in_p, self.chunks))
        out.append(Gemm("project", m, self.c_out_p, self.hidden_chunk, self.chunks))
        return out

    def gemm(self, name: str) -> Gemm:
        return next(g for g in self.gemms if g.name == name)

    @property
    def simt_flops_per_tile(self) -> int:
        """Grouped / depthwise conv FMAs per tile (×2 flops), when the kernel runs them on CUDA cores."""
        layer = self.grouped_layer
        if layer is None or self.grouped_on_tensor_cores:
            return 0
        return 2 * self.tile_pixels * pad16(layer.c_out) * layer.group_width_in * layer.kernel**2

    @property
    def buffers(self) -> list[Buffer]:
        """Shared memory, in order: the x region, then the kind's intermediates."""
        xr = self.x_region
        out = [Buffer("x_tile", xr.pixels, self.c_in_p + SMEM_SKEW)]
        hc_ld = self.hidden_chunk + SMEM_SKEW
        if self.kind == "convfirst":
            out += [
                Buffer("spatial", self.tile_pixels, self.c_in_p + SMEM_SKEW),
                Buffer("hidden", self.tile_pixels, hc_ld),
            ]
        elif self.kind == "mbconv":
            if self.spec.layer("expand") is not None:
                out.append(Buffer("hidden", xr.pixels, hc_ld))
            out.append(Buffer("dw_out", self.tile_pixels, hc_ld))
        else:
            out.append(Buffer("mid", self.mid_region.pixels, pad16(self.spec.layers[0].c_out) + SMEM_SKEW))
        return out

    @property
    def smem_bytes(self) -> int:
        return sum(b.nbytes for b in self.buffers)

    @property
    def acc_floats(self) -> int:
        """Accumulator registers per thread: the persistent projection tile (convfirst/mbconv)
        plus one job's temporaries."""
        temp = max(g.nfw for g in self.gemms) * 4
        if self.kind == "resnet_basic":
            return temp
        p = self.gemm("project")
        return ceil_div(p.jobs, self.warps) * p.nfw * 4 + temp

    @property
    def regs_estimate(self) -> int:
        return self.acc_floats + REGS_OVERHEAD

    def ctas_per_sm(self, dev: Device) -> int:
        regs = min(MAX_THREAD_REGS, -(-self.regs_estimate // 8) * 8)
        return min(
            dev.smem_per_sm // (self.smem_bytes + 1024),
            dev.max_threads_per_sm // self.threads,
            dev.regs_per_sm // (self.threads * regs),
        )

    def fits(self, dev: Device) -> str:
        """'' when the schedule fits ``dev``, else why not."""
        if self.smem_bytes > dev.smem_per_block:
            return f"{self.smem_bytes} B of shared memory > {dev.smem_per_block}"
        if self.regs_estimate > min(MAX_THREAD_REGS, dev.regs_per_sm // self.threads):
            return f"~{self.regs_estimate} registers per thread at {self.threads} threads"
        if self.ctas_per_sm(dev) < 1:
            return "no CTA fits an SM"
        return ""

    # ---- the model the chooser minimises ---------------------------------------------
    def halo_factor(self) -> float:
        """In-image input pixels all tiles read / pixels of the input: ≥ 1 from the halos."""
        r, (h, w) = self.x_region, self.spec.in_hw

        def covered(size, tile, count, offset, extent):  # Σ over tiles of |[start, start+extent) ∩ [0, size)|
            starts = (t * tile * r.scale + offset for t in range(count))
            return sum(max(0, min(size, s + extent) - max(0, s)) for s in starts)

        rows = covered(h, self.tile_h, self.tiles_y, r.offset_y, r.h)
        cols = covered(w, self.tile_w, self.tiles_x, r.offset_x, r.w)
        return rows * cols / (h * w)

    def weight_elements(self) -> int:
        return sum(layer.weight.size + layer.bias.size for layer in self.spec.all_layers())

    def dram_bytes(self, elem_bytes: int = 2) -> int:
        """Input with halo re-reads, output, weights once (fp16 storage)."""
        spec = self.spec
        x = spec.batch * spec.c_in * spec.in_hw[0] * spec.in_hw[1]
        y = spec.batch * spec.c_out * spec.out_hw[0] * spec.out_hw[1]
        return int(round((x * self.halo_factor() + y + self.weight_elements()) * elem_bytes))

    def executed_flops(self) -> tuple[int, int]:
        """(tensor-core flops, CUDA-core flops) the whole grid executes, recompute and padding included."""
        return (self.grid * sum(g.flops for g in self.gemms), self.grid * self.simt_flops_per_tile)

    def _warp_utilization(self, items: int, workers: int) -> float:
        """Share of ``workers`` busy when ``items`` equal jobs are dealt round-robin: J / (w·⌈J/w⌉)."""
        return items / (workers * ceil_div(items, workers)) if items else 1.0

    def modeled_seconds(self, dev: Device) -> float:
        tensor = self.grid * sum(g.flops / self._warp_utilization(g.jobs, self.warps) for g in self.gemms)
        simt_items = self.tile_pixels * (self.hidden_chunk if self.kind == "mbconv" else self.c_in_p)
        simt = self.grid * self.simt_flops_per_tile / self._warp_utilization(simt_items, self.threads)
        busy = max(tensor / dev.fp16_tensor_flops + simt / dev.fp32_flops, self.dram_bytes() / dev.bandwidth)
        concurrent = dev.sm_count * max(1, self.ctas_per_sm(dev))
        waves = ceil_div(self.grid, concurrent)
        return busy * waves * concurrent / self.grid

    def summary(self) -> dict:
        return {
            "tile": [self.tile_h, self.tile_w],
            "hidden_chunk": self.hidden_chunk if self.kind != "resnet_basic" else None,
            "warps": self.warps,
            "threads": self.threads,
            "grid": self.grid,
            "smem_bytes": self.smem_bytes,
            "acc_registers": self.acc_floats,
            "halo_factor": round(self.halo_factor(), 4),
            "target": self.target,
        }

    # ---- weights in kernel-argument order ---------------------------------------------
    def _weight_slots(self) -> list[tuple[str, ConvLayer, int, int, np.ndarray | None]]:
        """(name, layer, padded rows, padded input width, bias) per weighted layer, in argument order;
        bias None means the layer has no bias argument of its own."""
        spec = self.spec
        if self.kind == "convfirst":
            sp, ex, pr = spec.layers
            return [
                ("spatial", sp, self.c_in_p, sp.group_width_in, sp.bias),  # see packed_weights
                ("expand", ex, self.hidden_p, self.c_in_p, ex.bias),
                ("project", pr, self.c_out_p, self.hidden_p, pr.bias),
            ]
        if self.kind == "mbconv":
            ex = spec.layer("expand")
            slots = [("expand", ex, self.hidden_p, self.c_in_p, ex.bias)] if ex is not None else []
            dw, pr = spec.layer("depthwise"), spec.layer("project")
            return slots + [
                ("depthwise", dw, self.hidden_p, 1, dw.bias),
                ("project", pr, self.c_out_p, self.hidden_p, pr.bias),
            ]
        c1, c2 = spec.layers
        sc = spec.shortcut
        # the projection's bias is folded into conv2's: both add to the same accumulators
        slots = [
            ("conv1", c1, pad16(c1.c_out), self.c_in_p, c1.bias),
            ("conv2", c2, self.c_out_p, pad16(c1.c_out), c2.bias if sc is None else c2.bias + sc.bias),
        ]
        return slots + ([("shortcut", sc, self.c_out_p, self.c_in_p, None)] if sc is not None else [])

    def weight_arg_names(self) -> list[str]:
        return [
            n
            for name, *_, bias in self._weight_slots()
            for n in ([f"w_{name}", f"b_{name}"] if bias is not None else [f"w_{name}"])
        ]

    def packed_weights(self, dtype=np.float16) -> list[tuple[str, np.ndarray]]:
        """(argument name, array) in the kernel's argument order: weights [rows, k², cin] (1×1:
        [rows, cin]; a grouped conv on tensor cores: [rows, pad16(k²·cin)]) in ``dtype`` (fp16 for
        the GPU, fp32 for an exact reference), biases [rows] fp32; rows and channels zero-padded to
        multiples of 16."""
        out = []
        for name, layer, rows, cin, bias in self._weight_slots():
            w = _pack_conv(layer, rows, cin)
            if not layer.is_dense and self.grouped_on_tensor_cores:
                # one row per output channel: (tap, channel of the group), zero-padded to the mma K
                w = np.pad(w.reshape(rows, -1), ((0, 0), (0, self.grouped_k_pad - w[0].size)))
            elif layer.kernel == 1:
                w = w.reshape(rows, -1)
            out.append((f"w_{name}", w.astype(dtype)))
            if bias is not None:
                out.append((f"b_{name}", _pad_rows(bias.astype(np.float32), rows)))
        return out


def candidate_schedules(spec: BlockSpec, target: str = "h100"):
    """Every (tile, hidden chunk, warps) the chooser considers, fitting or not."""

    def sides(n):
        top = 1 << max(0, math.ceil(math.log2(max(n, 1))))
        return [s for s in TILE_SIDES if s <= max(top, 1)]

    hidden_p = pad16(spec.hidden)
    chunks = (
        [c for c in range(16, min(hidden_p, MAX_HIDDEN_CHUNK) + 1, 16) if hidden_p % c == 0]
        if spec.kind != "resnet_basic"
        else [0]
    )
    rows, cols = sides(spec.out_hw[0]), sides(spec.out_hw[1])
    min_pixels = min(MMA_M, rows[-1] * cols[-1])  # fill an mma row fragment unless the map is smaller
    for th in rows:
        for tw in cols:
            if th * tw < min_pixels:
                continue
            for hc in chunks:
                for warps in WARP_CHOICES:
                    yield BlockSchedule(spec, th, tw, hc, warps, target)


_CHOSEN: dict[tuple, tuple[int, int, int, int]] = {}


def choose_schedule(spec: BlockSpec, target: str = "h100") -> BlockSchedule:
    """The fastest schedule under the module docstring's model that fits the GPU ``target``."""
    key = (spec.signature(), target)
    if key not in _CHOSEN:
        dev = schedule_target(target)
        best, best_key, why = None, None, ""
        for s in candidate_schedules(spec, target):
            reason = s.fits(dev)
            if reason:
                why = why or reason
                continue
            rank = (s.modeled_seconds(dev), -s.tile_pixels, s.warps, -s.hidden_chunk, s.tile_h)
            if best_key is None or rank < best_key:
                best, best_key = s, rank
        if best is None:
            raise NoSchedule(f"no tile of this block fits {dev.name} ({why})")
        _CHOSEN[key] = (best.tile_h, best.tile_w, best.hidden_chunk, best.warps)
    th, tw, hc, warps = _CHOSEN[key]
    return BlockSchedule(spec, th, tw, hc, warps, target)


def fixed_schedule(
    spec: BlockSpec,
    tile_h: int,
    tile_w: int,
    hidden_chunk: int | None = None,
    warps: int = 8,
    target: str = "h100",
) -> BlockSchedule:
    """A schedule with the tile forced (tests use odd tiles to hit every edge); checked to fit."""
    if hidden_chunk is None:
        hidden_chunk = 0 if spec.kind == "resnet_basic" else 16
    s = BlockSchedule(spec, tile_h, tile_w, hidden_chunk, warps, target)
    reason = s.fits(schedule_target(target))
    if reason:
        raise NoSchedule(reason)
    return s
