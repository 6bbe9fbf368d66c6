"""Block fusion: one generated CUDA kernel per residual block (Lavin 2024, "On the Efficiency
of Convolutional Neural Networks", arXiv 2404.03617).

    graph = fuser.optimize(model_or_path).graph         # BN folded into the convs
    blocks, not_fused = find_blocks(graph)              # BlockSpecs, and why others are not fused
    schedule = choose_schedule(blocks[0])               # tiles from the smem/register budget
    kernel = emit_kernel(schedule)                      # .cu source, launch config
    y = run_schedule(schedule, x)                       # the kernel's tile loop on the CPU (numpy)
    cost = block_cost(schedule)                         # MACs, DRAM bytes fused/unfused, intensity
    report = blocks_report(graph, "h100")               # what `fuser blocks` prints

Modules: spec (BlockSpec), schedule (tiles, halos, packing, chooser), cuda_templates +
cuda (code generation, nvcc check), reference (CPU tile schedule), model (analytic
costs, efficiency gap, waterline), devices (peak table, CPU measurement), measure
(timings), loader (torch extension binding), report (the report's data; fuser.reports
prints and plots it),
synthetic (single-block graphs for tests and benchmarks), matcher (which blocks fuse,
and why the rest do not; the ``fuse_blocks`` pass annotates a graph with it).
"""

from .cuda import CudaKernel, compile_nvcc, emit_kernel, find_nvcc
from .devices import DEVICES, Device, get_device, measure_cpu
from .loader import FusedBlock, load_blocks
from .matcher import find_blocks
from .model import BlockCost, KernelCost, block_cost, waterline
from .reference import run_schedule
from .report import blocks_report, emit_kernels
from .schedule import BlockSchedule, NoSchedule, choose_schedule, fixed_schedule
from .spec import BlockSpec, ConvLayer, Rejected

__all__ = [
    "BlockSpec",
    "ConvLayer",
    "Rejected",
    "BlockSchedule",
    "NoSchedule",
    "choose_schedule",
    "fixed_schedule",
    "CudaKernel",
    "emit_kernel",
    "compile_nvcc",
    "find_nvcc",
    "run_schedule",
    "BlockCost",
    "KernelCost",
    "block_cost",
    "waterline",
    "DEVICES",
    "Device",
    "get_device",
    "measure_cpu",
    "blocks_report",
    "emit_kernels",
    "find_blocks",
    "FusedBlock",
    "load_blocks",
]
