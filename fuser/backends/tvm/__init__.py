"""Apache TVM backend: the IR lowered to Relax, built for llvm or cuda, saved, tuned and run.

    from fuser.backends import tvm as tb
    mod = tb.to_relax(graph)                    # TVM's FuseOps decides the kernels
    mod = tb.to_relax(graph, groups=plan)       # one kernel per group of a fusion plan
    model = tb.compile_graph(graph, "llvm")     # TVMModel: model(x=array) -> [arrays]

Modules, by concern: ``converters/`` (one Relax converter per op, by op family,
registered into ``fuser.ir.ops``), ``lower`` (Graph -> IRModule), ``cpu`` (what this
x86 CPU runs), ``target`` (llvm CPU and cuda arch), ``build`` (kernel formation and
compilation), ``depthfirst`` (depth-first schedules of fused kernels: row tiles, line
buffers), ``cachesim`` (DRAM bytes per kernel on a simulated cache), ``runtime`` (the VM
behind a numpy call, per-kernel timing), ``artifact`` (build folders), ``tuning`` (MetaSchedule).
"""

from .build import (
    build,
    build_fused,
    compile_graph,
    cuda_source,
    depth_first_reports,
    fuse,
    fuse_passes,
    kernel_calls,
    kernel_flops,
    kernel_names,
    schedule,
)
from .common import require_tvm, tvm_version
from .cpu import default_thread_pool, host_features, missing_cpu_features, physical_cores, portable_cpu
from .depthfirst import TileHint
from .lower import GROUP_FUNC_PREFIX, group_kernels, group_order, shared_kernels, to_relax
from .runtime import TVMModel, aligned_empty, null_kernels, time_calls_in_run, value_specs
from .schedules import schedule_sources
from .target import cuda_available, host_cpu, make_target, target_record

default_thread_pool()  # before TVM starts its pool: see cpu.default_thread_pool

__all__ = [
    "GROUP_FUNC_PREFIX",
    "TVMModel",
    "TileHint",
    "aligned_empty",
    "build",
    "build_fused",
    "compile_graph",
    "cuda_available",
    "cuda_source",
    "depth_first_reports",
    "fuse",
    "fuse_passes",
    "host_cpu",
    "host_features",
    "group_kernels",
    "group_order",
    "kernel_calls",
    "kernel_flops",
    "kernel_names",
    "make_target",
    "null_kernels",
    "missing_cpu_features",
    "physical_cores",
    "portable_cpu",
    "require_tvm",
    "schedule",
    "schedule_sources",
    "shared_kernels",
    "time_calls_in_run",
    "target_record",
    "to_relax",
    "tvm_version",
    "value_specs",
]
