"""fuser's default CPU schedules: dlight-style rules applied to every kernel by pattern, so
an untuned llvm build needs no tuning to be fast, and the space tuning starts from.

    fused = apply_default_schedules(fused, target)     # every kernel nobody scheduled yet
    schedule_sources(fused)                            # kernel -> rule / tuned / naive
    window.register_tile(sch, block, epilogue, cpu_facts(target), "conv")   # one block

Rules, first match wins (``registry.RULES``): ``window`` (blocked conv, 1x1, grouped,
depthwise, pooling, global mean), ``matmul``, ``injective``, ``rows`` (softmax, layer norm
and means row by row, reducing in vector lanes), ``reduction`` (dlight's CPU reduction rule,
for the reductions ``rows`` declines) and ``fallback``. Each module's docstring states its pattern and tile.
Tile sizes come from ``common.cpu_facts``: the target's vector width and registers (from
its LLVM features) and the host's cache sizes (from /sys/devices/system/cpu/cpu0/cache).
"""

from .common import CpuFacts, cpu_facts, host_caches
from .registry import (
    NAIVE,
    RULES,
    SOURCE_ATTR,
    TUNED,
    apply_default_schedules,
    design_space,
    schedule_func,
    schedule_sources,
    tunable,
)

__all__ = [
    "NAIVE",
    "RULES",
    "SOURCE_ATTR",
    "TUNED",
    "CpuFacts",
    "apply_default_schedules",
    "cpu_facts",
    "design_space",
    "host_caches",
    "schedule_func",
    "schedule_sources",
    "tunable",
]
