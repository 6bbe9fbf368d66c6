"""Rule ``reduction``: TVM's dlight CPU rule for reductions over the innermost axes with
injective prologue and epilogue (softmax, layer norm, means over the last axes): rows
parallel, the reduction vectorized."""

from __future__ import annotations

NAME = "reduction"
TUNABLE = False


def apply(sch, target, tunable: bool = False):
    from tvm.s_tir import dlight

    scheduled = dlight.cpu.Reduction().apply(sch.mod["main"], target, False)
    if scheduled is None:
        return None
    return scheduled[0] if isinstance(scheduled, list) else scheduled
