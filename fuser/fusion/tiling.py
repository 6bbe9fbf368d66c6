"""Per-group tiling hints for the depth-first TVM kernels of a fusion plan.

The TVM backend may not import the planner, so a plan reaches it as plain data: for each
group, a ``TileHint`` with the plan's style (lbdf: one output row per tile, rolling line
buffers; brr: the group's T* tiles), the buffer the plan was made for (which sizes channel
blocks of ops too big for it) and the threads to run on. Read from the plan's JSON form, so
any plan file works: a style other than brr (a hand-written plan's) tiles as lbdf, one row
at a time, and a plan with no buffer (0) blocks no channels.
"""

from __future__ import annotations

from .plan import Plan


def tile_hints(plan: Plan | dict, threads: int = 1) -> dict:
    """Group index -> TileHint for ``to_relax(graph, groups)`` + ``fuse(..., tiling=...)``
    (``plan``: a Plan or its ``to_dict()``)."""
    from fuser.backends.tvm.depthfirst import TileHint  # imports TVM: only when building

    data = plan if isinstance(plan, dict) else plan.to_dict()
    return {
        gid: TileHint(
            style="brr" if data["style"] == "brr" else "lbdf",
            tiles=group.get("tiles") if data["style"] == "brr" else None,
            buffer_bytes=int(data["buffer_bytes"]) or None,
            threads=threads,
        )
        for gid, group in enumerate(data["groups"])
    }
