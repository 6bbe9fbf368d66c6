"""What fuser bought, before -> after: the model as given against what fuser hands back
(optimized, pruned when asked, run as the fusion plan's groups). One table for the terminal
and the page, and one line for ``make demo``.

  nodes, MACs, params      of the graph as given and of the final graph
  activations              bytes every op writes, summed (what moves without fusion)
  peak activations         the most activation bytes alive at once (fuser.analysis.memory)
  DRAM                     as given: every op alone (no fusion); after: the fusion plan's groups
  ONNX Runtime             median latency of both, timed interleaved in the same run (--measure)
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from fuser.units import format_size, human, human_bytes

from .format import change


def before_after(data: dict) -> dict[str, tuple]:
    """{quantity: (before, after)} from a report's data (``fuser.reports.model_report``)."""
    stages = data["summary"]["stages"]
    first, last = stages[0], stages[-1]
    pairs = {
        "nodes": (first["nodes"], last["nodes"]),
        "macs": (first["macs"], last["macs"]),
        "params": (first["params"], last["params"]),
        "activation_bytes": (first["activation_bytes"], last["activation_bytes"]),
        "peak_activation_bytes": (first["peak_activation_bytes"], last["peak_activation_bytes"]),
        "dram_bytes": (first["no_fusion_dram_bytes"], data["summary"]["fused_dram_bytes"]),
    }
    if first.get("ort_ms") is not None and last.get("ort_ms") is not None:
        pairs["ort_ms"] = (first["ort_ms"], last["ort_ms"])
    return pairs


LABELS = {
    "nodes": ("nodes", str),
    "macs": ("MACs", human),
    "params": ("params", human),
    "activation_bytes": ("activations", human_bytes),
    "peak_activation_bytes": ("peak activations", human_bytes),
    "dram_bytes": ("DRAM", lambda n: f"{n / 1e6:.2f} MB"),
    "ort_ms": ("ONNX Runtime", lambda x: f"{x:.2f} ms"),
}


def what_changed(data: dict) -> str:
    """How the 'after' was made: 'optimized, pruned 30%, fused at 256KB (LBDF)'."""
    stages = [s["stage"] for s in data["summary"]["stages"]]
    parts = ["optimized"]
    if "pruned" in stages:
        parts.append(f"pruned {100 * data['pruning']['ratio']:g}%")
    parts.append(f"fused at {format_size(data['summary']['buffer_bytes'])} ({data['plan']['style'].upper()})")
    return ", ".join(parts)


def before_after_line(data: dict) -> str:
    """'before -> after (optimized, fused at 256KB (LBDF)): nodes 153 -> 100, ...'."""
    items = []
    for key, (before, after) in before_after(data).items():
        label, fmt = LABELS[key]
        items.append(f"{label} {fmt(before)} -> {fmt(after)} ({change(before, after)})")
    return f"before -> after ({what_changed(data)}): " + ", ".join(items)


def before_after_table(data: dict) -> Table:
    title = Text(f"what fuser bought: the model as given -> {what_changed(data)}")
    t = Table(title=title, title_justify="left")
    for col in ("", "before", "after", "change"):
        t.add_column(col, justify="left" if not col else "right")
    for key, (before, after) in before_after(data).items():
        label, fmt = LABELS[key]
        t.add_row(label, fmt(before), fmt(after), change(before, after))
    return t
