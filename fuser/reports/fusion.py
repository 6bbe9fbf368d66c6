"""Fusion plans for people: groups ranked by DRAM with their fit, every split explained,
the buffer sweep as a table and a plot.

Plans are read through ``Plan.to_dict()`` (the JSON every plan has), so a saved plan, a
fresh one and the report page show the same numbers. Terms:
  fit         a group's buffer need F_β as a share of the buffer (over 100%: it does not fit;
              only a single op may, and it then streams from DRAM unfused)
  peak buffer the largest F_β over *every* group, and apart the largest among those that fit
  rank        1 = the group moving the most DRAM
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from rich.console import Group as Lines
from rich.table import Table
from rich.text import Text

from fuser.units import format_size

from .format import kb, mb
from .text import plain

SPLIT_ITEMS = 5  # culprits and cut edges listed per split in the terminal (the page lists all)


def plan_dict(plan) -> dict:
    """The plan's JSON form (a Plan or a dict already)."""
    return plan if isinstance(plan, dict) else plan.to_dict()


@dataclass
class GroupRow:
    """One group of a plan with what the tables and the page show about it."""

    index: int  # position in the plan (topological order); the group's id
    rank: int  # 1 = most DRAM
    ops: list[str]
    buffer_bytes: int
    dram_bytes: int
    fits: bool
    valid: bool
    fit: float  # buffer_bytes / buffer limit
    share: float  # of the plan's DRAM
    terms: dict = field(default_factory=dict)  # weight/feature/input/output bytes (and tiles)
    splits: list[int] = field(default_factory=list)  # the splits on the way to this group

    @property
    def status(self) -> str:
        if self.fits:
            return "fits"
        return "alone, over the buffer" if len(self.ops) == 1 else "over the buffer"


def group_rows(plan) -> list[GroupRow]:
    """Every group of ``plan``, in plan order, with rank, fit and share of DRAM."""
    data = plan_dict(plan)
    limit = max(int(data["buffer_bytes"]), 1)
    total = max(sum(int(g["dram_bytes"]) for g in data["groups"]), 1)
    split_sets = [set(s["group"]) for s in data.get("splits", [])]
    rows = []
    for k, g in enumerate(data["groups"]):
        ops = list(g["ops"])
        rows.append(
            GroupRow(
                index=k,
                rank=0,
                ops=ops,
                buffer_bytes=int(g["buffer_bytes"]),
                dram_bytes=int(g["dram_bytes"]),
                fits=bool(g.get("fits", g["buffer_bytes"] < limit)),
                valid=bool(g.get("valid", True)),
                fit=int(g["buffer_bytes"]) / limit,
                share=int(g["dram_bytes"]) / total,
                terms={
                    t: g[t]
                    for t in ("weight_bytes", "feature_bytes", "input_bytes", "output_bytes", "tiles")
                    if t in g
                },
                splits=[i for i, s in enumerate(split_sets) if ops[0] in s and s.issuperset(ops)],
            )
        )
    for rank, row in enumerate(sorted(rows, key=lambda r: (-r.dram_bytes, r.index)), 1):
        row.rank = rank
    return rows


def by_dram(rows: Sequence[GroupRow]) -> list[GroupRow]:
    return sorted(rows, key=lambda r: r.rank)


def peaks(rows: Sequence[GroupRow]) -> dict:
    """Peak buffer need over every group, over the groups that fit, and what does not fit."""
    over = [r for r in rows if not r.fits]
    return {
        "peak_buffer_bytes": max((r.buffer_bytes for r in rows), default=0),
        "peak_fitting_buffer_bytes": max((r.buffer_bytes for r in rows if r.fits), default=0),
        "groups_over_buffer": len(over),
        "ops_over_buffer": sum(len(r.ops) for r in over),
    }


def _name(op: str, names: Mapping[str, str] | None) -> str:
    return names.get(op, op) if names else op


def span(ops: Sequence[str], names: Mapping[str, str] | None = None) -> str:
    """'first' or 'first .. last' (full names)."""
    first = _name(ops[0], names)
    return first if len(ops) == 1 else f"{first} .. {_name(ops[-1], names)}"


# ---- terminal -------------------------------------------------------------------------------
def plan_header(plan, seconds: float | None = None) -> Text:
    d = plan_dict(plan)
    search = d.get("search", {})
    text = Text()
    text.append(plain(d["model"], "bold"))
    text.append(
        f"  {d['style'].upper()}, buffer {format_size(d['buffer_bytes'])} "
        f"({d.get('element_bytes', 1)} B/element), {search.get('search', '?')} search, "
        f"{search.get('split', '?')} split, {search.get('plans_evaluated', '?')} plans"
        + (f" in {seconds:.1f} s" if seconds is not None else "")
    )
    adopted = search.get("adopted")
    if adopted:  # partition(gap=True) replaced the search's plan by the proven optimum
        text.append(
            f"\n  the search's plan moved {mb(adopted['search_dram_bytes'])} MB; "
            f"the optimum ({adopted['from']}) moves less and is the plan"
        )
    if d.get("images", 1) > 1:  # sized for one image: fuser's group kernels run images outermost
        text.append(
            f"\n  planned per image of a batch of {d['images']} (bytes below are one image's); "
            f"the batch moves {mb(d['batch_dram_bytes'])} MB"
        )
    return text


def plan_table(plan) -> Table:
    """No fusion and layer fusion (each op with its elementwise tail, as a compiler fuses without
    a plan) against this plan: DRAM, groups, peak buffer over every group."""
    d = plan_dict(plan)
    rows = group_rows(d)
    fused = [r for r in rows if len(r.ops) > 1]
    p = peaks(rows)
    t = Table(title="plan", title_justify="left")
    for col in (
        "",
        "DRAM MB",
        "vs no fusion",
        "groups",
        "fused groups",
        "ops fused",
        "peak buffer KB",
        "over buffer",
    ):
        t.add_column(col, justify="left" if not col else "right")
    t.add_row(
        "no fusion",
        mb(d["no_fusion_dram_bytes"]),
        "1.000",
        str(sum(len(r.ops) for r in rows)),
        "0",
        "0",
        "-",
        "-",
    )
    if d.get("layer_fusion_dram_bytes"):  # what TVM's FuseOps or ONNX Runtime moves: the bar to clear
        t.add_row(
            "layer fusion",
            mb(d["layer_fusion_dram_bytes"]),
            f"{d['layer_fusion_dram_bytes'] / max(d['no_fusion_dram_bytes'], 1):.3f}",
            "-",
            "-",
            "-",
            "-",
            "-",
        )
    ratio = d["dram_bytes"] / max(d["no_fusion_dram_bytes"], 1)
    t.add_row(
        Text("this plan", style="bold"),
        Text(mb(d["dram_bytes"]), style="bold"),
        Text(f"{ratio:.3f}", style="bold"),
        str(len(rows)),
        str(len(fused)),
        str(sum(len(r.ops) for r in fused)),
        kb(p["peak_buffer_bytes"]),
        f"{p['groups_over_buffer']} groups" if p["groups_over_buffer"] else "0",
    )
    return t


def groups_table(plan, names: Mapping[str, str] | None = None, top: int | None = 10) -> Table:
    """Groups ranked by DRAM (``top`` of them; None or 0: all), with fit (%) and status."""
    d = plan_dict(plan)
    rows = by_dram(group_rows(d))
    shown = rows[:top] if top else rows
    title = "groups by DRAM" + (
        f" (top {len(shown)} of {len(rows)}; --top 0 lists all)" if len(shown) < len(rows) else ""
    )
    t = Table(title=title, title_justify="left")
    for col in (
        "rank",
        "group",
        "ops",
        "first .. last",
        "buffer KB",
        "fit %",
        "DRAM KB",
        "% of DRAM",
        "fits",
    ):
        t.add_column(col, justify="left" if col in ("first .. last", "fits") else "right")
    for r in shown:
        t.add_row(
            str(r.rank),
            str(r.index),
            str(len(r.ops)),
            plain(span(r.ops, names)),
            kb(r.buffer_bytes),
            f"{100 * r.fit:.0f}",
            kb(r.dram_bytes),
            f"{100 * r.share:.1f}",
            Text("yes" if r.fits else f"no ({r.status})", style="" if r.fits else "red"),
        )
    return t


def splits_table(plan, names: Mapping[str, str] | None = None) -> Table:
    """Every split of an invalid group: culprits, cut edges, buffer need before and after, rule."""
    d = plan_dict(plan)
    splits = d.get("splits", [])
    t = Table(title=f"splits of invalid groups ({len(splits)})", title_justify="left")
    for col in (
        "#",
        "group ops",
        "buffer KB before",
        "culprits (KB)",
        "cut edges",
        "buffer KB after",
        "rule",
    ):
        t.add_column(col, justify="right" if "KB before" in col or col in ("#", "group ops") else "left")
    for i, s in enumerate(splits):
        culprits = _listed(
            [f"{_name(c['op'], names)} ({kb(c.get('score_bytes', 0))})" for c in s["culprits"]], "culprits"
        )
        cuts = _listed(
            [f"{_name(c['from'], names)} -> {_name(c['to'], names)}" for c in s["cut_edges"]], "edges"
        )
        t.add_row(
            str(i),
            str(len(s["group"])),
            kb(s["buffer_bytes_before"]),
            plain(culprits),
            plain(cuts),
            " + ".join(kb(b) for b in s["buffer_bytes_after"]),
            plain(s["rule"]),
        )
    return t


def _listed(items: Sequence[str], what: str, most: int = SPLIT_ITEMS) -> str:
    """One item a line, the first ``most`` of them and how many more (``--json`` has all)."""
    if not items:
        return "-"
    more = len(items) - most
    return "\n".join(items[:most]) + (f"\n(+{more} more {what}: --json lists all)" if more > 0 else "")


def unfusable_line(plan, names: Mapping[str, str] | None = None) -> Text | None:
    d = plan_dict(plan)
    if not d.get("unfusable"):
        return None
    text = Text(f"{len(d['unfusable'])} ops can never be fused (each fills the buffer alone): ")
    text.append(plain(", ".join(_name(u["op"], names) for u in d["unfusable"])))
    return text


def plan_view(plan, seconds: float | None = None, names=None, top: int | None = 10, splits: bool = True):
    """Everything ``fuser fuse`` prints for one plan."""
    parts = [plan_header(plan, seconds), plan_table(plan), groups_table(plan, names, top)]
    if splits and plan_dict(plan).get("splits"):
        parts.append(splits_table(plan, names))
    line = unfusable_line(plan, names)
    if line is not None:
        parts.append(line)
    line = gap_line(plan)
    if line is not None:
        parts.append(line)
    return Lines(*parts)


def gap_line(plan) -> Text | None:
    """'within X% of optimal' (or of a proven lower bound), when the plan carries its optimum."""
    optimum = plan_dict(plan).get("optimum")
    if not optimum or optimum["bytes"] <= 0:
        return None
    gap = plan_dict(plan)["dram_bytes"] / optimum["bytes"] - 1
    kind = "optimal" if optimum["exact"] else "a proven lower bound"
    return Text(f"within {100 * gap:.1f}% of {kind} ({mb(optimum['bytes'])} MB, {optimum['method']})")


def sweep_rows(results) -> list[dict]:
    """(plan, seconds) pairs as the sweep's rows."""
    rows = []
    for plan, seconds in results:
        d = plan_dict(plan)
        rows.append(
            {
                "buffer_bytes": d["buffer_bytes"],
                "dram_bytes": d["dram_bytes"],
                "no_fusion_dram_bytes": d["no_fusion_dram_bytes"],
                "groups": len(d["groups"]),
                "unfusable": len(d.get("unfusable", [])),
                "seconds": seconds,
            }
        )
    return rows


def sweep_table(model: str, rows: Sequence[dict]) -> Table:
    title = Text()
    title.append(plain(model))
    title.append(": DRAM against buffer size")
    t = Table(title=title, title_justify="left")
    for col in ("buffer", "DRAM MB", "no fusion MB", "vs no fusion", "groups", "unfusable ops", "seconds"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(
            format_size(r["buffer_bytes"]),
            mb(r["dram_bytes"]),
            mb(r["no_fusion_dram_bytes"]),
            f"{r['dram_bytes'] / max(r['no_fusion_dram_bytes'], 1):.3f}",
            str(r["groups"]),
            str(r["unfusable"]),
            "-" if r.get("seconds") is None else f"{r['seconds']:.1f}",
        )
    return t
