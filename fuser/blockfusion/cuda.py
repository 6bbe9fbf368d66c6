"""CUDA code generation: one kernel per block, and an nvcc check for it.

``emit_kernel(schedule)`` turns a BlockSchedule into a self-contained .cu file: the
shared device code (fuser.blockfusion.cuda_templates.COMMON: tile load with halo,
tensor-core implicit-GEMM conv, grouped/depthwise FMA conv, epilogues, and the
three block bodies) plus a struct of the schedule's numbers and an
``extern "C" __global__`` entry point. The source depends only on the block's
shapes and the schedule, never on weights or node names, so equal blocks emit
byte-identical kernels (deduplicated by name = hash of the parameters).

Launch contract: grid = schedule.grid blocks of schedule.threads threads,
schedule.smem_bytes of dynamic shared memory (above 48 KB the launcher raises
the kernel's limit), arguments (x, y, *packed weights) with x and y NHWC fp16
(a channels_last NCHW tensor) and the weights of schedule.packed_weights().

``compile_nvcc(source)`` runs ``nvcc -arch=sm_90 -cubin`` in a temporary directory:
the device code goes all the way through ptxas to sm_90 machine code (the
resource report gives registers and spills); only the host stub, which the
runtime loader builds anyway, is skipped (-c would add a host compile, about
2× the time). The result (ok, log, registers, spills) is cached by the SHA-256
of source, flags and nvcc version under $FUSER_CACHE_DIR (default ~/.cache/fuser)/nvcc.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .cuda_templates import COMMON, KERNEL
from .devices import schedule_target
from .schedule import SMEM_SKEW, BlockSchedule, pad16
from .spec import ACTIVATIONS

NVCC_FLAGS = ("-std=c++17", "-O3", "-Xptxas", "-v")
BODIES = {"convfirst": "convfirst_block", "mbconv": "mbconv_block", "resnet_basic": "resnet_basic_block"}


@dataclass(frozen=True)
class CudaKernel:
    name: str
    source: str
    grid: int
    threads: int
    smem_bytes: int
    arg_names: tuple[str, ...]  # after x and y, in order (schedule.packed_weights names)

    def launch_line(self) -> str:
        args = ", ".join(self.arg_names)
        return f"{self.name}<<<{self.grid}, {self.threads}, {self.smem_bytes}>>>(x, y, {args})"


def kernel_params(s: BlockSchedule) -> dict[str, int | bool]:
    """The constants the kernel body reads (P::NAME), in emission order."""
    spec, xr = s.spec, s.x_region
    p: dict[str, int | bool] = {
        "N": spec.batch,
        "H": spec.in_hw[0],
        "W": spec.in_hw[1],
        "C_IN": spec.c_in,
        "C_IN_P": s.c_in_p,
        "HO": s.out_h,
        "WO": s.out_w,
        "C_OUT": spec.c_out,
        "C_OUT_P": s.c_out_p,
        "TILE_H": s.tile_h,
        "TILE_W": s.tile_w,
        "TILES_Y": s.tiles_y,
        "TILES_X": s.tiles_x,
        "M": s.tile_pixels,
        "WARPS": s.warps,
        "X_H": xr.h,
        "X_W": xr.w,
        "X_LD": s.c_in_p + SMEM_SKEW,
        "X_OFF_Y": xr.offset_y,
        "X_OFF_X": xr.offset_x,
        "RES_ORIGIN": s.residual_origin,
        "ACT_FINAL": ACTIVATIONS[spec.final_activation],
        # the occupancy the chooser assumed: __launch_bounds__' register budget (ptxas guesses spill)
        "MIN_BLOCKS": max(1, s.ctas_per_sm(schedule_target(s.target))),
    }
    if s.kind in ("convfirst", "mbconv"):
        proj = s.gemm("project")
        expand = spec.layer("expand")
        p.update(
            {
                "HID": s.hidden,
                "HID_P": s.hidden_p,
                "HC": s.hidden_chunk,
                "HC_LD": s.hidden_chunk + SMEM_SKEW,
                "NFW_EXP": s.gemm("expand").nfw if expand else 2,
                "EXP_JOBS": s.gemm("expand").jobs if expand else 0,
                "ACT_EXPAND": ACTIVATIONS[expand.activation] if expand else 0,
                "NFW_OUT": proj.nfw,
                "OUT_JOBS": proj.jobs,
                "OUT_JOBS_PER_WARP": -(-proj.jobs // s.warps),
                "RESIDUAL": spec.residual == "identity",
            }
        )
        if s.kind == "convfirst":
            sp = spec.layers[0]
            p.update(
                {
                    "K": sp.kernel,
                    "GW": sp.group_width_in,
                    "ACT_SPATIAL": ACTIVATIONS[sp.activation],
                    "SPATIAL_MMA": s.grouped_on_tensor_cores,
                    "SPATIAL_KPAD": s.grouped_k_pad if s.grouped_on_tensor_cores else 0,
                    "SPATIAL_JOBS": s.gemm("spatial").jobs if s.grouped_on_tensor_cores else 0,
                }
            )
        else:
            dw = spec.layer("depthwise")
            p.update(
                {
                    "K": dw.kernel,
                    "S": dw.stride,
                    "HAS_EXPAND": expand is not None,
                    "ACT_DW": ACTIVATIONS[dw.activation],
                }
            )
    else:
        c1, c2 = spec.layers
        mid = s.mid_region
        conv1, conv2 = s.gemm("conv1"), s.gemm("conv2")
        p.update(
            {
                "S": c1.stride,
                "K1": c1.kernel,
                "K2": c2.kernel,
                "C_MID": c1.c_out,
                "C_MID_P": pad16(c1.c_out),
                "MID_H": mid.h,
                "MID_W": mid.w,
                "MID_LD": pad16(c1.c_out) + SMEM_SKEW,
                "MID_OFF_Y": mid.offset_y,
                "MID_OFF_X": mid.offset_x,
                "ACT1": ACTIVATIONS[c1.activation],
                "NFW1": conv1.nfw,
                "CONV1_JOBS": conv1.jobs,
                "NFW2": conv2.nfw,
                "CONV2_JOBS": conv2.jobs,
                "PROJECTION": spec.residual == "projection",
            }
        )
    return p


def _body_call(s: BlockSchedule, names: list[str]) -> list[str]:
    """Arguments of the body template: every slot of its signature, nullptr where the block has none."""
    slots = {
        "convfirst": ["w_spatial", "b_spatial", "w_expand", "b_expand", "w_project", "b_project"],
        "mbconv": ["w_expand", "b_expand", "w_depthwise", "b_depthwise", "w_project", "b_project"],
        "resnet_basic": ["w_conv1", "b_conv1", "w_conv2", "b_conv2", "w_shortcut"],
    }[s.kind]
    return ["x", "y"] + [n if n in names else "nullptr" for n in slots]


def kernel_name(s: BlockSchedule) -> str:
    digest = hashlib.sha1(repr(sorted(kernel_params(s).items())).encode()).hexdigest()[:12]
    return f"fbf_{s.kind}_{digest}"


def emit_kernel(s: BlockSchedule) -> CudaKernel:
    """The .cu source of ``s``'s kernel (deterministic: same shapes and schedule, same bytes)."""
    params = kernel_params(s)
    names = s.weight_arg_names()
    name = kernel_name(s)
    lines = []
    for key, value in params.items():
        ctype = "bool" if isinstance(value, bool) else "int"
        lines.append(
            f"  static constexpr {ctype} {key} = {str(value).lower() if isinstance(value, bool) else value};"
        )
    args = ["const __half* __restrict__ x", "__half* __restrict__ y"] + [
        f"const {'__half' if n.startswith('w_') else 'float'}* __restrict__ {n}" for n in names
    ]
    sched = s.summary()
    hc = f", hidden chunk {s.hidden_chunk}" if s.kind != "resnet_basic" else ""
    source = COMMON + KERNEL.format(
        name=name,
        title=f"{s.kind} {s.spec.describe()}, batch {s.spec.batch}",
        schedule=(
            f"tile {s.tile_h}x{s.tile_w}{hc}, {s.warps} warps, {s.smem_bytes} B shared, "
            f"grid {s.grid}, halo factor {sched['halo_factor']}"
        ),
        grid=s.grid,
        threads=s.threads,
        min_blocks=params["MIN_BLOCKS"],
        smem_bytes=s.smem_bytes,
        arg_names=", ".join(names),
        params="\n".join(lines),
        args=", ".join(args),
        body=BODIES[s.kind],
        call=", ".join(_body_call(s, names)),
    )
    return CudaKernel(name, source, s.grid, s.threads, s.smem_bytes, tuple(names))


# ---- nvcc -----------------------------------------------------------------------------------------


@dataclass
class CompileResult:
    ok: bool
    seconds: float
    log: str
    registers: int | None = None
    spill_bytes: int | None = None
    cached: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def find_nvcc() -> str | None:
    for cand in (
        shutil.which("nvcc"),
        os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc"),
    ):
        if cand and os.path.exists(cand):
            return cand
    return None


def cache_dir() -> Path:
    return Path(os.environ.get("FUSER_CACHE_DIR", Path.home() / ".cache" / "fuser")) / "nvcc"


def _nvcc_version(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1] if out else "?"


def compile_nvcc(
    source: str, arch: str = "sm_90", nvcc: str | None = None, mode: str = "-cubin"
) -> CompileResult:
    """Compile ``source`` with ``nvcc -arch=ARCH MODE`` (MODE -cubin, -c or --ptx; ptxas -v for the
    resource report); cached."""
    from fuser.serde.files import atomic_write

    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
    flags = (f"-arch={arch}", mode, *NVCC_FLAGS)
    key = hashlib.sha256("\0".join([source, *flags, _nvcc_version(nvcc)]).encode()).hexdigest()
    entry = cache_dir() / f"{key}.json"
    if entry.exists():
        return CompileResult(**{**json.loads(entry.read_text()), "cached": True})
    with tempfile.TemporaryDirectory(prefix="fuser_nvcc_") as tmp:
        src = Path(tmp) / "kernel.cu"
        src.write_text(source)
        t0 = time.perf_counter()
        proc = subprocess.run(
            [nvcc, *flags, "-o", str(Path(tmp) / "kernel.out"), str(src)], capture_output=True, text=True
        )
        seconds = time.perf_counter() - t0
    log = (proc.stdout + proc.stderr).strip()
    regs = [int(r) for r in re.findall(r"Used (\d+) registers", log)]
    spills = [
        int(a) + int(b) for a, b in re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    ]
    result = CompileResult(
        proc.returncode == 0,
        round(seconds, 2),
        log,
        max(regs) if regs else None,
        max(spills) if spills else None,
    )
    if result.ok:  # failures are not cached: a fixed toolchain should be retried
        entry.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(entry, json.dumps(result.to_dict()).encode())
    return result
