"""Block-fusion reports (``fuser.blockfusion.blocks_report``) as tables: the residual blocks
found by structure (what each computes, fused as one depth-first TVM kernel or why not, the
check against ORT when run), then the CUDA templates' cross-check: blocks with their
DRAM and roofline unfused -> fused, the groups not fused and why, the efficiency gap per
kernel when measured, and the waterline totals."""

from __future__ import annotations

from rich.console import Group as Lines
from rich.table import Table
from rich.text import Text

from fuser.units import human, human_bytes

from .format import bytes_pair, us
from .text import plain

GATES = ("squeeze-excite", "gated block")
JOINS = ("concat block", "C2f", "channel split")


def _found(blocks: list[dict]) -> str:
    """'8 residual blocks', or '7 blocks (3 residual, 4 gates)' when some blocks join their
    branches otherwise: a gate multiplies the input by a function of it (squeeze-excite), a
    concat joins them."""
    gates = sum(1 for b in blocks if b["kind"] in GATES)
    joins = sum(1 for b in blocks if b["kind"] in JOINS)
    if not gates and not joins:
        return f"{len(blocks)} residual blocks"
    counts = [(len(blocks) - gates - joins, "residual"), (gates, "gates"), (joins, "concats")]
    return f"{len(blocks)} blocks (" + ", ".join(f"{n} {what}" for n, what in counts if n) + ")"


def residual_table(report: dict) -> Table:
    """The residual blocks found by structure: what each computes, whether it became one
    depth-first TVM kernel (and why not), and the checks against ORT when run."""
    blocks = report.get("residual_blocks", [])
    checks = {c["block"]: c for c in report.get("residual_checks", [])}
    title = Text()
    title.append(plain(report["model"]))
    title.append(
        f": {_found(blocks)} found by structure, "
        f"{sum(1 for b in blocks if b['fused'])} fused, each one depth-first TVM kernel"
    )
    t = Table(title=title, title_justify="left")
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
        row = [plain(b["name"]), b["kind"], plain(b["description"]), state, plain(why)]
        if checks:
            c = checks.get(b["name"])
            row.append("-" if c is None else f"{c['rel_err']:.1e}")
        t.add_row(*row)
    return t


def blocks_view(report: dict) -> Lines:
    """Everything ``fuser blocks`` prints."""
    dev = report["device"]
    title = Text()
    title.append(plain(report["model"]))
    title.append(
        f": CUDA templates (a cross-check of those kernels): {len(report['blocks'])} blocks, "
        f"{report['kernels']} distinct kernels (model for {dev['name']}, {report['elem_bytes']}-byte "
        "storage)"
    )
    t = Table(title=title, title_justify="left")
    for col in ("block", "shape", "tile", "MACs", "DRAM unfused→fused", "I (flop/B)", "roofline µs"):
        t.add_column(col, justify="left" if col in ("block", "shape", "tile") else "right")
    for r in report["blocks"]:
        unfused_roof = sum(layer["roofline_s"] for layer in r["layers"])
        t.add_row(
            plain(r["name"]),
            r["description"],
            "×".join(map(str, r["schedule"]["tile"])),
            human(r["macs"]),
            bytes_pair(r["dram_bytes_unfused"], r["dram_bytes_fused"]),
            f"{r['intensity_unfused']:.0f}→{r['intensity_fused']:.0f}",
            f"{us(unfused_roof)}→{us(r['fused']['roofline_s'])}",
        )
    parts = [residual_table(report), t] if "residual_blocks" in report else [t]
    if report["not_fused"]:
        nt = Table(title="no CUDA template", title_justify="left")
        nt.add_column("nodes")
        nt.add_column("reason")
        for r in report["not_fused"]:
            nodes = r["nodes"]
            nt.add_row(plain(f"{nodes[0]} … {nodes[-1]} ({len(nodes)})"), plain(r["reason"]))
        parts.append(nt)
    if report["measured_on"]:
        parts.append(efficiency_table(report))
    parts.append(totals_line(report))
    return Lines(*parts)


def efficiency_table(report: dict) -> Table:
    gt = Table(title=f"efficiency gap (measured on {report['measured_on']})", title_justify="left")
    for col in ("kernel", "op", "ideal µs", "roofline µs", "measured µs", "efficiency", "GFLOP/s"):
        gt.add_column(col, justify="left" if col in ("kernel", "op") else "right")
    for r in report["blocks"]:
        for k in r["layers"] + [r["fused"]]:
            eff = k.get("efficiency")
            gt.add_row(
                plain(k["name"]),
                k["op"],
                us(k["ideal_s"]),
                us(k["roofline_s"]),
                us(k.get("measured_s")),
                "-" if eff is None else f"{100 * eff:.1f}%",
                "-" if "achieved_flops" not in k else f"{k['achieved_flops'] / 1e9:,.1f}",
            )
    return gt


def totals_line(report: dict) -> Text:
    w = report["waterline"]
    tot = report["totals"]
    return Text.assemble(
        ("totals", "bold"),
        f": {human(tot['macs'], 'MACs')} in blocks; "
        f"DRAM {human_bytes(tot['dram_bytes_unfused'])} unfused → "
        f"{human_bytes(tot['dram_bytes_fused'])} fused; "
        f"waterline {us(w['unfused']['waterline_s'])} µs unfused "
        f"({w['unfused']['kernels']} kernels) → {us(w['fused']['waterline_s'])} µs fused "
        f"({w['fused']['kernels']} kernels); measured {us(w['unfused']['measured_s'])} → "
        f"{us(w['fused']['measured_s'])} µs",
    )
