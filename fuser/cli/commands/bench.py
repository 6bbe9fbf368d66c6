"""`fuser bench`: latency of MODEL on torch, ONNX Runtime and TVM, with TVM per-kernel times."""

from __future__ import annotations

import sys

import click
from rich.table import Table

from fuser.cli.common import (
    MESSAGE_LIMIT,
    emit_json,
    err,
    input_shape_option,
    json_option,
    load_graph,
    safe,
    show,
    status,
    timing_options,
)

from .compile import rpc_options, rpc_runner, tune_with_progress

FAILED_BACKEND_EXIT = 3  # the report printed, but a backend could not build or run the model
RATED_MS = 0.01  # kernels faster than this get no GFLOP/s: the timing hook costs about 5 us a call


def _bytes(n) -> str:
    if n is None:
        return "-"
    for div, unit in ((1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


@click.command("bench")
@click.argument("model")
@click.option(
    "--backends",
    default="torch,ort,tvm",
    show_default=True,
    metavar="B1,B2",
    help="Comma list of: torch (fuser's eager torch module), torch-compile, ort "
    "(ONNX Runtime, all optimisations), tvm (untuned), tvm-tuned.",
)
@input_shape_option
@timing_options
@click.option(
    "--warmup", type=click.IntRange(min=0), default=3, show_default=True, help="Untimed calls first."
)
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(dir_okay=False),
    help="Build TVM with this fusion plan; the kernel table then has one row per plan "
    "group, its DRAM estimate next to its time.",
)
@click.option(
    "--cpu",
    help="TVM llvm only: the CPU to build for, by LLVM name (default: this machine's, "
    "as its OS reports it); one whose instruction sets this CPU lacks gets a failed row.",
)
@click.option(
    "--dram",
    is_flag=True,
    help="With --plan: also run the plan-driven build once under valgrind's cachegrind "
    "(a cache of 2x the plan's buffer) and show per group its ops, the plan's predicted "
    "DRAM bytes, the simulated ones and the kernel's time (minutes: the run is simulated).",
)
@click.option(
    "--tune-trials",
    type=int,
    default=0,
    help="MetaSchedule trials in all for tvm-tuned (see `fuser compile --help`).",
)
@click.option(
    "--tuning-db",
    type=click.Path(file_okay=False),
    help="Tuning database folder for tvm-tuned, shared with `fuser compile`.",
)
@rpc_options
@click.option(
    "--kernels",
    "top_kernels",
    type=click.IntRange(min=0),
    default=15,
    show_default=True,
    help="Rows of the per-kernel table (slowest first).",
)
@json_option
def command(
    model,
    backends,
    input_shapes,
    threads,
    warmup,
    repeat,
    plan_path,
    dram,
    tune_trials,
    tuning_db,
    cpu,
    rpc_tracker,
    rpc_key,
    top_kernels,
    as_json,
):
    """Time MODEL on several backends; ratios are against ONNX Runtime.

    \b
    Every backend runs the same optimized graph (BatchNorm folded) on the same
    random input: WARMUP untimed calls, then REPEAT timed ones; the table shows
    the median and the spread (min..max). For a TVM build it also times each
    kernel call inside real inferences (as it finds the caches, the timing
    hook's own cost subtracted), so you see where the time goes. With --plan,
    groups TVM runs with one shared kernel (structurally identical groups) each
    get their own calls and name the groups they share the kernel with.

    \b
    A backend that cannot build or run the model gets its row with the reason
    (e.g. `tvm: ... op Elu has no Relax converter`), the others are still timed, and the
    exit status is 3.

    \b
    Examples:
      fuser bench zoo:resnet18 --input-shape 1,3,224,224
      fuser bench zoo:mobilenet_v2 --backends ort,tvm --threads 2 --json
      fuser bench zoo:resnet18 --backends ort,tvm --cpu x86-64-v3
      fuser bench zoo:mobilenet_v2 --backends ort,tvm --plan plan.json --kernels 60
      fuser bench zoo:mobilenet_v2 --input-shape 1,3,64,64 --backends tvm --plan p.json --dram
      fuser bench zoo:mobilenet_v2 --backends ort,tvm,tvm-tuned --tune-trials 500 \\
          --tuning-db db --rpc-tracker 10.0.0.5:9190 --rpc-key epyc-9004
    """
    from fuser.api import optimize
    from fuser.backends import latency as tvm_latency
    from fuser.ir import FuserError

    names = [b.strip() for b in backends.split(",") if b.strip()]
    if not names:
        raise FuserError("--backends: name at least one backend")
    if "tvm-tuned" in names and not (tune_trials and tuning_db):
        raise FuserError("--backends tvm-tuned needs --tune-trials N and --tuning-db DIR")
    if cpu and not any(b.startswith("tvm") for b in names):
        raise FuserError("--cpu applies to the tvm backends; add tvm to --backends")

    if (rpc_tracker or rpc_key) and "tvm-tuned" not in names:
        raise FuserError("--rpc-tracker/--rpc-key time tuning candidates: add tvm-tuned to --backends")
    runner = rpc_runner(rpc_tracker, rpc_key) if "tvm-tuned" in names else None

    def tuning(fused, target):
        return tune_with_progress(fused, target, tuning_db, tune_trials, runner).mod

    if any(b.startswith("tvm") for b in names):
        from fuser.backends import tvm as tb

        tb.require_tvm()
    graph = load_graph(model, input_shapes)
    with status("optimizing"):
        graph = optimize(graph).graph
    groups = plan = tiling = None
    if dram and not plan_path:
        raise FuserError("--dram needs --plan PLAN (it compares the plan's groups with the build)")
    if plan_path:
        from fuser.fusion.plan import Plan, plan_groups
        from fuser.fusion.tiling import tile_hints

        groups, plan = plan_groups(plan_path, graph)
        tiling = tile_hints(Plan.load(plan_path), threads)
    with status("benchmarking"):
        report = tvm_latency.run_report(
            graph,
            names,
            threads=threads,
            warmup=warmup,
            repeat=repeat,
            groups=groups,
            plan_groups=plan,
            tuning=tuning if tuning_db else None,
            cpu=cpu,
            tiling=tiling,
            on_step=lambda s: err.print(f"[dim]{safe(s, total=MESSAGE_LIMIT)}[/]") if not as_json else None,
        )
    traffic = None
    if dram:
        from fuser.fusion.measured import measure_plan
        from fuser.fusion.plan import Plan

        with status("simulating the plan-driven build's DRAM traffic under cachegrind"):
            traffic = measure_plan(graph, Plan.load(plan_path), fuseops=False)
    if as_json:
        data = report.to_dict()
        if traffic is not None:
            data["groups"] = _group_rows(traffic, report)
            data["dram"] = {k: v for k, v in traffic.to_dict().items() if k != "groups"}
        emit_json(data)
    else:
        _print_report(model, report, repeat, top_kernels)
        if traffic is not None:
            _print_traffic(traffic, report)
    if report.failed:
        failed = ", ".join(t.backend for t in report.failed)
        err.print(f"{len(report.failed)} of {len(report.timings)} backends failed: {safe(failed)}")
        sys.exit(FAILED_BACKEND_EXIT)


def _print_report(model, report, repeat: int, top_kernels: int) -> None:
    t = Table(
        title=f"{safe(model)} {report.input_shape}, {report.threads} threads, median of {repeat}",
        title_justify="left",
    )
    for col in ("backend", "median ms", "min..max ms", "vs ORT"):
        t.add_column(col, justify="left" if col == "backend" else "right")
    for r in report.timings:
        if r.error:
            t.add_row(r.backend, "[red]failed[/]", "-", "-")
            continue
        t.add_row(
            r.backend,
            f"{r.median_ms:.3f}",
            f"{r.min_ms:.3f}..{r.max_ms:.3f}",
            f"{r.vs_ort:.2f}x" if r.vs_ort else "-",
        )
    show(t)
    for r in report.failed:  # one line each: the reason is the useful part
        show(f"{r.backend}: {safe(r.error, total=MESSAGE_LIMIT)}")
    if not report.kernels:
        return
    total = sum(k.total_ms for k in report.kernels)
    planned = any(k.group is not None for k in report.kernels)
    kt = Table(
        title=f"TVM {'plan groups' if planned else 'kernels'} ({len(report.kernels)}; each kernel "
        f"timed in the run, as it finds the caches; sum of all calls {total:.3f} ms)",
        title_justify="left",
    )
    many_calls = any(k.calls > 1 for k in report.kernels)
    rated = any(k.flops for k in report.kernels)
    cols = ["kernel"] + (["group"] if planned else []) + (["calls"] if many_calls else []) + ["ms/call", "%"]
    cols += ["GFLOP/s"] if rated else []
    cols += ["ops", "plan DRAM", "shares kernel with"] if planned else []
    for col in cols:
        left = col in ("kernel", "shares kernel with")
        kt.add_column(col, justify="left" if left else "right", overflow="fold" if left else "ellipsis")
    for k in report.kernels[:top_kernels]:
        row = [safe(k.kernel)] + (["-" if k.group is None else str(k.group)] if planned else [])
        row += [str(k.calls)] if many_calls else []
        row += [f"{k.median_ms:.4f}", f"{100 * k.total_ms / max(total, 1e-12):.1f}"]
        if rated:  # under RATED_MS the hook's subtracted cost is most of the time: no rate
            row += [f"{k.gflops:.0f}" if k.gflops and k.median_ms >= RATED_MS else "-"]
        if planned:
            row += [safe(k.ops) or "-", _bytes(k.dram_bytes), ", ".join(map(str, k.shared_with)) or "-"]
        kt.add_row(*row)
    show(kt)


def _print_traffic(traffic, report) -> None:
    gt = Table(
        title=f"plan groups: DRAM predicted vs simulated (cache {_bytes(traffic.cache_bytes)}); "
        f"in all {_bytes(traffic.predicted_bytes)} vs {_bytes(traffic.measured_bytes)}",
        title_justify="left",
    )
    for col in ("group", "ops", "predicted DRAM", "simulated DRAM", "ratio", "kernel ms"):
        gt.add_column(col, justify="left" if col in ("group", "ops") else "right")
    for row in _group_rows(traffic, report):
        ops = ", ".join(row["ops"][:3]) + (f" +{len(row['ops']) - 3}" if len(row["ops"]) > 3 else "")
        gt.add_row(
            str(row["group"]),
            safe(ops),
            _bytes(row["predicted_bytes"]),
            _bytes(row["measured_bytes"]),
            "-" if row["ratio"] is None else f"{row['ratio']:.2f}",
            "-" if row["kernel_ms"] is None else f"{row['kernel_ms']:.4f}",
        )
    show(gt)


def _group_rows(traffic, report) -> list[dict]:
    """Per plan group: ops, predicted and simulated DRAM bytes, and its kernel's time per call
    (a kernel several identical groups share runs once per group)."""
    ms = {k.kernel: k.median_ms for k in report.kernels}
    return [
        {
            "group": g.group,
            "ops": g.ops,
            "kernel": g.kernel,
            "predicted_bytes": g.predicted_bytes,
            "measured_bytes": g.measured_bytes,
            "ratio": g.ratio,
            "kernel_ms": ms.get(g.kernel),
        }
        for g in traffic.groups
    ]
