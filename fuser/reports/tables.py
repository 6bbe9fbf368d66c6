"""The tables of `fuser info`, `fuser optimize` and `fuser zoo list`, built from the same dicts
their ``--json`` prints."""

from __future__ import annotations

from rich.console import Group as Lines
from rich.table import Table
from rich.text import Text

from fuser.units import human, human_bytes

from .text import plain


def info_view(report: dict, model: str, show_nodes: bool = False) -> Lines:
    """``fuser.analysis.analyze``'s report: inputs and outputs, costs by op type, totals."""
    head = Text()
    head.append(plain(model, "bold"))
    head.append("  inputs: ")
    head.append(plain(", ".join(f"{i['name']} {i['shape']}" for i in report["inputs"])))
    head.append("  outputs: ")
    head.append(plain(", ".join(f"{o['name']} {o['shape']}" for o in report["outputs"])))
    by_op: dict[str, list[int]] = {}
    for r in report["per_node"]:
        agg = by_op.setdefault(r["op"], [0, 0, 0, 0])
        agg[0] += 1
        agg[1] += r["macs"]
        agg[2] += r["params"]
        agg[3] += r["activation_bytes"]
    t = Table(title="by op type", title_justify="left")
    for col in ("op", "count", "MACs", "% MACs", "params", "activations"):
        t.add_column(col, justify="left" if col == "op" else "right")
    total_macs = max(report["macs"], 1)
    for op, (count, macs, params, act) in sorted(by_op.items(), key=lambda kv: -kv[1][1]):
        t.add_row(
            plain(op),
            str(count),
            human(macs),
            f"{100 * macs / total_macs:.1f}",
            human(params),
            human_bytes(act),
        )
    parts = [head, t]
    if show_nodes:
        nt = Table(title="nodes", title_justify="left")
        for col in ("node", "op", "output", "MACs", "params"):
            nt.add_column(col, justify="right" if col in ("MACs", "params") else "left")
        for r in report["per_node"]:
            nt.add_row(
                plain(r["name"]), plain(r["op"]), str(r["output_shape"]), human(r["macs"]), human(r["params"])
            )
        parts.append(nt)
    parts.append(
        Text.assemble(
            ("total", "bold"),
            f": {report['nodes']} nodes, {human(report['macs'], 'MACs')}, "
            f"{report['params']:,} params ({human(report['params'])}), "
            f"weights {human_bytes(report['weight_bytes'])}, "
            f"activations {human_bytes(report['activation_bytes'])}",
        )
    )
    return Lines(*parts)


def import_note(stats: dict | None) -> str:
    """'566 nodes in the file: 308 Constant nodes became constants, 24 shape nodes folded'."""
    if not stats:
        return ""
    parts = []
    if stats.get("constant_nodes"):
        parts.append(f"{stats['constant_nodes']} Constant nodes became constants")
    if stats.get("folded"):
        parts.append(f"{stats['folded']} shape nodes folded")
    if stats.get("defaults_taken"):
        names = ", ".join(stats["defaults_taken"])
        parts.append(f"inputs with initializers taken as constants, no longer inputs: {names}")
    return f"{stats['nodes_in_file']} nodes in the file" + (": " + ", ".join(parts) if parts else "")


def optimize_view(summary: dict) -> Lines:
    """`fuser optimize`'s summary (its --json dict): import folding, then each pass."""
    title = Text()
    title.append(plain(f"{summary['input']} -> {summary['output']}"))
    t = Table(title=title, title_justify="left")
    for col in ("pass", "changed", "nodes", "what"):
        t.add_column(col)
    imported = summary.get("import")
    if imported:
        t.add_row(
            "import (folding)",
            "yes"
            if imported["nodes_in_file"] != imported["nodes"] or imported.get("defaults_taken")
            else "no",
            f"{imported['nodes_in_file']} -> {imported['nodes']}",
            plain(import_note(imported)),
        )
    for s in summary["steps"]:
        what = ", ".join(f"{k}: {v}" for k, v in s["stats"].items()) or "-"
        t.add_row(
            s["name"], "yes" if s["changed"] else "no", f"{s['nodes_before']} -> {s['nodes_after']}", what
        )
    first = imported["nodes_in_file"] if imported else summary["nodes_before"]
    line = f"nodes {first} -> {summary['nodes_after']}"
    if imported and first != summary["nodes_before"]:
        before, after = summary["nodes_before"], summary["nodes_after"]
        line += f" ({first} -> {before} at import, {before} -> {after} by the passes)"
    if summary["macs_after"] != summary["macs_before"]:
        line += f"; MACs {human(summary['macs_before'])} -> {human(summary['macs_after'])}"
    line += "; wrote "
    return Lines(t, Text(line).append(plain(summary["output"])))


def zoo_table(rows: list[dict]) -> Table:
    t = Table(title="fuser zoo", title_justify="left")
    for col in ("name", "input", "params (reference)", "description"):
        t.add_column(col)
    for r in rows:
        ref = r.get("params_reference")
        t.add_row(
            r["name"],
            "x".join(map(str, r["input_shape"])),
            f"{ref:,}" if ref else "-",
            r.get("description", ""),
        )
    return t
