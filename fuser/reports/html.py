"""The report page: one self-contained HTML file drawn from a report's data
(``fuser.reports.model_report``), readable with JavaScript off.

Everything is static HTML and inline SVG: the graph (Graphviz), the plots (matplotlib), the
tables and bar charts (CSS). Boxes in the graph link to their group's section; the script at
the end only adds highlighting of a group's ops and a card that follows the pointer. No file,
font or script is loaded from anywhere at view time. Every number a test compares is also in
a ``data-*`` attribute, exactly as in the JSON.
"""

from __future__ import annotations

import html
from importlib import resources

from fuser.units import format_size, human, human_bytes

from . import plots
from .dag import graph_svg, group_colour
from .format import change, kb, mb, us
from .pruning import alignment_warning, kept_counts
from .summary import LABELS, before_after, what_changed
from .tables import import_note
from .text import visible


def _e(text: object) -> str:
    return html.escape(visible(text), quote=True)


def _asset(name: str) -> str:
    return resources.files("fuser.reports").joinpath("assets", name).read_text()


def _attrs(**values) -> str:
    """' data-dram-bytes="123"' for each value (None left out)."""
    return "".join(
        f' data-{k.replace("_", "-")}="{_e(v if not isinstance(v, bool) else str(v).lower())}"'
        for k, v in values.items()
        if v is not None
    )


def _group_attrs(g: dict) -> str:
    """The numbers of a group a test (or a script) reads back, exactly as in the JSON."""
    return _attrs(
        group=g["index"],
        rank=g["rank"],
        dram_bytes=g["dram_bytes"],
        buffer_bytes=g["buffer_bytes"],
        fits=g["fits"],
        measured_ms=g["measured_ms"],
    )


def _table(head: list[str], rows: list[list[str]], cls: str = "", numeric_from: int = 1) -> str:
    """A table; cells are HTML already. Columns from ``numeric_from`` are right-aligned."""
    th = "".join(f"<th{' class=num' if i >= numeric_from else ''}>{h}</th>" for i, h in enumerate(head))
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if i >= numeric_from else ''}>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _figure(svg: str, caption: str, fig_id: str) -> str:
    return f'<figure id="{fig_id}">{svg}<figcaption>{caption}</figcaption></figure>'


BAR_PX = 110  # a full bar


def _bar(fraction: float, over: bool = False) -> str:
    width = max(0.0, min(fraction, 1.0)) * BAR_PX
    return f'<span class="bar{" over" if over else ""}" style="width:{width:.0f}px"></span>'


def _swatch(g: dict) -> str:
    return f'<span class="swatch" style="background:{group_colour(g["index"], len(g["ops"]))}"></span>'


def _ms(x) -> str:
    return "-" if x is None else f"{x:.3f}"


# ---- sections -------------------------------------------------------------------------------
def _header(data: dict) -> str:
    m, env = data["model"], data["environment"]
    shapes = ", ".join(f"{i['name']} {i['dtype']}[{','.join(map(str, i['shape']))}]" for i in m["inputs"])
    outs = ", ".join(f"{o['name']} [{','.join(map(str, o['shape']))}]" for o in m["outputs"])
    vers = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v) + (
        "" if env["versions"].get("apache-tvm") else " (TVM not installed)"
    )
    rows = [
        ("model", f"<b>{_e(m['name'])}</b> from <code>{_e(m['source'])}</code>"),
        ("inputs", _e(shapes)),
        ("outputs", _e(outs)),
        ("versions", _e(vers)),
        ("CPU", _e(f"{env['cpu']} ({env['vector_isa']}, {env['vector_lanes']} fp32 lanes)")),
    ]
    if data.get("command"):
        rows.append(
            (
                "reproduce",
                f'<code id="command">{_e(data["command"])}</code> '
                '<button class="js-only" type="button" data-copy="command">copy</button>',
            )
        )
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<header><h1>fuser report: {_e(m["name"])}</h1><table class="meta">{body}</table></header>'


def _summary(data: dict) -> str:
    pairs = before_after(data)
    rows = []
    for key, (before, after) in pairs.items():
        label, fmt = LABELS[key]
        rows.append(
            f'<tr data-quantity="{key}"{_attrs(before=before, after=after)}><th>{_e(label)}</th>'
            f'<td class="num">{_e(fmt(before))}</td><td class="num">{_e(fmt(after))}</td>'
            f'<td class="num">{_e(change(before, after))}</td></tr>'
        )
    stages = data["summary"]["stages"]
    stage_rows = [
        [
            _e(s["stage"]),
            str(s["nodes"]),
            _e(human(s["macs"])),
            _e(human(s["params"])),
            _e(human_bytes(s["activation_bytes"])),
            _e(human_bytes(s["peak_activation_bytes"])),
            mb(s["no_fusion_dram_bytes"]),
            _ms(s.get("ort_ms")),
        ]
        for s in stages
    ]
    plan = data["plan"]
    note = (
        "DRAM before: every op alone (no fusion); after: the fusion plan's groups at "
        f"{_e(format_size(plan['buffer_bytes']))}, {plan['element_bytes']} B per element. "
        + (
            "ONNX Runtime latency: all its optimisations, median, every stage timed interleaved in one run."
            if "ort_ms" in pairs
            else "Latency: run with --measure to time ONNX Runtime on both."
        )
    )
    return (
        '<section id="summary"><h2>What fuser bought</h2>'
        f"<p>The model as given &rarr; {_e(what_changed(data))}.</p>"
        '<table class="before-after"><thead><tr><th></th><th class=num>before</th><th class=num>after</th>'
        f"<th class=num>change</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f'<p class="note">{note}</p>'
        "<h3>Stages</h3>"
        + _table(
            [
                "stage",
                "nodes",
                "MACs",
                "params",
                "activations",
                "peak activations",
                "DRAM no fusion MB",
                "ORT ms",
            ],
            stage_rows,
            "stages",
        )
        + "</section>"
    )


def _graph(data: dict, draw: bool) -> str:
    if not draw:
        return '<section id="graph"><h2>Graph</h2><p class="note">Not drawn (--no-graph).</p></section>'
    svg = graph_svg(data["graph"], data["groups"])
    return (
        '<section id="graph"><h2>Graph, coloured by fusion group'
        '<button class="zoom js-only" type="button">actual size</button></h2>'
        '<p class="note">Each box is an op; framed boxes run as one fused group (G&lt;k&gt;); '
        "grey ops run alone; a red border: over the buffer. Click a box for its group.</p>"
        f'<div class="dag">{svg}</div></section>'
    )


def _groups(data: dict) -> str:
    groups = sorted(data["groups"], key=lambda g: g["rank"])
    measured = any(g["measured_ms"] is not None for g in groups)
    tvm = any(g["tvm_ms"] is not None for g in groups)
    top = max((g["dram_bytes"] for g in groups), default=1) or 1
    head = [
        "rank",
        "group",
        "ops",
        "first .. last",
        "buffer KB",
        "fit",
        "DRAM KB",
        "DRAM (bar: share of the largest)",
    ]
    head += ["ORT ms"] if measured else []
    head += ["TVM ms"] if tvm else []
    head += ["fits"]
    rows = []
    for g in groups:
        first = g["labels"][0] if len(g["labels"]) == 1 else f"{g['labels'][0]} .. {g['labels'][-1]}"
        cells = [
            str(g["rank"]),
            f'{_swatch(g)}<a href="#group-{g["index"]}">G{g["index"]}</a>',
            str(len(g["ops"])),
            _e(first),
            kb(g["buffer_bytes"]),
            f'<span class="fit">{100 * g["fit"]:.0f}%</span>{_bar(g["fit"], not g["fits"])}',
            kb(g["dram_bytes"]),
            f'{_bar(g["dram_bytes"] / top)}<span class="share">{100 * g["share"]:.1f}%</span>',
        ]
        cells += [_ms(g["measured_ms"])] if measured else []
        cells += [_ms(g["tvm_ms"])] if tvm else []
        cells += ["yes" if g["fits"] else '<span class="bad">no: over the buffer</span>']
        rows.append(
            f'<tr class="group-row" id="rank-{g["rank"]}"'
            + _group_attrs(g)
            + ">"
            + "".join(
                f"<td{' class=num' if i not in (1, 3, len(cells) - 1) else ''}>{c}</td>"
                for i, c in enumerate(cells)
            )
            + "</tr>"
        )
    plan = data["plan"]
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    return (
        '<section id="groups"><h2>Fusion groups, most DRAM first</h2>'
        f"<p>{plan['style'].upper()} at {_e(format_size(plan['buffer_bytes']))}: "
        f"<b>{mb(plan['dram_bytes'])} MB</b> of DRAM traffic against {mb(plan['no_fusion_dram_bytes'])} MB "
        f"with no fusion (&times;{plan['dram_bytes'] / max(plan['no_fusion_dram_bytes'], 1):.3f}) and "
        f"{mb(plan['layer_fusion_dram_bytes'])} MB with layer fusion, each op with its elementwise tail "
        f"as a compiler fuses it (&times;{plan['dram_bytes'] / max(plan['layer_fusion_dram_bytes'], 1):.3f}"
        f"{'; planned over such layers' if plan.get('layers') else ''}), "
        f"{len(groups)} groups; peak buffer need {kb(plan['peak_buffer_bytes'])} KB over every group "
        f"({kb(plan['peak_fitting_buffer_bytes'])} KB among those that fit); "
        f"{plan['groups_over_buffer']} single ops over the buffer. "
        f"Search: {_e(plan['search'].get('search'))}, "
        f"{_e(plan['search'].get('split'))} split, {plan['search'].get('plans_evaluated')} plans, "
        f"seed {plan['search'].get('seed')}.</p>"
        + (
            f'<p class="note" id="per-image">Planned per image of a batch of {plan["images"]} (a '
            "group kernel's tiles run images outermost): the bytes here are one image's; the batch "
            f"moves <b>{mb(plan['batch_dram_bytes'])} MB</b> (a fitting LBDF group reads its weights "
            "once for the batch).</p>"
            if plan.get("images", 1) > 1
            else ""
        )
        + (
            '<p class="note">ORT ms: ONNX Runtime with one kernel per op (basic optimisations), the '
            "group's ops summed, median per op. DRAM traffic itself is not measured: no memory counters "
            "here; the roofline below sets the measured times against the predicted bytes.</p>"
            if measured
            else ""
        )
        + f'<table class="groups"><thead><tr>{th}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
        + "</section>"
    )


def _first(items: list[str], most: int = 5) -> str:
    """The first ``most`` items and how many more (the split's own section lists all)."""
    more = len(items) - most
    return ", ".join(items[:most]) + (f" and {more} more" if more > 0 else "") if items else "-"


def _split_summary(s: dict, i: int) -> str:
    culprits = _first([_e(c["op"]) for c in s["culprits"]])
    cuts = _first([f"{_e(c['from'])} &rarr; {_e(c['to'])}" for c in s["cut_edges"]])
    return (
        f'<li><a href="#split-{i}">split {i}</a>: a group of {len(s["group"])} ops needed '
        f"{kb(s['buffer_bytes_before'])} KB (buffer {kb(s['buffer_limit_bytes'])} KB); "
        f"culprits: {culprits}; cut: {cuts}; rule: {_e(s['rule'])}</li>"
    )


def _group_details(data: dict) -> str:
    splits = data["splits"]
    out = ['<section id="group-details"><h2>Every group</h2>']
    for g in data["groups"]:
        terms = [
            (
                "buffer need",
                f"{kb(g['buffer_bytes'])} KB ({100 * g['fit']:.0f}% of the buffer)",
                "buffer-bytes",
            ),
            (
                "predicted DRAM",
                f"{kb(g['dram_bytes'])} KB ({100 * g['share']:.1f}% of the plan)",
                "dram-bytes",
            ),
            ("MACs", human(g["macs"]) or "0", "macs"),
        ]
        for key, label in (
            ("weight_bytes", "weights on chip"),
            ("feature_bytes", "feature rows"),
            ("input_bytes", "inputs read"),
            ("output_bytes", "outputs written"),
        ):
            if key in g:
                terms.append((label, f"{kb(g[key])} KB", key.replace("_", "-")))
        if g["measured_ms"] is not None:
            terms.append(("measured (ORT, per op summed)", f"{g['measured_ms']:.3f} ms", "measured-ms"))
        if g["tvm_ms"] is not None:
            terms.append(("measured (TVM kernel)", f"{g['tvm_ms']:.3f} ms", "tvm-ms"))
        dl = "".join(f'<dt>{_e(k)}</dt><dd class="{c}">{_e(v)}</dd>' for k, v, c in terms)
        ops = "".join(
            f'<li title="{_e(op)}">{_e(label)} <span class="op-type">{_e(t)}</span></li>'
            for op, label, t in zip(g["ops"], g["labels"], g["op_types"])
        )
        why = "".join(_split_summary(splits[i], i) for i in g["splits"])
        status = "fits" if g["fits"] else "over the buffer: runs alone from DRAM"
        out.append(
            f'<article class="group" id="group-{g["index"]}"'
            + _group_attrs(g)
            + _attrs(fit=g["fit"], macs=g["macs"], tvm_ms=g["tvm_ms"], ops=len(g["ops"]))
            + f'><div class="card"><h3>{_swatch(g)}G{g["index"]} &middot; rank {g["rank"]} by DRAM &middot; '
            f"{len(g['ops'])} ops &middot; {status}</h3><dl>{dl}</dl></div>"
            f"<details{' open' if len(g['ops']) <= 12 else ''}><summary>{len(g['ops'])} ops</summary>"
            f'<ol class="ops">{ops}</ol></details>'
            + (f'<div class="why"><b>How this group was split out</b><ul>{why}</ul></div>' if why else "")
            + "</article>"
        )
    out.append("</section>")
    return "".join(out)


def _splits(data: dict) -> str:
    splits = data["splits"]
    if not splits:
        return '<section id="splits"><h2>Splits</h2><p>No group needed splitting.</p></section>'
    out = [
        f'<section id="splits"><h2>Every split of a group over the buffer ({len(splits)})</h2>'
        '<p class="note">Culprits: the ops whose buffer shares cover the excess; cut edges: the '
        "producer &rarr; consumer edges the split cuts (with the tensors and bytes that then go "
        "through DRAM); rule: why this cut.</p>"
    ]
    for i, s in enumerate(splits):
        culprits = _table(
            ["culprit op", "share of the buffer need KB"],
            [[_e(c["op"]), kb(c.get("score_bytes", 0))] for c in s["culprits"]],
            "culprits",
        )
        cuts = _table(
            ["from", "to", "tensors", "bytes"],
            [
                [_e(c["from"]), _e(c["to"]), _e(", ".join(c.get("tensors", []))), f"{c.get('bytes', 0):,}"]
                for c in s["cut_edges"]
            ],
            "cuts",
            numeric_from=3,
        )
        pieces = _table(
            ["piece", "ops", "buffer KB", "fits"],
            [
                [str(k), str(len(p["ops"])), kb(p["buffer_bytes"]), "yes" if p["valid"] else "no"]
                for k, p in enumerate(s.get("pieces", []))
            ],
            "pieces",
        )
        out.append(
            f'<article class="split" id="split-{i}"'
            + _attrs(split=i, buffer_bytes_before=s["buffer_bytes_before"], culprits=len(s["culprits"]))
            + f"><h3>split {i}: {len(s['group'])} ops needing {kb(s['buffer_bytes_before'])} KB "
            f"(buffer {kb(s['buffer_limit_bytes'])} KB) &rarr; "
            f"{' + '.join(kb(b) for b in s['buffer_bytes_after'])} KB</h3>"
            f"<p>rule: <b>{_e(s['rule'])}</b> ({_e(s.get('splitter', ''))} splitter)</p>"
            f'<div class="cols">{culprits}{cuts}{pieces}</div></article>'
        )
    out.append("</section>")
    return "".join(out)


def _sweep(data: dict) -> str:
    rows = data["sweep"]
    if not rows:
        return ""
    plan = data["plan"]
    title = f"{data['model']['name']}: {plan['style'].upper()}, {plan['search'].get('search')} search"
    svg = plots.svg_text(plots.sweep_figure(rows, title, highlight=plan["buffer_bytes"]))
    table = _table(
        ["buffer", "DRAM MB", "no fusion MB", "vs no fusion", "groups", "unfusable ops"],
        [
            [
                _e(format_size(r["buffer_bytes"])),
                mb(r["dram_bytes"]),
                mb(r["no_fusion_dram_bytes"]),
                f"{r['dram_bytes'] / max(r['no_fusion_dram_bytes'], 1):.3f}",
                str(r["groups"]),
                str(r["unfusable"]),
            ]
            for r in rows
        ],
        "sweep",
    )
    return (
        '<section id="sweep"><h2>DRAM against buffer size</h2>'
        + _figure(svg, "The plan at each buffer size; the dashed line: no fusion.", "sweep-plot")
        + table
        + "</section>"
    )


def _not_fused(report: dict) -> str:
    return "".join(
        f"<li>{_e(r['nodes'][0])} &hellip; {_e(r['nodes'][-1])} ({len(r['nodes'])} ops): "
        f"{_e(r['reason'])}</li>"
        for r in report["not_fused"]
    )


def _measured_pair(block: dict) -> str:
    """'unfused µs → fused µs' measured, or '-'."""
    layers = [k.get("measured_s") for k in block["layers"]]
    if not all(layers):
        return "-"
    return f"{us(sum(layers))} &rarr; {us(block['fused'].get('measured_s'))}"


def _blocks(data: dict) -> str:
    report = data.get("blocks")
    if report is None:
        return ""
    dev = report["device"]
    head = (
        '<section id="blocks"><h2>Block fusion (Lavin): roofline, efficiency gap, waterline</h2>'
        f"<p>Residual blocks one fused kernel each can compute, modelled for {_e(dev['name'])} "
        f"({report['elem_bytes']}-byte storage)"
        + (f", unfused layers measured on {_e(report['measured_on'])}" if report["measured_on"] else "")
        + ".</p>"
    )
    if not report["blocks"]:
        return head + f"<p>No fusable blocks in this model.</p><ul>{_not_fused(report)}</ul></section>"
    rows = [
        [
            _e(r["name"]),
            _e(r["description"]),
            _e(human(r["macs"])),
            f"{human_bytes(r['dram_bytes_unfused'])} &rarr; {human_bytes(r['dram_bytes_fused'])}",
            f"{r['intensity_unfused']:.0f} &rarr; {r['intensity_fused']:.0f}",
            f"{us(sum(k['roofline_s'] for k in r['layers']))} &rarr; {us(r['fused']['roofline_s'])}",
            _measured_pair(r),
        ]
        for r in report["blocks"]
    ]
    table = _table(
        ["block", "shape", "MACs", "DRAM unfused &rarr; fused", "flop/B", "roofline µs", "measured µs"],
        rows,
        "blocks",
        numeric_from=2,
    )
    figs = (
        _figure(plots.svg_text(plots.roofline_figure(report)), "Roofline: one point per kernel.", "roofline")
        + _figure(
            plots.svg_text(plots.efficiency_gap_figure(report)),
            "Efficiency gap: ideal, roofline and measured time per kernel.",
            "efficiency-gap",
        )
        + _figure(
            plots.svg_text(plots.waterline_figure(report)),
            "Waterline: cumulative time over the kernel sequence.",
            "waterline",
        )
    )
    not_fused = _not_fused(report)
    return (
        head
        + table
        + f'<div class="figs">{figs}</div>'
        + (f"<h3>Not fused</h3><ul>{not_fused}</ul>" if not_fused else "")
        + "</section>"
    )


def _measured(data: dict) -> str:
    lat = data.get("latency")
    if not lat:
        return (
            '<section id="latency"><h2>Latency</h2><p class="note">Not measured: run with --measure '
            "(ONNX Runtime, torch, a per-op profile) and --compile (TVM following the plan).</p></section>"
        )
    rows = [
        [
            _e(r["backend"]),
            _e(r["stage"]),
            f"{r['median_ms']:.3f}",
            f"{r['min_ms']:.3f} .. {r['max_ms']:.3f}",
            str(r["runs"]),
            "-" if r.get("vs_ort") is None else f"{r['vs_ort']:.2f}&times;",
        ]
        for r in lat["rows"]
    ]
    body = (
        '<section id="latency"><h2>Latency per backend</h2>'
        f"<p>{lat['threads']} threads, median of {lat['repeat']} calls after warm-up; the ratio is to "
        "ONNX Runtime on the final graph.</p>"
        + _table(
            ["backend", "graph", "median ms", "min .. max ms", "runs", "vs ORT"],
            rows,
            "latency",
            numeric_from=2,
        )
    )
    prof = data.get("profile")
    if prof:
        fp32 = 4 / data["plan"]["element_bytes"]  # ONNX Runtime moved fp32 tensors
        groups = [
            {
                "index": g["index"],
                "macs": g["macs"],
                "dram_bytes": g["dram_bytes"] * fp32,
                "measured_ms": g["measured_ms"],
            }
            for g in data["groups"]
        ]
        fig = plots.group_roofline_figure(
            groups,
            prof["cpu_peak_flops"],
            prof["cpu_bandwidth"],
            f"{data['model']['name']}: fusion groups on this CPU's roofline",
        )
        body += _figure(
            plots.svg_text(fig),
            _e(
                f"Each fusion group (label: G) at its predicted DRAM bytes (fp32) and the measured time "
                f"of its ops ({prof['source']}); the roof: this CPU's fp32 peak and copy bandwidth, "
                "measured here in a second (on a busy machine they come out low, and points land above)."
            ),
            "group-roofline",
        )
    return body + "</section>"


def _pruning(data: dict) -> str:
    p = data.get("pruning")
    if not p:
        return ""
    rows = []
    for g in p["groups"]:
        rows.append(
            f"<tr{_attrs(channels=g['channels'], kept=g['kept'])}"
            f' class="{"dim" if g["kept"] == g["channels"] else ""}">'
            f"<td>{g['index']}</td><td>{_e(g['name'])}</td>"
            f'<td class="num">{g["channels"]} &rarr; {g["kept"]}{"" if g["prunable"] else " (fixed)"}</td>'
            f'<td class="num">{_e(human(g["params_before"]))} &rarr; {_e(human(g["params_after"]))}</td>'
            f'<td class="num">{change(g["params_before"], g["params_after"])}</td>'
            f'<td class="num">{_e(human(g["macs_before"]))} &rarr; {_e(human(g["macs_after"]))}</td>'
            f'<td class="num">{change(g["macs_before"], g["macs_after"])}</td></tr>'
        )
    blocked = "".join(f"<li>{_e(b['node'])} ({_e(b['op'])}): {_e(b['reason'])}</li>" for b in p["blocked"])
    warning = alignment_warning(p, p["round_to"])
    return (
        f'<section id="pruning"><h2>Pruning, per layer ({100 * p["ratio"]:g}% of each group, '
        f"{_e(p['criterion'])}"
        f"{', channel counts rounded to ' + str(p['round_to']) if p['round_to'] else ''})</h2>"
        f"<p>MACs {_e(human(p['macs_before']))} &rarr; {_e(human(p['macs_after']))} "
        f"({change(p['macs_before'], p['macs_after'])}), params {p['params_before']:,} &rarr; "
        f"{p['params_after']:,} ({change(p['params_before'], p['params_after'])}); "
        f"{p['channels_removed']} channels removed.</p>"
        + (f'<p class="warning">{_e(warning.plain)}</p>' if warning is not None else "")
        + f"<p>Channel counts left: {', '.join(map(str, kept_counts(p))) or '-'}.</p>"
        '<table class="pruning"><thead><tr><th>#</th><th>layers</th><th class=num>channels</th>'
        "<th class=num>params</th><th class=num></th><th class=num>MACs</th><th class=num></th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        + (f"<h3>Blocked</h3><ul>{blocked}</ul>" if blocked else "")
        + "</section>"
    )


def _pipeline(data: dict) -> str:
    rows = []
    imported = data.get("import")
    if imported:
        rows.append(
            [
                "import (folding)",
                f"{imported['nodes_in_file']} &rarr; {imported['nodes']}",
                _e(import_note(imported)),
            ]
        )
    for s in data["pipeline"]:
        what = ", ".join(f"{k}: {v}" for k, v in s["stats"].items()) or "-"
        rows.append([_e(s["name"]), f"{s['nodes_before']} &rarr; {s['nodes_after']}", _e(what)])
    return (
        '<section id="pipeline"><h2>Optimize pipeline</h2>'
        + _table(["pass", "nodes", "what"], rows, "pipeline", numeric_from=9)
        + "</section>"
    )


def render_html(data: dict, *, graph: bool = True) -> str:
    """The whole page as one string (UTF-8 when written)."""
    sections = [
        ("summary", "summary", _summary(data)),
        ("groups", "groups", _groups(data)),
        ("group-details", "every group", _group_details(data)),
        ("splits", "splits", _splits(data)),
        ("sweep", "buffer sweep", _sweep(data)),
        ("blocks", "blocks", _blocks(data)),
        ("latency", "latency", _measured(data)),
        ("pruning", "pruning", _pruning(data)),
        ("pipeline", "pipeline", _pipeline(data)),
    ]
    nav = '<a href="#graph">graph</a> ' + " ".join(
        f'<a href="#{k}">{v}</a>' for k, v, body in sections if body
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>fuser report: {_e(data['model']['name'])}</title>"
        f"<style>{_asset('report.css')}</style></head><body>"
        + _header(data)
        + f"<nav>{nav}</nav>"
        + '<div class="layout"><aside class="graph-pane">'
        + _graph(data, graph)
        + '<div id="card" class="js-only" hidden></div></aside><main>'
        + "".join(body for _, _, body in sections)
        + "</main></div>"
        + f"<footer>fuser {_e(data['environment']['versions'].get('fuser'))} &middot; "
        f"format {_e(data['format'])} &middot; the same numbers as JSON: "
        "add --json to the command above</footer>" + f"<script>{_asset('report.js')}</script></body></html>\n"
    )


def save_html(data: dict, path, *, graph: bool = True, protect=()) -> int:
    """Write the page to ``path`` (atomically, never over ``protect``); returns its size in bytes."""
    from fuser.serde.files import atomic_write

    page = render_html(data, graph=graph).encode()
    atomic_write(path, page, protect=protect)
    return len(page)
