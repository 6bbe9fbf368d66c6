"""The block-fusion report of a model: blocks found, analytic costs fused and unfused,
efficiency gap and waterline (with timings when measured), and the emitted kernels.
``blocks_report`` makes the JSON-ready dict (``fuser.reports.blocks`` prints it as tables,
``fuser.reports.plots`` draws its roofline); ``emit_kernels`` writes the .cu files.
"""

from __future__ import annotations

import json
from pathlib import Path

from fuser.ir import FuserError, Graph

from .cuda import emit_kernel
from .devices import get_device
from .model import block_cost, waterline
from .schedule import choose_schedule


def find_and_cost(graph: Graph, device: str = "h100", elem_bytes: int | None = None):
    """(device, element bytes, [BlockCost], [Rejected]) for ``graph`` (BN folded)."""
    from .matcher import find_blocks

    dev = get_device(device)
    target = device if dev.is_gpu else "h100"  # kernels are sm_90 whatever the report's device
    elem = elem_bytes or (2 if dev.is_gpu else 4)
    blocks, rejected = find_blocks(graph, target)
    return dev, elem, [block_cost(choose_schedule(b, target), elem) for b in blocks], rejected


def measurement_device(device: str) -> str:
    """Where measuring for ``device`` runs: 'cuda' for a GPU device on a machine with a GPU,
    'cpu' for the cpu device; a FuserError for a GPU device on a machine without one (checked
    before any capture)."""
    if device.lower() == "cpu":
        return "cpu"
    get_device(device)  # an unknown name is refused here
    import torch

    if not torch.cuda.is_available():
        raise FuserError(
            f"measuring needs a GPU for --device {device}; this machine has none "
            "(use --device cpu to measure the unfused layers on the CPU)"
        )
    return "cuda"


def blocks_report(graph: Graph, device: str = "h100", measure: bool = False, repeats: int = 20) -> dict:
    """Everything ``fuser blocks`` shows, as plain data.

    ``device``: 'h100' / 'h200' (published peaks, fp16 storage) or 'cpu' (measured peaks, fp32).
    ``measure``: time the unfused layers here with PyTorch (and the fused kernels on a GPU).
    """
    measured_on = measurement_device(device) if measure else None
    dev, elem, costs, rejected = find_and_cost(graph, device)
    timings = [None] * len(costs)
    if measure:
        from .measure import measure_blocks

        timings = measure_blocks(costs, measured_on, repeats)
    rows = []
    for c, t in zip(costs, timings):
        spec, s = c.spec, c.schedule
        unfused_bytes = sum(k.dram_bytes for k in c.unfused)
        unfused_ops = sum(k.ops for k in c.unfused)
        rows.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "description": spec.describe(),
                "nodes": list(spec.nodes),
                "input_shape": list(spec.input_shape),
                "output_shape": list(spec.output_shape),
                "kernel_size": spec.kernel,
                "stride": spec.stride,
                "expansion": spec.expansion,
                "residual": spec.residual,
                "ops": c.fused.ops,
                "macs": c.fused.macs,
                "dram_bytes_fused": c.fused.dram_bytes,
                "dram_bytes_unfused": unfused_bytes,
                "dram_reduction": round(unfused_bytes / c.fused.dram_bytes, 3),
                "weight_bytes": c.fused.weight_bytes,
                "activation_bytes_fused": c.fused.activation_bytes,
                "activation_bytes_unfused": unfused_bytes - c.fused.weight_bytes,
                "intensity_fused": round(c.fused.intensity, 3),
                "intensity_unfused": round(unfused_ops / unfused_bytes, 3),
                "halo_factor": round(s.halo_factor(), 4),
                "activation_elements": c.activation_elements,
                "schedule": s.summary(),
                "kernel": emit_kernel(s).name,
                "fused": c.fused.to_dict(dev, t and t["fused"]),
                "layers": [k.to_dict(dev, t and t["unfused"][i]) for i, k in enumerate(c.unfused)],
            }
        )
    unfused_seq = [k for c in costs for k in c.unfused]
    unfused_times = [x for t in timings for x in t["unfused"]] if measure else None
    fused_times = [t["fused"] for t in timings] if measure else None
    return {
        "model": graph.name,
        "device": {"key": device, **dev.to_dict()},
        "elem_bytes": elem,
        "measured_on": measured_on,
        "blocks": rows,
        "not_fused": [{"nodes": list(r.nodes), "pattern": r.pattern, "reason": r.reason} for r in rejected],
        "kernels": len({r["kernel"] for r in rows}),
        "totals": {
            "blocks": len(rows),
            "ops": sum(r["ops"] for r in rows),
            "macs": sum(r["macs"] for r in rows),
            "dram_bytes_fused": sum(r["dram_bytes_fused"] for r in rows),
            "dram_bytes_unfused": sum(r["dram_bytes_unfused"] for r in rows),
        },
        "waterline": {
            "unfused": waterline(unfused_seq, dev, unfused_times),
            "fused": waterline([c.fused for c in costs], dev, fused_times),
        },
    }


def emit_kernels(graph: Graph, directory: str | Path, device: str = "h100") -> list[dict]:
    """Write each distinct kernel as DIR/<name>.cu and DIR/manifest.json (block → kernel, launch);
    returns the manifest."""
    from fuser.serde.files import atomic_write

    _, _, costs, _ = find_and_cost(graph, device)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    manifest, written = [], set()
    for c in costs:
        k = emit_kernel(c.schedule)
        if k.name not in written:
            atomic_write(directory / f"{k.name}.cu", k.source.encode())
            written.add(k.name)
        manifest.append(
            {
                "block": c.spec.name,
                "kind": c.spec.kind,
                "nodes": list(c.spec.nodes),
                "kernel": k.name,
                "file": f"{k.name}.cu",
                "grid": k.grid,
                "threads": k.threads,
                "smem_bytes": k.smem_bytes,
                "args": ["x", "y", *k.arg_names],
                "input_shape": list(c.spec.input_shape),
                "output_shape": list(c.spec.output_shape),
            }
        )
    atomic_write(directory / "manifest.json", json.dumps(manifest, indent=2).encode())
    return manifest
