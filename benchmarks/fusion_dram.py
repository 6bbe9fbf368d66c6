"""DRAM access of fusion plans: explain vs random splitting, after Mills et al. (arXiv 2501.00636).

The paper's settings, on fuser's zoo (1 byte per element, batch 1):
  EfficientNet-B3 @300, ResNet-152 @224: LBDF, 256 KB buffer, 5k plans;
  MobileNetV2, VGG16, ResNet-18, ResNet-50, SqueezeNet 1.1 @224: LBDF and BRR, 128 KB, 2k plans;
each with local search (LS), NSGA-II and random search (RS), each with the random and the
explain split, over 3 seeds. For every row: DRAM MB (mean over seeds, ± spread),
the ratio to no fusion, explain vs random, search time (wall and CPU seconds, mean),
and the gap to the exact optimum (ILP / chain DP) where it is computable. Then the
explainers' rectify rates and the GNN validity classifier's held-out accuracy.

    python benchmarks/fusion_dram.py                # everything (about an hour on 2 cores)
    python benchmarks/fusion_dram.py --quick        # 1 seed, small budgets, 3 models (~1-2 min)
    python benchmarks/fusion_dram.py --out benchmarks/results/fusion_dram.txt
    python benchmarks/fusion_dram.py --gaps      # every zoo model: DRAM and proven gap to optimal
    python benchmarks/fusion_dram.py --gaps --models yolov8n --gap-time 40   # one model, 40 s bounds
    python benchmarks/fusion_dram.py --gaps --models yolov8n --styles brr --buffers 256KB   # one row
    python benchmarks/fusion_dram.py --gaps --models picodet_layout --styles brr --buffers 1MB \
        --gap-time 1200 --gap-block-ops 80   # past 30,000 valid groups (here 115,354) the ILP gives
                                             # way to bounds: blocks of 80 ops, not 40 (minutes each)
    ... --gap-log                                         # and the bound's rounds as they happen
    ... --gap-prices DIR          # keep each row's price rounds in DIR and go on from them next run
    ... --gap-block-starts 84,164 # blocks beginning at these ops, instead of cuts --gap-block-ops picks
    python benchmarks/fusion_dram.py --gaps --no-bounds   # the search's plans only (~2.5 min): DRAM
                                                          # does not depend on the machine or its load
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

import fuser
from fuser.fusion import build_fusion_graph, make_cost_model, partition_fusion_graph, rectify_rate
from fuser.fusion.exact import exact_optimum

SEARCHES = {"LS": "local", "NSGA-II": "nsga2", "RS": "random"}


@dataclass(frozen=True)
class Setting:
    model: str
    size: int
    styles: tuple[str, ...]
    buffer: str
    budget: int


FULL = [
    Setting("efficientnet_b3", 300, ("lbdf",), "256KB", 5000),
    *(
        Setting(m, 224, ("lbdf", "brr"), "128KB", 2000)
        for m in ("mobilenet_v2", "vgg16", "resnet18", "resnet50", "squeezenet1_1")
    ),
    Setting("resnet152", 224, ("lbdf",), "256KB", 5000),
]
QUICK = [Setting(m, 224, ("lbdf",), "128KB", 200) for m in ("mobilenet_v2", "resnet18", "vgg16")]


def mb(n: float) -> str:
    return f"{n / 1e6:.2f}"


def spread(values: list[float]) -> str:
    return f"±{(max(values) - min(values)) / 2e6:.2f}" if len(values) > 1 else ""


def save(path: str, console: Console, table: Table | None = None) -> None:
    """Write what ``console`` recorded, and ``table`` (not printed yet), to ``path``."""
    from fuser.serde.files import atomic_write

    text = console.export_text(clear=False)
    if table is not None:
        extra = Console(record=True, width=console.width, file=io.StringIO())
        extra.print(table)
        text += extra.export_text()
    atomic_write(path, text.encode())


def run_setting(console: Console, setting: Setting, seeds: list[int], fg, style: str) -> Table:
    cost = make_cost_model(fg, style, fuser.fusion.parse_size(setting.buffer))
    no_fusion = cost.no_fusion_dram()
    start = time.perf_counter()
    exact = exact_optimum(cost, time_limit=120)
    exact_s = time.perf_counter() - start
    title = (
        f"{setting.model} @{setting.size}, {style.upper()}, {setting.buffer}, {setting.budget} plans, "
        f"{len(seeds)} seed(s); no fusion {mb(no_fusion)} MB; exact optimum "
        + (
            f"{mb(exact.dram_bytes)} MB ({exact.method}, {exact.candidates} valid groups, {exact_s:.0f} s"
            + ("" if exact.optimal else ", time limit: best found")
            + ")"
            if exact
            else "not computable"
        )
    )
    table = Table(title=title, title_justify="left")
    for col in (
        "search",
        "split",
        "DRAM MB",
        "vs no fusion",
        "explain vs random",
        "wall s",
        "CPU s",
        "gap to exact",
    ):
        table.add_column(col, justify="left" if col in ("search", "split") else "right")
    for label, search in SEARCHES.items():
        means = {}
        for split in ("random", "explain"):
            dram, wall, cpu = [], [], []
            for seed in seeds:
                c0 = time.process_time()
                plan, seconds = partition_fusion_graph(
                    fg,
                    buffer=setting.buffer,
                    style=style,
                    search=search,
                    split=split,
                    budget=setting.budget,
                    seed=seed,
                )
                cpu.append(time.process_time() - c0)
                wall.append(seconds)
                dram.append(plan.dram_bytes)
            mean = means[split] = statistics.mean(dram)
            versus = f"{100 * (mean / means['random'] - 1):+.1f}%" if split == "explain" else ""
            gap = f"{100 * (mean / exact.dram_bytes - 1):+.1f}%" if exact else "n/a"
            table.add_row(
                label,
                split,
                f"{mb(mean)} {spread(dram)}",
                f"{mean / no_fusion:.3f}",
                versus,
                f"{statistics.mean(wall):.1f}",
                f"{statistics.mean(cpu):.1f}",
                gap,
            )
            console.print(
                f"  {setting.model} {style} {label:8s} {split:8s} {mb(mean)} MB "
                f"[{', '.join(mb(d) for d in dram)}] {statistics.mean(wall):.1f} s",
                highlight=False,
            )
    return table


def explainer_report(console: Console, fg, style: str, buffer: str, groups: int, gnn_samples: int) -> Table:
    """Rectify rates (one cut makes an invalid group all-valid) and the GNN's accuracy."""
    from fuser.fusion.explain import ExactExplainer
    from fuser.fusion.gnn import GNNExplainer, sample_groups

    cost = make_cost_model(fg, style, fuser.fusion.parse_size(buffer))
    rng = random.Random(0)
    # near misses: one cut can fix them (F_β < 2β); groups holding an unfusable op are left out
    invalid = [
        g
        for g in sample_groups(fg, groups * 20, rng)
        if not cost.valid(g)
        and g & cost.fusable_mask == g
        and cost.cost(g).buffer_bytes < 2 * cost.buffer_bytes
    ][:groups]
    start = time.perf_counter()
    gnn = GNNExplainer.for_cost_model(cost, seed=0, samples=gnn_samples)
    train_s = time.perf_counter() - start
    table = Table(
        title=f"explainers on {len(invalid)} sampled invalid groups of {fg.graph.name} "
        f"({style.upper()}, {buffer}, β ≤ F_β < 2β, no unfusable op): rectify rate = "
        "share that one cut at the top-k edges makes all-valid",
        title_justify="left",
    )
    for col in ("explainer", "top-1", "top-4", "top-8", "note"):
        table.add_column(col)
    rep = gnn.report
    rows = [
        ("exact (cost model)", ExactExplainer(cost), ""),
        (
            "gnn (gradient)",
            gnn,
            f"held-out accuracy {rep.heldout_accuracy:.1%} on {rep.heldout} groups "
            f"(train {rep.train_accuracy:.1%}, {rep.samples} groups, buffers "
            f"32KB-1MB, {train_s:.0f} s)",
        ),
        ("random edges", None, "the random split's odds"),
    ]
    for name, explainer, note in rows:
        table.add_row(
            name, *(f"{rectify_rate(cost, invalid, explainer, top=k):.1%}" for k in (1, 4, 8)), note
        )
    return table


def gap_report(
    console: Console,
    models: list[str],
    budget: int,
    size: int | None,
    time_limit: float = 90,
    out: str | None = None,
    bounds: bool = True,
    buffers: tuple[str, ...] = ("128KB", "256KB"),
    styles: tuple[str, ...] = ("lbdf", "brr"),
    block_ops: int | None = None,
    price_rounds: int | None = None,
    prices: str | None = None,
    block_starts: list[int] | None = None,
) -> Table:
    """Every zoo model at 128 KB and 256 KB, LBDF and BRR: the explain-split NSGA-II plan's
    DRAM ("search MB"), the plan ``partition(gap=True)`` hands back ("plan MB": the search's,
    or the cheaper legal plan the bound met, "adopted") and its proven gap to the optimum
    (exact, or to a certified lower bound). ``bounds=False``: the search's plan alone.
    ``prices``: a folder that keeps each row's block-bound prices between runs;
    ``block_starts``: the ops that begin the block bound's blocks (instead of ``block_ops``)."""
    from fuser.models import input_shape

    table = Table(
        title=f"gap to optimal: NSGA-II {budget} plans, explain split, seed 0, "
        + (f"bounds {time_limit:.0f} s" if bounds else "no bounds: the search's plans")
        + (f", {block_ops} ops per block" if bounds and block_ops and not block_starts else "")
        + (f", blocks from ops 0,{','.join(map(str, block_starts))}" if bounds and block_starts else "")
        + (f", up to {price_rounds} price rounds" if bounds and price_rounds is not None else ""),
        title_justify="left",
    )
    for col in (
        "model",
        "ops",
        "style",
        "buffer",
        "search MB",
        "plan MB",
        "bound MB",
        "bound",
        "gap",
        "adopted",
        "plan s",
        "bound s",
    ):
        table.add_column(col, justify="left" if col in ("model", "style", "bound") else "right")
    for model in models:
        shape = tuple(input_shape(model)) if size is None else (1, 3, size, size)
        fg = build_fusion_graph(fuser.optimize(f"zoo:{model}", input_shapes=shape).graph)
        for buffer in buffers:
            for style in styles:
                start = time.perf_counter()
                plan, seconds = partition_fusion_graph(
                    fg,
                    buffer=buffer,
                    style=style,
                    search="nsga2",
                    split="explain",
                    budget=budget,
                    gap=bounds,
                    gap_time_limit=time_limit,
                    gap_block_ops=block_ops,
                    gap_price_rounds=price_rounds,
                    gap_block_starts=block_starts,
                    gap_prices=prices and os.path.join(prices, f"{model}-{style}-{buffer}.json"),
                )
                bound_s = time.perf_counter() - start - seconds
                if not bounds:
                    row = (model, str(fg.n), style, buffer, mb(plan.dram_bytes), mb(plan.dram_bytes))
                    table.add_row(*row, "-", "-", "-", "-", f"{seconds:.1f}", "-")
                    console.print(f"  {' '.join(row)}", highlight=False)
                    continue
                bound = plan.optimum
                adopted = plan.search.get("adopted")
                searched = adopted["search_dram_bytes"] if adopted else plan.dram_bytes
                row = (model, str(fg.n), style, buffer, mb(searched), mb(plan.dram_bytes), mb(bound["bytes"]))
                kind = ("optimum, " if bound["exact"] else "lower bound, ") + bound["method"]
                gap = f"{100 * plan.gap:.1f}%"
                table.add_row(*row, kind, gap, "yes" if adopted else "-", f"{seconds:.1f}", f"{bound_s:.1f}")
                console.print(f"  {' '.join(row)} {kind} within {gap}", highlight=False)
        if out:  # after every model, so a long run leaves what it has done
            save(out, console, table)
    return table


def op_indices(text: str) -> list[int]:
    """``--gap-block-starts``: "84,164" -> [84, 164]."""
    try:
        return [int(op) for op in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of op indices: {text!r}") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, small budgets, 3 small models")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per row (default 3, quick 1)")
    parser.add_argument("--models", default=None, help="comma list: only these zoo models")
    parser.add_argument("--out", default=None, help="also write the tables to this text file")
    parser.add_argument(
        "--gaps", action="store_true", help="only the gap-to-optimal table of every zoo model"
    )
    parser.add_argument(
        "--no-bounds", action="store_true", help="--gaps: the search's plans only, no bound (fast)"
    )
    parser.add_argument(
        "--gap-time", type=float, default=90, help="seconds for each row's bound (--gaps; fuser fuse: 20)"
    )
    parser.add_argument("--buffers", default="128KB,256KB", help="--gaps: comma list of buffer sizes")
    parser.add_argument("--styles", default="lbdf,brr", help="--gaps: comma list of fusion styles")
    parser.add_argument(
        "--gap-block-ops",
        type=int,
        default=None,
        help="--gaps: ops per block of the block bound (default 40 for BRR, 80 for LBDF); "
        "longer blocks bound tighter but slower",
    )
    parser.add_argument(
        "--gap-block-starts",
        type=op_indices,
        default=None,
        metavar="OPS",
        help="--gaps: comma list of the ops (topological indices) that begin the block bound's "
        "blocks after op 0, instead of the cuts --gap-block-ops would choose (for one model)",
    )
    parser.add_argument(
        "--gap-price-rounds",
        type=int,
        default=None,
        help="--gaps: most rounds of the block bound's prices (default 20; they stop on their own "
        "once the prices are optimal); a round on PicoDet BRR 256 KB takes about a minute",
    )
    parser.add_argument(
        "--gap-log",
        action="store_true",
        help="--gaps: print the block bound's blocks, price rounds and polish steps as they happen "
        "(stderr, timestamped): a bound of an hour shows where it stands",
    )
    parser.add_argument(
        "--gap-prices",
        metavar="DIR",
        default=None,
        help="--gaps: keep each row's block-bound prices and its blocks' rows in DIR (one JSON "
        "file a row, written after every price round) and go on from them next time: an "
        "hours-long bound in parts",
    )
    args = parser.parse_args(argv)
    if args.gap_prices:
        os.makedirs(args.gap_prices, exist_ok=True)
    if args.gap_log:
        logging.basicConfig(format="%(asctime)s %(message)s", level=logging.WARNING, stream=sys.stderr)
        logging.getLogger("fuser.fusion.bound").setLevel(logging.INFO)
    if args.gaps:
        console = Console(record=True, width=160)
        from fuser.models import names

        models = args.models.split(",") if args.models else names()
        table = gap_report(
            console,
            models,
            200 if args.quick else 2000,
            64 if args.quick else None,
            time_limit=args.gap_time,
            out=args.out,
            bounds=not args.no_bounds,
            buffers=tuple(args.buffers.split(",")),
            styles=tuple(args.styles.split(",")),
            block_ops=args.gap_block_ops,
            price_rounds=args.gap_price_rounds,
            prices=args.gap_prices,
            block_starts=args.gap_block_starts,
        )
        console.print(table)
        if args.out:
            save(args.out, console)
        return 0
    settings = QUICK if args.quick else FULL
    if args.models:
        wanted = set(args.models.split(","))
        settings = [s for s in settings if s.model in wanted]
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    console = Console(record=True, width=140)
    console.print(
        f"fusion DRAM benchmark ({'quick' if args.quick else 'full'}), 1 B/element, seeds {seeds}",
        highlight=False,
    )
    for setting in settings:
        t0 = time.perf_counter()
        graph = fuser.optimize(f"zoo:{setting.model}", input_shapes=(1, 3, setting.size, setting.size)).graph
        fg = build_fusion_graph(graph)
        console.print(
            f"{setting.model}: {fg.n} ops, captured in {time.perf_counter() - t0:.0f} s", highlight=False
        )
        for style in setting.styles:
            table = run_setting(console, setting, seeds, fg, style)
            console.print(table)
        if setting.model == ("mobilenet_v2" if args.quick else "efficientnet_b3"):
            report = explainer_report(
                console, fg, "lbdf", setting.buffer, 40 if args.quick else 200, 800 if args.quick else 3000
            )
            console.print(report)
        if args.out:  # after every model, so a long run leaves what it has done
            save(args.out, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
