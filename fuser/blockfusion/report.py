"""The block-fusion report of a model: blocks found, analytic costs fused and unfused,
efficiency gap and waterline (with timings when measured), the roofline plot, and the
emitted kernels. ``blocks_report`` makes the JSON-ready dict the CLI prints;
``render`` draws its rich tables; ``roofline_png`` its plot; ``emit_kernels`` writes the .cu files.
"""

from __future__ import annotations

import io
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


def blocks_report(graph: Graph, device: str = "h100", measure: bool = False, repeats: int = 20) -> dict:
    """Everything ``fuser blocks`` shows, as plain data.

    ``device``: 'h100' / 'h200' (published peaks, fp16 storage) or 'cpu' (measured peaks, fp32).
    ``measure``: time the unfused layers here with PyTorch (and the fused kernels on a GPU).
    """
    dev, elem, costs, rejected = find_and_cost(graph, device)
    timings = [None] * len(costs)
    measured_on = None
    if measure:
        import torch

        from .measure import measure_blocks

        measured_on = "cuda" if torch.cuda.is_available() and dev.is_gpu else "cpu"
        if measured_on == "cpu" and dev.is_gpu:
            raise FuserError(
                f"measuring needs a GPU for --device {device}; this machine has none "
                "(use --device cpu to measure the unfused layers on the CPU)"
            )
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


# ---- rendering ------------------------------------------------------------------------------


def _us(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:,.3g}"


def _bytes_pair(unfused: int, fused: int) -> str:
    """'368→232 KiB ÷1.6': both in the larger one's unit."""
    unit, div = next(
        (
            (u, d)
            for u, d in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))
            if max(unfused, fused) >= d
        ),
        ("B", 1),
    )
    return f"{unfused / div:.3g}→{fused / div:.3g} {unit} ÷{unfused / fused:.1f}"


def render_residual(report: dict, console) -> None:
    """The residual blocks found by structure: what each computes, whether it became one
    depth-first TVM kernel (and why not), and the checks against ORT when run."""
    from rich.markup import escape
    from rich.table import Table

    blocks = report.get("residual_blocks", [])
    checks = {c["block"]: c for c in report.get("residual_checks", [])}
    fused = [b for b in blocks if b["fused"]]
    t = Table(
        title=f"{escape(report['model'])}: {len(blocks)} residual blocks found by structure, "
        f"{len(fused)} fused, each one depth-first TVM kernel",
        title_justify="left",
    )
    for col in ("block", "kind", "computes", "fused", "why / how", *(["TVM vs ORT"] if checks else [])):
        t.add_column(col, overflow="fold")
    for b in blocks:
        if b["inside"]:
            state, why = "inside", f"part of {b['inside']}"
        elif b["fused"]:
            state, why = ("split" if b["stages"] > 1 else "yes"), b["reason"]
        else:
            state, why = "no", b["reason"]
        if b["template"]:
            why = (why + "; " if why else "") + f"CUDA template {b['template']} covers it"
        row = [b["name"], b["kind"], escape(b["description"]), state, escape(why)]
        if checks:
            c = checks.get(b["name"])
            row.append("-" if c is None else f"{c['rel_err']:.1e}")
        t.add_row(*row)
    console.print(t)


def render(report: dict, console) -> None:
    """Rich tables: blocks, not-fused groups, efficiency gap (when measured), waterline."""
    from rich.table import Table

    from fuser.units import human, human_bytes

    if "residual_blocks" in report:
        render_residual(report, console)
    dev = report["device"]
    t = Table(
        title=f"CUDA templates (a cross-check of those kernels): {len(report['blocks'])} blocks, "
        f"{report['kernels']} distinct kernels (model for {dev['name']}, {report['elem_bytes']}-byte "
        "storage)",
        title_justify="left",
    )
    for col in ("block", "shape", "tile", "MACs", "DRAM unfused→fused", "I (flop/B)", "roofline µs"):
        t.add_column(col, justify="left" if col in ("block", "shape", "tile") else "right")
    for r in report["blocks"]:
        unf_roof = sum(layer["roofline_s"] for layer in r["layers"])
        t.add_row(
            r["name"],
            r["description"],
            "×".join(map(str, r["schedule"]["tile"])),
            human(r["macs"]),
            _bytes_pair(r["dram_bytes_unfused"], r["dram_bytes_fused"]),
            f"{r['intensity_unfused']:.0f}→{r['intensity_fused']:.0f}",
            f"{_us(unf_roof)}→{_us(r['fused']['roofline_s'])}",
        )
    console.print(t)
    if report["not_fused"]:
        nt = Table(title="no CUDA template", title_justify="left")
        nt.add_column("nodes")
        nt.add_column("reason")
        for r in report["not_fused"]:
            nodes = r["nodes"]
            nt.add_row(f"{nodes[0]} … {nodes[-1]} ({len(nodes)})", r["reason"])
        console.print(nt)
    if report["measured_on"]:
        gt = Table(title=f"efficiency gap (measured on {report['measured_on']})", title_justify="left")
        for col in ("kernel", "op", "ideal µs", "roofline µs", "measured µs", "efficiency", "GFLOP/s"):
            gt.add_column(col, justify="left" if col in ("kernel", "op") else "right")
        for r in report["blocks"]:
            for k in r["layers"] + [r["fused"]]:
                eff = k.get("efficiency")
                gt.add_row(
                    k["name"],
                    k["op"],
                    _us(k["ideal_s"]),
                    _us(k["roofline_s"]),
                    _us(k.get("measured_s")),
                    "-" if eff is None else f"{100 * eff:.1f}%",
                    "-" if "achieved_flops" not in k else f"{k['achieved_flops'] / 1e9:,.1f}",
                )
        console.print(gt)
    w = report["waterline"]
    tot = report["totals"]
    console.print(
        f"[bold]totals[/]: {human(tot['macs'])}MACs in blocks; "
        f"DRAM {human_bytes(tot['dram_bytes_unfused'])} unfused → "
        f"{human_bytes(tot['dram_bytes_fused'])} fused; "
        f"waterline {_us(w['unfused']['waterline_s'])} µs unfused "
        f"({w['unfused']['kernels']} kernels) → {_us(w['fused']['waterline_s'])} µs fused "
        f"({w['fused']['kernels']} kernels); measured {_us(w['unfused']['measured_s'])} → "
        f"{_us(w['fused']['measured_s'])} µs",
        highlight=False,
    )


def roofline_png(report: dict) -> bytes:
    """A log-log roofline: the device's roofs, one point per kernel (unfused layers, fused blocks),
    filled where measured (achieved flop/s), hollow where modeled (attainable flop/s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    dev = report["device"]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    points = [(k, False) for r in report["blocks"] for k in r["layers"]] + [
        (r["fused"], True) for r in report["blocks"]
    ]
    xs = [k["intensity"] for k, _ in points if k["intensity"] > 0]
    lo, hi = (min(xs) / 3, max(xs) * 3) if xs else (0.1, 1000)
    ridge = dev["fp16_tensor_flops"] / dev["bandwidth"]
    grid = np.logspace(np.log10(lo), np.log10(max(hi, 3 * ridge)), 200)
    roofs = [("tensor-core peak", dev["fp16_tensor_flops"], "k-")]
    if dev["fp32_flops"] != dev["fp16_tensor_flops"]:
        roofs.append(("CUDA-core fp32 peak", dev["fp32_flops"], "k--"))
    for label, peak, style in roofs:
        ax.plot(
            grid,
            np.minimum(peak, dev["bandwidth"] * grid),
            style,
            lw=1,
            label=f"{label} {peak / 1e12:.3g} TFLOP/s",
        )
    for fused, color, marker, label in (
        (False, "tab:blue", "o", "unfused layer"),
        (True, "tab:red", "*", "fused block"),
    ):
        sel = [k for k, f in points if f == fused and k["intensity"] > 0]
        for measured in (False, True):
            pts = [k for k in sel if ("achieved_flops" in k) == measured]
            if not pts:
                continue
            ys = [k["achieved_flops"] if measured else k["attainable_flops"] for k in pts]
            ax.scatter(
                [k["intensity"] for k in pts],
                ys,
                marker=marker,
                s=70 if fused else 30,
                facecolors=color if measured else "none",
                edgecolors=color,
                label=f"{label} ({'measured' if measured else 'model'})",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("operational intensity (flop / DRAM byte)")
    ax.set_ylabel("flop/s")
    ax.set_title(f"{report['model']} on {dev['name']}: roofline, one point per kernel")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version string: same plot, same bytes
    plt.close(fig)
    return buf.getvalue()


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
