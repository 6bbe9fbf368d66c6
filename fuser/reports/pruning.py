"""Pruning reports (``PruneReport.to_dict()``) as tables: per channel group the channels it
keeps, params and MACs before and after; the channel counts left; and a warning when a pruned
count is not a multiple of this CPU's fp32 vector width (ONNX Runtime's NCHWc block on x86:
convs with such counts fall off its blocked kernels, and a pruned model can then run slower
than the original)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group as Lines
from rich.table import Table
from rich.text import Text

from fuser.units import human

from . import hardware
from .format import change, short
from .text import plain


def prune_table(report: dict, model: str) -> Table:
    title = Text()
    title.append(plain(model))
    title.append(": channel groups")
    t = Table(title=title, title_justify="left")
    for col in ("#", "layers", "channels", "params", "MACs"):
        t.add_column(col, justify="left" if col == "layers" else "right")
    for g in report["groups"]:
        fixed = "" if g["prunable"] else " (fixed)"
        t.add_row(
            str(g["index"]),
            plain(g["name"]),
            f"{g['channels']} -> {g['kept']}{fixed}",
            f"{short(g['params_before'])} -> {short(g['params_after'])}",
            f"{short(g['macs_before'])} -> {short(g['macs_after'])}",
            style=None if g["kept"] < g["channels"] else "dim",
        )
    return t


def kept_counts(report: dict) -> list[int]:
    """The distinct channel counts the pruned groups keep, ascending."""
    return sorted({g["kept"] for g in report["groups"] if g["kept"] < g["channels"]})


def misaligned(report: dict, lanes: int) -> list[dict]:
    """Pruned groups whose kept count is not a multiple of ``lanes``."""
    return [g for g in report["groups"] if g["kept"] < g["channels"] and g["kept"] % lanes]


def alignment_warning(report: dict, round_to: int | None) -> Text | None:
    isa, lanes = hardware.vector_isa()
    if lanes <= 1:
        return None
    bad = misaligned(report, lanes)
    if not bad:
        return None
    counts = sorted({g["kept"] for g in bad})
    text = Text("warning: ", style="yellow")
    text.append(
        f"{len(bad)} pruned channel groups keep counts that are not multiples of {lanes} "
        f"(this CPU's {isa} fp32 lanes, ONNX Runtime's NCHWc block): {', '.join(map(str, counts))}. "
        f"Such convs can fall off blocked kernels and run slower than before pruning"
        + (
            "; frozen channels (listed above) leave the remainder"
            if round_to and round_to % lanes == 0
            else f"; --round-to {lanes} aligns them"
        )
        + "."
    )
    return text


def prune_view(report: dict, model: str, output: str, round_to: int | None = None) -> Lines:
    """Everything ``fuser prune`` prints: the groups, what stayed fixed or blocked, the
    channel counts left, the vector-width warning and the totals."""
    parts: list = [prune_table(report, model)]
    for reason in dict.fromkeys(g["frozen_reason"] for g in report["groups"] if g["frozen_reason"]):
        parts.append(plain(f"fixed: {reason}", "dim"))
    for b in report["blocked"]:
        parts.append(Text.assemble(("blocked ", "yellow"), plain(_blocked(b))))
    counts = kept_counts(report)
    if counts:
        parts.append(plain(f"channel counts left: {', '.join(map(str, counts))}"))
    warning = alignment_warning(report, round_to)
    if warning is not None:
        parts.append(warning)
    parts.append(totals_line(report, output))
    return Lines(*parts)


def _blocked(b: dict) -> str:
    """A Blocked (as its dict): 'node (op): reason'."""
    return f"{b['node']} ({b['op']}): {b['reason']}"


def totals_line(report: dict, output: str) -> Text:
    return Text.assemble(
        ("total", "bold"),
        plain(
            f": MACs {human(report['macs_before'])} -> {human(report['macs_after'])} "
            f"({change(report['macs_before'], report['macs_after'])}), params "
            f"{report['params_before']:,} -> {report['params_after']:,} "
            f"({change(report['params_before'], report['params_after'])}); "
            f"{report['channels_removed']} channels removed in {report.get('seconds', 0):.1f} s; "
            f"wrote {output}"
        ),
    )


def layer_rows(report: dict) -> Sequence[dict]:
    """Per channel group, for the report page: layers, channels before/after, params, MACs."""
    return [
        {
            "index": g["index"],
            "name": g["name"],
            "layers": g["layers"],
            "channels": g["channels"],
            "kept": g["kept"],
            "prunable": g["prunable"],
            "frozen_reason": g["frozen_reason"],
            "params_before": g["params_before"],
            "params_after": g["params_after"],
            "macs_before": g["macs_before"],
            "macs_after": g["macs_after"],
        }
        for g in report["groups"]
    ]
