"""How fusion planning time grows with the number of ops (issue 18's targets), one run.

  chain     x[1,32,112,112] -> conv3x3 -> N x Relu (MobileNetV2's first feature map),
            LBDF 256 KB, NSGA-II 1000 plans, explain split; N = 500 .. 5000, and the
            growth exponent b of wall time ≈ a·N^b fitted over them (target: 5000 ops <= 10 s)
  inception Inception v2 from the onnx package's light set, LBDF and BRR 256 KB,
            NSGA-II 1000 plans (target <= 5 s)
  picodet   PP-PicoDet-LCNet layout detector @800x608 (zoo:picodet_layout), LBDF and BRR
            256 KB, NSGA-II 1000 plans (target <= 10 s)
  effnet    EfficientNet-B3 @300, LBDF 256 KB, NSGA-II 5000 plans (target <= 20 s)

Wall and CPU seconds of the search alone (capture and indexing are printed apart).

    python benchmarks/planner_scaling.py                    # everything
    python benchmarks/planner_scaling.py --quick            # chains up to 2000, smaller budgets
    python benchmarks/planner_scaling.py --case inception   # Inception v2 only (LBDF and BRR)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

import fuser
from fuser.fusion import build_fusion_graph, partition_fusion_graph
from fuser.ir import Graph

LIGHT = Path(__import__("onnx").__file__).parent / "backend" / "test" / "data" / "light"
CASES = ("chain", "inception", "picodet", "effnet")


def conv_relu_chain(n_relu: int, channels: int = 32, size: int = 112) -> Graph:
    from fuser.analysis.shapes import infer_shapes

    g = Graph(f"conv_relu_chain{n_relu}")
    x = g.add_input("x", (1, channels, size, size))
    w = g.const(np.zeros((channels, channels, 3, 3), np.float32), "conv_w")
    attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    t = g.add_node("Conv", [x, w], name="conv", attrs=attrs).output
    for k in range(n_relu):
        t = g.add_node("Relu", [t], name=f"relu{k}").output
    g.outputs = [t]
    infer_shapes(g)
    return g


def timed(fg, **kw) -> tuple[float, float, object]:
    c0 = time.process_time()
    plan, wall = partition_fusion_graph(fg, **kw)
    return wall, time.process_time() - c0, plan


def captured(console: Console, case: str, model: str, **kw):
    """The indexed graph of a zoo model, its capture time printed apart from the search's."""
    start = time.perf_counter()
    fg = build_fusion_graph(fuser.optimize(model, **kw).graph)
    console.print(f"  {case} captured and indexed in {time.perf_counter() - start:.0f} s", highlight=False)
    return fg


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None, help="also write the tables to this text file")
    parser.add_argument(
        "--case",
        action="append",
        choices=CASES,
        help="run only this case (repeatable; default: all of " + ", ".join(CASES) + ")",
    )
    args = parser.parse_args(argv)
    chosen = args.case or CASES
    console = Console(record=True, width=140)
    table = Table(title="fusion planning time", title_justify="left")
    for col in ("case", "ops", "style", "plans", "wall s", "CPU s", "target s", "DRAM MB", "groups"):
        table.add_column(col, justify="left" if col in ("case", "style") else "right")

    def row(case, fg, style, budget, target, **kw):
        wall, cpu, plan = timed(fg, buffer="256KB", style=style, search="nsga2", budget=budget, **kw)
        cells = (case, str(fg.n), style, str(budget), f"{wall:.1f}", f"{cpu:.1f}", target)
        table.add_row(*cells, f"{plan.dram_bytes / 1e6:.2f}", str(len(plan.groups)))
        console.print("  " + " ".join(cells), highlight=False)
        return wall, cpu

    lengths = [500, 1000, 2000] if args.quick else [500, 1000, 2000, 3000, 5000]
    times = []
    if "chain" in chosen:
        for n in lengths:
            fg = build_fusion_graph(conv_relu_chain(n - 1))
            times.append(row(f"chain {n}", fg, "lbdf", 1000, "10" if n == 5000 else ""))
    if "inception" in chosen:
        fg = build_fusion_graph(fuser.optimize(str(LIGHT / "light_inception_v2.onnx")).graph)
        for style in ("lbdf", "brr"):
            row("inception v2", fg, style, 200 if args.quick else 1000, "5")
    if "picodet" in chosen:
        fg = captured(console, "picodet_layout @800x608", "zoo:picodet_layout")
        for style in ("lbdf", "brr"):
            row("picodet_layout @800x608", fg, style, 200 if args.quick else 1000, "10")
    if "effnet" in chosen:
        fg = captured(console, "efficientnet_b3 @300", "zoo:efficientnet_b3", input_shapes=(1, 3, 300, 300))
        row("efficientnet_b3 @300", fg, "lbdf", 1000 if args.quick else 5000, "20")
    console.print(table)
    if times:
        slope_wall, slope_cpu = (np.polyfit(np.log(lengths), np.log(t), 1)[0] for t in zip(*times))
        console.print(
            f"chain planning time grows as N^{slope_wall:.2f} (wall), N^{slope_cpu:.2f} (CPU) "
            f"over N = {lengths[0]}..{lengths[-1]} ops (1.00 = linear)",
            highlight=False,
        )
    if args.out:
        from fuser.serde.files import atomic_write

        atomic_write(args.out, console.export_text(clear=False).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
