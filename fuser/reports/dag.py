"""The graph as a picture: a layered DAG drawn by Graphviz ``dot`` as static SVG.

One box per op (its op type; the tooltip names it), coloured by its fusion group; every fused
group (more than one op) framed as a cluster labelled G<k>. Every box and frame links to
``#group-<k>``, the group's section of the report page, so the picture works with JavaScript
off; the page's script only adds highlighting. Ops of single-op groups are grey, and a group
over the buffer has a red border. Same data, same SVG (``dot`` is deterministic).
"""

from __future__ import annotations

import shutil
import subprocess

from fuser.ir import FuserError

from .text import visible

# Fused groups cycle through these fills (ColorBrewer Set3 and Pastel1: light, distinct).
PALETTE = (
    "#8dd3c7",
    "#ffffb3",
    "#bebada",
    "#fb8072",
    "#80b1d3",
    "#fdb462",
    "#b3de69",
    "#fccde5",
    "#bc80bd",
    "#ccebc5",
    "#ffed6f",
    "#decbe4",
)
SINGLE = "#e4e4e4"
OVER = "#d62728"
DOT_TIMEOUT_S = 120


def group_colour(index: int, size: int) -> str:
    return PALETTE[index % len(PALETTE)] if size > 1 else SINGLE


def _q(text: object) -> str:
    """A DOT double-quoted string."""
    return '"' + visible(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(picture: dict, groups: list[dict]) -> str:
    """DOT source for the report's ``graph`` (nodes, edges) coloured by ``groups``."""
    by_index = {g["index"]: g for g in groups}
    members: dict[int, list[int]] = {}
    for i, n in enumerate(picture["nodes"]):
        members.setdefault(n["group"], []).append(i)
    lines = [
        "digraph fusion {",
        '  graph [rankdir=TB, nodesep=0.12, ranksep=0.2, fontname="DejaVu Sans", fontsize=9, '
        'bgcolor="transparent", id="dag"];',
        '  node [shape=box, style="rounded,filled", fontname="DejaVu Sans", fontsize=9, height=0.24, '
        'width=0.5, margin="0.06,0.02", penwidth=0.7, color="#555555"];',
        '  edge [arrowsize=0.45, penwidth=0.6, color="#777777"];',
    ]

    def node_line(i: int, indent: str) -> str:
        n = picture["nodes"][i]
        k = n["group"]
        g = by_index.get(k)
        size = len(g["ops"]) if g else 1
        shape = "×".join(map(str, n["shape"]))
        tip = f"{n['label']} ({n['op']}) → {shape}" + (f" · group {k}" if k is not None else "")
        attrs = [
            f"label={_q(n['op'])}",
            f'id="op-{i}"',
            f'class="op g{k}"' if k is not None else 'class="op"',
            f'fillcolor="{group_colour(k, size) if k is not None else SINGLE}"',
            f"tooltip={_q(tip)}",
        ]
        if k is not None:
            attrs.append(f'href="#group-{k}"')
            if g and not g["fits"]:
                attrs += [f'color="{OVER}"', "penwidth=1.6"]
        return f"{indent}n{i} [{', '.join(attrs)}];"

    for k, idx in members.items():
        g = by_index.get(k)
        if k is None or not g or len(g["ops"]) == 1:
            lines += [node_line(i, "  ") for i in idx]
            continue
        tip = f"group {k}: {len(g['ops'])} ops, {g['dram_bytes']:,} B DRAM, buffer {100 * g['fit']:.0f}%"
        lines.append(f"  subgraph cluster_g{k} {{")
        lines.append(
            f'    graph [label="G{k}", id="frame-{k}", class="frame g{k}", href="#group-{k}", '
            f'tooltip={_q(tip)}, style="rounded,dashed", color="#444444", fontsize=8, labeljust=l];'
        )
        lines += [node_line(i, "    ") for i in idx]
        lines.append("  }")
    lines += [f"  n{a} -> n{b};" for a, b in picture["edges"]]
    lines.append("}")
    return "\n".join(lines) + "\n"


def require_dot() -> str:
    """The path of Graphviz's ``dot``; a FuserError saying how to get it when missing."""
    exe = shutil.which("dot")
    if exe is None:
        raise FuserError(
            "the report draws the graph with Graphviz, whose `dot` is not installed: "
            "apt-get install graphviz (or brew install graphviz), or pass --no-graph"
        )
    return exe


def dot_svg(dot_source: str) -> str:
    """Run Graphviz ``dot`` on ``dot_source``; the <svg> element (no XML prolog)."""
    exe = require_dot()
    try:
        done = subprocess.run(
            [exe, "-Tsvg"], input=dot_source.encode(), capture_output=True, timeout=DOT_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise FuserError(
            f"Graphviz took over {DOT_TIMEOUT_S} s to lay out the graph; pass --no-graph for this model"
        ) from None
    if done.returncode != 0:
        first = done.stderr.decode(errors="replace").strip().splitlines()[:1]
        raise FuserError(f"Graphviz dot failed: {first[0] if first else 'exit ' + str(done.returncode)}")
    svg = done.stdout.decode()
    return svg[svg.index("<svg") :]


def graph_svg(picture: dict, groups: list[dict]) -> str:
    return dot_svg(to_dot(picture, groups))
