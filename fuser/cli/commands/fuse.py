"""`fuser fuse`: plan fusion groups under an on-chip buffer budget."""

from __future__ import annotations

import os
import re

import click

from fuser.cli.common import (
    FiniteFloatRange,
    emit_json,
    fusion_options,
    input_shape_option,
    json_option,
    load_graph,
    progress_bar,
    show,
    status,
)
from fuser.fusion.api import EXPLAINERS
from fuser.ir import FuserError
from fuser.units import format_size, parse_size


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
@fusion_options
@click.option(
    "--explainer",
    type=click.Choice(EXPLAINERS),
    default="exact",
    show_default=True,
    help="exact: read from the cost model; gnn: a trained validity GNN's gradients.",
)
@json_option
@click.option(
    "--save-plan", type=click.Path(dir_okay=False), help="Write the plan as JSON (one buffer size)."
)
@click.option(
    "--plot", type=click.Path(dir_okay=False), help="PNG of DRAM against buffer size (one size or a sweep)."
)
@click.option(
    "--top",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Groups listed, most DRAM first (0: all).",
)
@click.option("--groups", "show_groups", is_flag=True, help="List every group (same as --top 0).")
@click.option(
    "--gap/--no-gap",
    default=True,
    show_default=True,
    help="Prove how far the plan is from optimal (exact ILP/DP, else a certified lower bound); "
    "when the proof finds an optimum below the search's plan, that optimum is the plan.",
)
@click.option(
    "--gap-time",
    type=FiniteFloatRange(min=0, min_open=True),
    default=20.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds for the gap proof of each buffer size. Large graphs bound tighter with more: "
    "PicoDet, BRR 256KB, needs about an hour for 2%.",
)
@click.option(
    "--gap-prices",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Keep the gap proof's block prices and the rows its blocks found in DIR (a file per "
    "buffer size, written after every price round) and go on from them when run again: a long "
    "proof in several parts.",
)
@click.option(
    "--whole-batch",
    is_flag=True,
    help="At a batch above 1, size every group for the whole batch at once. By default a plan is "
    "made for one image of the batch, the way fuser's group kernels run (images outermost).",
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
    top,
    show_groups,
    gap,
    gap_time,
    gap_prices,
    whole_batch,
    layers,
):
    """Partition MODEL's ops into fusion groups that fit an on-chip buffer.

    A fusion group runs as one unit: only its inputs, outputs and weights move
    between DRAM and the buffer. Groups must fit the buffer (F_β < buffer);
    invalid ones are split, and every split is explained: the ops that overflow
    the buffer, the edges cut, the buffer need before and after. The plan is
    compared with no fusion (every op alone) and with layer fusion (each op with its
    elementwise tail, what TVM or ONNX Runtime fuse without a plan). MODEL is optimized
    first (BN folded). Groups are listed most DRAM first, with their fit (buffer need as %
    of the buffer); a single op over 100% cannot fit and runs alone from DRAM.

    \b
    Examples:
      fuser fuse zoo:resnet18                               # LBDF, 256KB, local search
      fuser fuse zoo:mobilenet_v2 --buffer 128KB --layers   # conv + activation one unit
      fuser fuse zoo:mobilenet_v2 --buffer 128KB --style brr --search nsga2 --budget 2000
      fuser fuse zoo:efficientnet_b3 --split random --seed 1  # the random-split baseline
      fuser fuse model.onnx --input-shape x:1,3,224,224 --save-plan plan.json --top 0
      fuser fuse zoo:resnet50 --buffer 64KB,128KB,256KB,1MB --plot sweep.png
      fuser fuse zoo:squeezenet1_1 --search greedy --json
      fuser fuse zoo:yolov8n --style brr --gap-time 300     # a tighter proof of the gap
      fuser fuse zoo:yolov8n --style brr --gap-time 300 --gap-prices proofs/  # run again: it goes on
    """
    from fuser.api import optimize
    from fuser.fusion.api import partition_fusion_graph
    from fuser.fusion.opgraph import build_fusion_graph
    from fuser.reports import fusion as fusion_report
    from fuser.reports.names import display_names
    from fuser.reports.text import plain

    sizes = [parse_size(b) for b in buffers.split(",") if b.strip()]
    if not sizes:
        raise FuserError("--buffer: give at least one size, e.g. 256KB")
    if save_plan and len(sizes) > 1:
        raise FuserError("--save-plan writes one plan: give a single --buffer size, not a sweep")
    graph = load_graph(model, input_shapes)
    with status("optimizing (folding BN, cleanups)"):
        graph = optimize(graph).graph
    fg = build_fusion_graph(graph, per_image=not whole_batch, layers=layers)
    if gap_prices:
        os.makedirs(gap_prices, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", graph.name or "model")
    results = []
    with progress_bar() as progress:
        for size in sizes:
            task = progress.add_task(f"{search} search, buffer {format_size(size)}", total=budget)

            def advance(done: int, total: int, task=task, size=size) -> None:
                progress.update(task, completed=done, total=total)
                if gap and done >= total:  # the search is done; the proof takes up to --gap-time
                    what = f"proving the gap to optimal, buffer {format_size(size)} (up to {gap_time:g} s)"
                    progress.update(task, description=what)

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
                    gap_time_limit=gap_time,
                    gap_prices=gap_prices
                    and os.path.join(gap_prices, f"{stem}-{style}-{format_size(size)}.json"),
                )
            )
            progress.remove_task(task)
    if save_plan:
        results[0][0].save(save_plan)
    if plot:
        from fuser.reports.plots import figure_bytes, sweep_figure
        from fuser.serde.files import atomic_write

        first = results[0][0]
        title = (
            f"{graph.name}: {first.style.upper()}, {first.search['search']} + {first.search['split']} split"
        )
        rows = fusion_report.sweep_rows(results)
        atomic_write(plot, figure_bytes(sweep_figure(rows, title), "png", dpi=120))
    if as_json:
        if len(results) == 1:
            emit_json(results[0][0].to_dict())
        else:
            emit_json({"model": graph.name, "sweep": [p.to_dict() for p, _ in results]})
        return
    if len(results) == 1:
        show(fusion_report.plan_view(*results[0], names=display_names(graph), top=0 if show_groups else top))
    else:
        show(fusion_report.sweep_table(graph.name, fusion_report.sweep_rows(results)))
    for path in (save_plan, plot):
        if path:
            show(plain(f"wrote {path}"))
