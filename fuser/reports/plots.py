"""Plots (matplotlib): the buffer sweep, and Lavin's roofline, efficiency gap and waterline.

Each function returns a Figure; ``figure_bytes`` renders it as PNG (files the CLI writes)
or SVG (inlined in the report page, text kept as text). The same data gives the same bytes:
no dates, no version strings, SVG ids salted with a constant.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from fuser.units import format_size  # noqa: E402

STABLE = {"svg.hashsalt": "fuser", "svg.fonttype": "none", "font.family": "DejaVu Sans"}


def figure_bytes(fig, fmt: str = "png", dpi: int = 110) -> bytes:
    """The figure as PNG or SVG bytes (deterministic), and the figure closed."""
    buf = io.BytesIO()
    metadata = {"Software": None} if fmt == "png" else {"Date": None, "Creator": None}
    with matplotlib.rc_context(STABLE):
        fig.savefig(buf, format=fmt, dpi=dpi, metadata=metadata, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def svg_text(fig) -> str:
    """The figure as an inline <svg> element (no XML prolog)."""
    text = figure_bytes(fig, "svg").decode()
    return text[text.index("<svg") :]


def _new(figsize=(6.4, 4.0)):
    with matplotlib.rc_context(STABLE):
        return plt.subplots(figsize=figsize)


# ---- fusion ---------------------------------------------------------------------------------
def sweep_figure(rows: Sequence[dict], title: str, highlight: int | None = None):
    """DRAM (MB) against buffer size: the fused plan per size and the no-fusion level.

    No fusion moves the same bytes at every size: a horizontal line (in the legend with one
    size or many). ``highlight``: a buffer size to mark (the report's own)."""
    fig, ax = _new()
    sizes = [r["buffer_bytes"] / 1024 for r in rows]
    dram = [r["dram_bytes"] / 1e6 for r in rows]
    no_fusion = max((r["no_fusion_dram_bytes"] for r in rows), default=0) / 1e6
    ax.axhline(no_fusion, ls="--", color="gray", label=f"no fusion ({no_fusion:.2f} MB)")
    ax.plot(sizes, dram, "o-" if len(rows) > 1 else "o", ms=7, color="tab:blue", label="fused plan")
    for x, y in zip(sizes, dram):
        ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    if highlight is not None:
        hx = [(s, d) for r, s, d in zip(rows, sizes, dram) if r["buffer_bytes"] == highlight]
        if hx:
            ax.plot(
                *hx[0], "o", ms=12, mfc="none", mec="tab:red", label=f"this report ({format_size(highlight)})"
            )
    ax.set_xscale("log", base=2)
    if sizes:
        lo, hi = min(sizes), max(sizes)
        ax.set_xlim(lo / 1.6, hi * 1.6)
        ax.set_xticks(sizes, [format_size(r["buffer_bytes"]) for r in rows])
    ax.set_ylim(0, max([no_fusion, *dram]) * 1.12 or 1)
    ax.set_xlabel("on-chip buffer")
    ax.set_ylabel("DRAM traffic (MB)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return fig


def group_roofline_figure(groups: Sequence[dict], peak_flops: float, bandwidth: float, title: str):
    """Fusion groups on this CPU's roofline: intensity = 2·MACs / predicted DRAM bytes, rate =
    2·MACs / measured time. ``groups``: dicts with macs, dram_bytes, measured_ms, index."""
    import numpy as np

    fig, ax = _new((6.4, 4.4))
    pts = [g for g in groups if g.get("macs") and g.get("measured_ms") and g.get("dram_bytes")]
    xs = [2 * g["macs"] / g["dram_bytes"] for g in pts]
    ys = [2 * g["macs"] / (g["measured_ms"] / 1e3) for g in pts]
    lo, hi = (min(xs) / 3, max(xs) * 3) if xs else (0.1, 1000)
    grid = np.logspace(np.log10(lo), np.log10(max(hi, 3 * peak_flops / bandwidth)), 200)
    ax.plot(
        grid,
        np.minimum(peak_flops, bandwidth * grid),
        "k-",
        lw=1,
        label=f"roof: {peak_flops / 1e9:.0f} GFLOP/s, {bandwidth / 1e9:.0f} GB/s",
    )
    ax.scatter(xs, ys, s=24, color="tab:blue", label="fusion group (measured)")
    for g, x, y in zip(pts, xs, ys):
        ax.annotate(str(g["index"]), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("operational intensity (flop / predicted DRAM byte, fp32)")
    ax.set_ylabel("flop/s")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


# ---- block fusion (Lavin) -------------------------------------------------------------------
def _kernels(report: dict) -> list[tuple[dict, bool]]:
    """(kernel, fused?) in execution order: each block's layers, then its fused kernel."""
    return [(k, False) for r in report["blocks"] for k in r["layers"]] + [
        (r["fused"], True) for r in report["blocks"]
    ]


def roofline_figure(report: dict):
    """A log-log roofline: the device's roofs, one point per kernel (unfused layers, fused
    blocks), filled where measured (achieved flop/s), hollow where modeled (attainable)."""
    import numpy as np

    dev = report["device"]
    fig, ax = _new((8, 5.5))
    points = _kernels(report)
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
    ax.set_title(f"{report['model']} on {dev['name']}: roofline, one point per kernel", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def efficiency_gap_figure(report: dict):
    """Per kernel: ideal (compute at peak), roofline and measured time (µs, log scale); the gap
    between roofline and measured bars is the efficiency gap."""
    import numpy as np

    points = _kernels(report)
    fig, ax = _new((max(6.4, 0.32 * len(points) + 2), 4.2))
    x = np.arange(len(points))
    width = 0.28
    ideal = [k["ideal_s"] * 1e6 for k, _ in points]
    roof = [k["roofline_s"] * 1e6 for k, _ in points]
    measured = [(k.get("measured_s") or 0) * 1e6 for k, _ in points]
    ax.bar(x - width, ideal, width, color="tab:green", label="ideal (peak compute)")
    ax.bar(x, roof, width, color="tab:orange", label="roofline")
    if any(measured):
        ax.bar(x + width, measured, width, color="tab:blue", label="measured")
    ax.set_yscale("log")
    ax.set_xticks(x, [("▮ " if fused else "") + k["name"] for k, fused in points], rotation=90, fontsize=6)
    ax.set_ylabel("µs per kernel")
    ax.set_title(f"{report['model']}: efficiency gap per kernel (▮ = fused block)", fontsize=10)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def waterline_figure(report: dict):
    """Cumulative time over the kernel sequence, unfused and fused: Σ ideal, the waterline
    Σ max(ideal, bytes/B) and, where measured, Σ measured."""
    import numpy as np

    fig, ax = _new((6.4, 4.2))
    sequences = (
        ("unfused", [k for r in report["blocks"] for k in r["layers"]], "tab:blue"),
        ("fused", [r["fused"] for r in report["blocks"]], "tab:red"),
    )
    for label, kernels, color in sequences:
        if not kernels:
            continue
        steps = np.arange(1, len(kernels) + 1) / len(kernels)
        for key, style, what in (
            ("roofline_s", "-", "waterline"),
            ("ideal_s", ":", "ideal"),
            ("measured_s", "--", "measured"),
        ):
            if all(k.get(key) for k in kernels):
                cumulative = np.cumsum([k[key] * 1e6 for k in kernels])
                ax.step(steps, cumulative, where="post", color=color, ls=style, label=f"{label}: {what}")
    ax.set_xlabel("share of the kernel sequence")
    ax.set_ylabel("cumulative µs")
    ax.set_title(f"{report['model']}: waterline, {report['device']['name']}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig
