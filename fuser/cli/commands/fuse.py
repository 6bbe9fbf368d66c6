"""`fuser fuse`: plan fusion groups under an on-chip buffer budget."""

from __future__ import annotations

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fuser.cli.common import emit_json, err, input_shape_option, json_option, load_graph, out, status
from fuser.fusion.api import EXPLAINERS
from fuser.fusion.cost import STYLES
from fuser.fusion.search import SEARCHES
from fuser.fusion.split import SPLITS
from fuser.ir import FuserError
from fuser.units import format_size, parse_size

SPLITS_SHOWN = 12


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


def _kb(n: int) -> str:
    return f"{n / 1024:.1f}"


def _print_plan(plan, seconds: float, show_groups: bool) -> None:
    out.print(
        f"[bold]{plan.model}[/]  {plan.style.upper()}, buffer {format_size(plan.buffer_bytes)} "
        f"({plan.element_bytes} B/element), {plan.search['search']} search, "
        f"{plan.search['split']} split, {plan.search['plans_evaluated']} plans in {seconds:.1f} s",
        highlight=False,
    )
    fused = [g for g in plan.groups if len(g.ops) > 1]
    t = Table(title="plan", title_justify="left")
    for col in ("", "DRAM MB", "vs no fusion", "groups", "fused groups", "ops fused", "peak buffer KB"):
        t.add_column(col, justify="left" if not col else "right")
    t.add_row(
        "no fusion",
        _mb(plan.no_fusion_dram_bytes),
        "1.000",
        str(sum(len(g.ops) for g in plan.groups)),
        "0",
        "0",
        "-",
    )
    t.add_row(
        "[bold]this plan[/]",
        f"[bold]{_mb(plan.dram_bytes)}[/]",
        f"[bold]{plan.dram_ratio:.3f}[/]",
        str(len(plan.groups)),
        str(len(fused)),
        str(sum(len(g.ops) for g in fused)),
        _kb(plan.peak_buffer_bytes),
    )
    out.print(t)
    if show_groups:
        gt = Table(title="groups (topological order)", title_justify="left")
        for col in ("#", "ops", "first .. last", "buffer KB", "% of buffer", "DRAM KB", "valid"):
            gt.add_column(col, justify="right" if col not in ("first .. last", "valid") else "left")
        for k, g in enumerate(plan.groups):
            span = g.ops[0] if len(g.ops) == 1 else f"{g.ops[0]} .. {g.ops[-1]}"
            gt.add_row(
                str(k),
                str(len(g.ops)),
                span,
                _kb(g.buffer_bytes),
                f"{100 * g.buffer_bytes / plan.buffer_bytes:.0f}",
                _kb(g.dram_bytes),
                "yes" if g.valid else "[red]no[/]",
            )
        out.print(gt)
    if plan.splits:
        st = Table(title=f"splits of invalid groups ({len(plan.splits)})", title_justify="left")
        for col in ("group ops", "buffer KB before", "culprits", "cut edges", "buffer KB after", "rule"):
            st.add_column(col, justify="right" if "KB" in col or col == "group ops" else "left")
        for s in plan.splits[:SPLITS_SHOWN]:
            culprits = ", ".join(c["op"] for c in s["culprits"][:3]) + (
                " ..." if len(s["culprits"]) > 3 else ""
            )
            cuts = ", ".join(f"{c['from']}->{c['to']}" for c in s["cut_edges"][:3]) + (
                f" (+{len(s['cut_edges']) - 3})" if len(s["cut_edges"]) > 3 else ""
            )
            st.add_row(
                str(len(s["group"])),
                _kb(s["buffer_bytes_before"]),
                culprits or "-",
                cuts,
                " + ".join(_kb(b) for b in s["buffer_bytes_after"][:4])
                + (" ..." if len(s["buffer_bytes_after"]) > 4 else ""),
                s["rule"],
            )
        out.print(st)
        if len(plan.splits) > SPLITS_SHOWN:
            out.print(
                f"... {len(plan.splits) - SPLITS_SHOWN} more splits: --json lists every one", highlight=False
            )
    if plan.optimum is not None:
        kind = "optimal" if plan.optimum["exact"] else "a proven lower bound"
        bound = f"{_mb(plan.optimum['bytes'])} MB, {plan.optimum['method']}"
        out.print(
            f"within {100 * plan.gap:.1f}% of {kind} ({bound})",
            highlight=False,
        )
    if plan.unfusable:
        names = ", ".join(u["op"] for u in plan.unfusable[:6]) + (" ..." if len(plan.unfusable) > 6 else "")
        out.print(
            f"{len(plan.unfusable)} ops can never be fused (they fill the buffer alone): {names}",
            highlight=False,
        )


def _print_sweep(model: str, results) -> None:
    t = Table(title=f"{model}: DRAM against buffer size", title_justify="left")
    for col in ("buffer", "DRAM MB", "no fusion MB", "vs no fusion", "groups", "unfusable ops", "seconds"):
        t.add_column(col, justify="right")
    for plan, seconds in results:
        t.add_row(
            format_size(plan.buffer_bytes),
            _mb(plan.dram_bytes),
            _mb(plan.no_fusion_dram_bytes),
            f"{plan.dram_ratio:.3f}",
            str(len(plan.groups)),
            str(len(plan.unfusable)),
            f"{seconds:.1f}",
        )
    out.print(t)


def _plot(path: str, model: str, results) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    from fuser.serde.files import atomic_write

    sizes = [p.buffer_bytes / 1024 for p, _ in results]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(sizes, [p.dram_bytes / 1e6 for p, _ in results], "o-", label="fused plan")
    ax.plot(sizes, [p.no_fusion_dram_bytes / 1e6 for p, _ in results], "--", color="gray", label="no fusion")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("on-chip buffer (KB)")
    ax.set_ylabel("DRAM access (MB)")
    plan = results[0][0]
    ax.set_title(f"{model}: {plan.style.upper()}, {plan.search['search']} + {plan.search['split']} split")
    ax.grid(True, alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=120, metadata={"Software": None})
    plt.close(fig)
    atomic_write(path, buf.getvalue())


@click.command("fuse")
@click.argument("model")
@input_shape_option
@click.option(
    "--buffer",
    "buffers",
    default="256KB",
    show_default=True,
    metavar="SIZE[,SIZE..]",
    help="On-chip buffer (KB = 1024 B). A comma list sweeps sizes: 64KB,128KB,256KB,1MB.",
)
@click.option(
    "--style",
    type=click.Choice(STYLES),
    default="lbdf",
    show_default=True,
    help="lbdf: weights stay on chip, line-buffered features; brr: weights streamed per row tile.",
)
@click.option(
    "--search",
    type=click.Choice(SEARCHES),
    default="local",
    show_default=True,
    help="greedy (one plan), random, local (top-K mutations) or nsga2 (DRAM vs peak buffer).",
)
@click.option(
    "--split",
    type=click.Choice(SPLITS),
    default="explain",
    show_default=True,
    help="How invalid groups are split: explain (cost-aware, explained) or random.",
)
@click.option(
    "--explainer",
    type=click.Choice(EXPLAINERS),
    default="exact",
    show_default=True,
    help="exact: read from the cost model; gnn: a trained validity GNN's gradients.",
)
@click.option(
    "--budget", type=click.IntRange(min=1), default=1000, show_default=True, help="Plans to evaluate."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same plan.")
@click.option(
    "--element-bytes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Bytes per tensor element (1: int8, 2: fp16, 4: fp32).",
)
@json_option
@click.option(
    "--save-plan", type=click.Path(dir_okay=False), help="Write the plan as JSON (one buffer size)."
)
@click.option("--plot", type=click.Path(dir_okay=False), help="PNG of DRAM against buffer size.")
@click.option("--groups", "show_groups", is_flag=True, help="Also list every group.")
@click.option(
    "--gap/--no-gap",
    default=True,
    show_default=True,
    help="Prove how far the plan is from optimal (exact ILP/DP, else a certified lower bound).",
)
def command(
    model,
    input_shapes,
    buffers,
    style,
    search,
    split,
    explainer,
    budget,
    seed,
    element_bytes,
    as_json,
    save_plan,
    plot,
    show_groups,
    gap,
):
    """Partition MODEL's ops into fusion groups that fit an on-chip buffer.

    A fusion group runs as one unit: only its inputs, outputs and weights move
    between DRAM and the buffer. Groups must fit the buffer (F_β < buffer);
    invalid ones are split, and every split is explained: the ops that overflow
    the buffer, the edges cut, the buffer need before and after. The plan is
    compared with no fusion (every op alone). MODEL is optimized first (BN folded).

    \b
    Examples:
      fuser fuse zoo:resnet18                               # LBDF, 256KB, local search
      fuser fuse zoo:mobilenet_v2 --buffer 128KB --style brr --search nsga2 --budget 2000
      fuser fuse zoo:efficientnet_b3 --split random --seed 1  # the random-split baseline
      fuser fuse model.onnx --input-shape x:1,3,224,224 --save-plan plan.json --groups
      fuser fuse zoo:resnet50 --buffer 64KB,128KB,256KB,1MB --plot sweep.png
      fuser fuse zoo:squeezenet1_1 --search greedy --json
    """
    from fuser.api import optimize
    from fuser.fusion.api import partition_fusion_graph
    from fuser.fusion.opgraph import build_fusion_graph

    sizes = [parse_size(b) for b in buffers.split(",") if b.strip()]
    if not sizes:
        raise FuserError("--buffer: give at least one size, e.g. 256KB")
    if save_plan and len(sizes) > 1:
        raise FuserError("--save-plan writes one plan: give a single --buffer size, not a sweep")
    graph = load_graph(model, input_shapes)
    with status("optimizing (folding BN, cleanups)"):
        graph = optimize(graph).graph
    fg = build_fusion_graph(graph)
    results = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as progress:
        for size in sizes:
            task = progress.add_task(f"{search} search, buffer {format_size(size)}", total=budget)

            def advance(done: int, total: int, task=task) -> None:
                progress.update(task, completed=done, total=total)

            results.append(
                partition_fusion_graph(
                    fg,
                    buffer=size,
                    style=style,
                    search=search,
                    split=split,
                    budget=budget,
                    seed=seed,
                    element_bytes=element_bytes,
                    explainer=explainer,
                    progress=advance,
                    gap=gap,
                )
            )
            progress.remove_task(task)
    if save_plan:
        results[0][0].save(save_plan)
    if plot:
        _plot(plot, graph.name, results)
    if as_json:
        if len(results) == 1:
            emit_json(results[0][0].to_dict())
        else:
            emit_json({"model": graph.name, "sweep": [p.to_dict() for p, _ in results]})
        return
    if len(results) == 1:
        _print_plan(*results[0], show_groups)
    else:
        _print_sweep(graph.name, results)
    if save_plan:
        out.print(f"wrote {save_plan}", highlight=False)
    if plot:
        out.print(f"wrote {plot}", highlight=False)
