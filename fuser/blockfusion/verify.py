"""Each fused residual block as one depth-first TVM kernel, checked against ONNX Runtime on the
block's own subgraph, and against the hand-written CUDA template's CPU reference where a
template covers the block.

    results = verify_blocks(graph, find_residual_blocks(graph))
    [(r.block, r.rel_err, r.template_rel_err) for r in results]

A block is extracted (``graph.extract``: its entry values become inputs), lowered as one plan
group (``to_relax`` with one group) and built with ``fuse(..., tiling={0: TileHint("lbdf")})``:
the same depth-first path a fusion plan's groups take. The error is max |TVM - ORT| / max |ORT|
on a seeded normal input. The template check runs ``reference.run_schedule`` (the CUDA
kernel's tile loop in numpy) for the template spec whose nodes lie inside the block, on that
spec's input, against the TVM kernel of the spec's own nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fuser.backends.ort import example_feeds
from fuser.ir import Graph

from .structure import Block


@dataclass
class BlockCheck:
    block: str
    kind: str
    rel_err: float
    template: str | None = None
    template_rel_err: float | None = None
    stages: int = 1
    line_buffers: int = 0

    def to_dict(self) -> dict:
        return dict(vars(self))


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def _ort(graph: Graph, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    from fuser.serde.onnx import to_onnx

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(to_onnx(graph).SerializeToString(), so, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def compile_block(graph: Graph, nodes: list[str], target: str = "llvm"):
    """(subgraph, TVMModel): the nodes as one depth-first kernel, plus its schedule report; a
    cuda ``target``'s model runs on the GPU."""
    from fuser.backends import tvm as tb

    by_name = {n.name: n for n in graph.nodes}
    sub = graph.extract([by_name[n] for n in nodes], name=f"{graph.name}_block")
    mod = tb.to_relax(sub, [list(sub.nodes)])
    tvm_target = tb.make_target(target)
    fused = tb.fuse(mod, tvm_target, planned=True, tiling={0: tb.TileHint("lbdf")})
    model = tb.TVMModel(
        tb.build_fused(fused, tvm_target),
        tb.value_specs(sub.inputs),
        tb.value_specs(sub.outputs),
        device="cuda" if target.startswith("cuda") else "cpu",
    )
    return sub, model, tb.depth_first_reports(fused)


def verify_block(graph: Graph, block: Block, seed: int = 0) -> BlockCheck:
    """The block's TVM depth-first kernel against ORT on its subgraph (and its template)."""
    sub, model, reports = compile_block(graph, block.nodes)
    feeds = example_feeds(sub, seed)
    got = model(**feeds)
    want = _ort(sub, feeds)
    err = max(rel_err(g, w) for g, w in zip(got, want))
    report = next(iter(reports.values()), {})
    check = BlockCheck(
        block.name,
        block.kind,
        err,
        stages=len(report.get("stages", [])),
        line_buffers=len(report.get("line_buffers", {})),
    )
    if block.template:
        check.template, check.template_rel_err = block.template, template_agreement(graph, block, seed)
    return check


def template_agreement(graph: Graph, block: Block, seed: int = 0) -> float | None:
    """max |template CPU reference - TVM depth-first kernel| / max |TVM| for the template spec
    that covers part of ``block`` (the CUDA templates' cross-check); None without one."""
    from .matcher import find_blocks
    from .reference import run_schedule
    from .schedule import choose_schedule

    spec = next((s for s in find_blocks(graph, None)[0] if set(s.nodes) <= set(block.nodes)), None)
    if spec is None:
        return None
    sub, model, _ = compile_block(graph, list(spec.nodes))
    if len(sub.inputs) != 1:
        return None
    x = example_feeds(sub, seed)[sub.inputs[0].name]
    (got,) = model(x)
    ref = run_schedule(choose_schedule(spec, "h100"), x)
    return rel_err(ref, got)


def verify_blocks(graph: Graph, blocks: list[Block], seed: int = 0, on_block=None) -> list[BlockCheck]:
    """``verify_block`` for every fused block (``on_block(i, n)`` after each, for progress)."""
    fused = [b for b in blocks if b.fused]
    out = []
    for i, b in enumerate(fused):
        out.append(verify_block(graph, b, seed))
        if on_block:
            on_block(i + 1, len(fused))
    return out
