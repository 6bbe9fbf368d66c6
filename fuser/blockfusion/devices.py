"""Device peaks for the analytic model and the tile chooser.

GPU rows are NVIDIA's published numbers (dense, i.e. without 2:4 sparsity; SXM
boards at boost clock):

  H100 SXM5  FP16 tensor core (FP32 accumulate) 989.4 TFLOP/s, FP16 non-tensor 133.8,
             FP32 66.9 TFLOP/s, HBM3 3.35 TB/s, 132 SMs
             NVIDIA H100 Tensor Core GPU Architecture whitepaper (2022), table 3, and the
             H100 datasheet: https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet
  H200 SXM   same GH100 compute (FP16 tensor 1,979 TFLOP/s with sparsity = 989.4 dense,
             FP32 67 TFLOP/s), HBM3e 4.8 TB/s, 132 SMs
             https://www.nvidia.com/en-us/data-center/h200/
  both       compute capability 9.0: 228 KB shared memory per SM, 227 KB per block (opt-in),
             64 K 32-bit registers per SM, at most 255 per thread, 2048 threads per SM
             (CUDA C++ Programming Guide, "Compute Capabilities", table 21)

The CPU row is measured on this machine (``measure_cpu``): the peak from a timed
fp32 matrix product (2·n³ flops), the bandwidth from a timed copy of a large
tensor (bytes read + bytes written), each the best of several runs. Both run once
per process. On a shared machine the peak can come out low, and a layer's
"efficiency" then above 100%: the measurement is rough by design.
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass

from fuser.ir import FuserError

TERA = 1e12


@dataclass(frozen=True)
class Device:
    name: str
    fp16_tensor_flops: float  # dense tensor-core rate (FP32 accumulate): the 1×1 and dense k×k convs
    fp32_flops: float  # CUDA-core FMA rate: grouped / depthwise convs (fp32 accumulate)
    bandwidth: float  # DRAM bytes/s
    sm_count: int = 0
    smem_per_sm: int = 0  # bytes
    smem_per_block: int = 0  # bytes, with the opt-in attribute
    regs_per_sm: int = 65536
    max_threads_per_sm: int = 2048
    source: str = ""

    @property
    def is_gpu(self) -> bool:
        return self.sm_count > 0

    def peak(self, unit: str) -> float:
        """Peak flop/s of ``unit``: 'tensor' (dense convs) or 'simt' (grouped/depthwise, adds)."""
        return self.fp16_tensor_flops if unit == "tensor" else self.fp32_flops

    def to_dict(self) -> dict:
        return asdict(self)


_SM90 = dict(sm_count=132, smem_per_sm=228 * 1024, smem_per_block=227 * 1024)

DEVICES = {
    "h100": Device(
        "H100 SXM5",
        989.4 * TERA,
        66.9 * TERA,
        3.35 * TERA,
        **_SM90,
        source="NVIDIA H100 whitepaper / datasheet (dense FP16 tensor, FP32, HBM3)",
    ),
    "h200": Device(
        "H200 SXM",
        989.4 * TERA,
        66.9 * TERA,
        4.8 * TERA,
        **_SM90,
        source="NVIDIA H200 product page (dense FP16 tensor, FP32, HBM3e)",
    ),
}
GPU_NAMES = tuple(DEVICES)
DEVICE_NAMES = GPU_NAMES + ("cpu",)


@functools.lru_cache(maxsize=1)
def measure_cpu(matmul_n: int = 1024, copy_mib: int = 128) -> Device:
    """This CPU's fp32 peak (timed matmul) and bandwidth (timed copy), best of several runs."""
    import torch

    a = torch.randn(matmul_n, matmul_n)
    b = torch.randn(matmul_n, matmul_n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(10):  # best of several: other processes share the cores
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    flops = 2 * matmul_n**3 / best
    src = torch.empty(copy_mib * 2**20 // 4)
    src.uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    bandwidth = 2 * src.numel() * 4 / best
    return Device(
        f"CPU ({torch.get_num_threads()} threads, measured)",
        flops,
        flops,
        bandwidth,
        source=f"measured: {matmul_n}³ fp32 matmul, {copy_mib} MiB copy (read + write)",
    )


def get_device(name: str) -> Device:
    """'h100', 'h200' (table) or 'cpu' (measured here)."""
    key = name.lower()
    if key == "cpu":
        return measure_cpu()
    if key not in DEVICES:
        raise FuserError(f"unknown device '{name}'; choose one of {', '.join(DEVICE_NAMES)}")
    return DEVICES[key]


def schedule_target(name: str) -> Device:
    """The GPU whose limits shape the tiles: the named GPU, or H100 for 'cpu' (kernels are sm_90);
    any other name is refused (a misspelt GPU silently got H100's limits)."""
    key = name.lower()
    if key != "cpu" and key not in DEVICES:
        raise FuserError(f"unknown device '{name}'; choose one of {', '.join(DEVICE_NAMES)}")
    return DEVICES.get(key, DEVICES["h100"])
