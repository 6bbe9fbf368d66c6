"""`fuser compile`: build MODEL with Apache TVM into a deployable folder."""

from __future__ import annotations

import os
import time

import click
from rich.table import Table

from fuser.cli.common import emit_json, err, input_shape_option, json_option, load_graph, safe, show, status


def rpc_options(f):
    """--rpc-tracker / --rpc-key: time tuning candidates on a farm through TVM's RPC tracker."""
    f = click.option(
        "--rpc-key",
        metavar="KEY",
        help="With --rpc-tracker: the key the farm's devices registered under (rpc_server --key).",
    )(f)
    return click.option(
        "--rpc-tracker",
        metavar="HOST:PORT",
        help="Time tuning candidates on the devices of this TVM RPC tracker (built here, one "
        "process per core); see the README's 'Tuning on a farm'.",
    )(f)


def rpc_runner(rpc_tracker: str | None, rpc_key: str | None):
    """MetaSchedule's RPC runner for --rpc-tracker/--rpc-key, or None (local runner)."""
    from fuser.backends.tvm import tuning as tvm_tuning
    from fuser.ir import FuserError

    if not rpc_tracker and not rpc_key:
        return None
    if not (rpc_tracker and rpc_key):
        raise FuserError("--rpc-tracker and --rpc-key go together (HOST:PORT and the devices' key)")
    return tvm_tuning.rpc_runner(rpc_tracker, rpc_key)


def tune_with_progress(fused, target, tuning_db: str, trials: int, runner=None, schedules: bool = True):
    """MetaSchedule tuning (fuser.backends.tvm.tuning) behind a progress bar of trials;
    with 0 trials it only applies what the database already holds. Returns the
    TuningResult; a failed tuning raises its FuserError after the bar says so."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fuser.backends.tvm import tuning as tvm_tuning
    from fuser.ir import FuserError
    from fuser.reports.text import markup_safe

    with Progress(
        TextColumn("tuning {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as progress:
        bar = progress.add_task("kernels", total=None)

        def on_plan(budgets):
            err.print(f"[dim]{markup_safe(tvm_tuning.describe_budgets(budgets, tuning_db))}[/]")
            progress.update(bar, total=sum(b.want for b in budgets if not b.tuned))

        def on_progress(done, total, kernel):
            progress.update(bar, completed=done, description=safe(kernel))

        try:
            result = tvm_tuning.tune(
                fused,
                target,
                tuning_db,
                trials,
                on_plan=on_plan,
                on_progress=on_progress,
                runner=runner,
                schedules=schedules,
            )
        except KeyboardInterrupt:
            err.print(
                f"stopped after the current batch; its records are in {tuning_db}: the same command resumes"
            )
            raise
        except FuserError:
            progress.update(bar, description="failed")
            raise
        progress.update(bar, completed=result.trials_run, description="done")
    err.print(markup_safe(tvm_tuning.describe_result(result)), highlight=False)
    return result


@click.command("compile")
@click.argument("model")
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder to write model.so and metadata.json into (created if missing).",
)
@click.option(
    "--target",
    type=click.Choice(["llvm", "cuda"]),
    default="llvm",
    show_default=True,
    help="llvm: this CPU. cuda: NVIDIA GPUs (compiles with nvcc; no GPU needed to build).",
)
@click.option(
    "--cpu",
    help="llvm only: the CPU to generate code for, by LLVM name (default: this machine's "
    "as its OS reports it: LLVM's name minus the instruction sets the OS hides). "
    "x86-64-v3 runs on any x86 machine with AVX2, x86-64 on any.",
)
@input_shape_option
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(dir_okay=False),
    help="A fusion plan (JSON from fuser's fusion planner): each group becomes exactly "
    "one TVM kernel. Without it TVM's FuseOps chooses the kernels.",
)
@click.option(
    "--depth-first/--no-depth-first",
    default=True,
    show_default=True,
    help="With --plan: each group's kernel produces its last output row by row with every "
    "producer in the same loop (LBDF line buffers, BRR tiles); --no-depth-first keeps TVM's "
    "op-after-op loops inside the kernel.",
)
@click.option(
    "--tune-trials",
    type=int,
    default=0,
    show_default=True,
    help="MetaSchedule trials in all (0: untuned, default schedules).",
)
@click.option(
    "--tuning-db",
    type=click.Path(file_okay=False),
    help="Folder of MetaSchedule records, reused across runs and models: a kernel "
    "already tuned there is not tuned again, and an interrupted run resumes.",
)
@rpc_options
@click.option(
    "--no-default-schedules",
    "plain",
    is_flag=True,
    help="llvm: TVM's plain pipeline (NCHW, kernels as legalized, no fast math) instead of "
    "fuser's blocked layouts and default schedules; for comparison (tens of times slower untuned).",
)
@json_option
def command(
    model,
    out_dir,
    target,
    cpu,
    input_shapes,
    plan_path,
    depth_first,
    tune_trials,
    tuning_db,
    rpc_tracker,
    rpc_key,
    plain,
    as_json,
):
    """Compile MODEL with Apache TVM and write a deployable build to OUT_DIR.

    fuser's passes (BatchNorm folding, cleanups) run first; the graph is then
    lowered to TVM Relax and built. For llvm, convolutions run in blocked
    channel layouts (weights rearranged at build time) and every kernel gets one
    of fuser's default schedules, sized from the CPU's vector width and caches;
    the summary names the rule of each kernel (or `tuned`, or `naive` for one no
    rule took). Tuning (--tune-trials N --tuning-db DIR: N trials in all, split
    over the kernels, ~40 a minute on 2 cores) searches around those schedules
    and never keeps a slower one; --rpc-tracker times the candidates on a farm.
    Run the result with `fuser run OUT_DIR` or from Python with
    fuser.load(OUT_DIR)(x) -> list of numpy outputs.

    \b
    Examples:
      fuser compile zoo:resnet18 -o r18_tvm
      fuser compile zoo:resnet18 -o r18_portable --cpu x86-64-v3
      fuser compile model.onnx -o det_cuda --target cuda --input-shape x:1,3,640,640
      fuser compile zoo:resnet18 -o r18_plan --plan r18.plan.json
      fuser compile zoo:resnet18 -o r18_tuned --tune-trials 2000 --tuning-db ~/.fuser-tuning
      fuser compile zoo:resnet18 -o r18_farm --tune-trials 2000 --tuning-db db \\
          --rpc-tracker 10.0.0.5:9190 --rpc-key epyc-9004
      fuser compile zoo:resnet18 -o r18_plain --no-default-schedules --json
    """
    from fuser.api import optimize
    from fuser.backends import tvm as tb
    from fuser.backends.tvm import artifact as tvm_artifact
    from fuser.backends.tvm.schedules import cpu_facts, schedule_sources
    from fuser.fusion.plan import plan_groups
    from fuser.ir import FuserError

    tb.require_tvm()
    if cpu and target != "llvm":
        raise FuserError("--cpu applies to --target llvm only")
    if tune_trials < 0:
        raise FuserError("--tune-trials: give a number of trials >= 0")
    if tune_trials and not tuning_db:
        raise FuserError("--tune-trials needs --tuning-db DIR (tuning records are kept there and reused)")
    if (rpc_tracker or rpc_key) and not tune_trials:
        raise FuserError(
            "--rpc-tracker/--rpc-key time tuning candidates: add --tune-trials N and --tuning-db DIR"
        )
    if plain and target != "llvm":
        raise FuserError("--no-default-schedules applies to --target llvm only")
    schedules = not plain
    runner = rpc_runner(rpc_tracker, rpc_key)  # a bad tracker is refused before minutes of work
    # A bad --cpu is refused before the (slow) capture, not after it.
    tvm_target = tb.make_target(target, cpu=cpu)
    graph = load_graph(model, input_shapes)
    if os.path.isdir(out_dir):  # an input in OUT_DIR (a MODEL named model.so) is refused before the build
        tvm_artifact.check_build_outputs(out_dir)
    with status("optimizing"):
        graph = optimize(graph).graph
    groups, plan = plan_groups(plan_path, graph) if plan_path else (None, None)
    start = time.perf_counter()
    with status(f"lowering to Relax for {target}"):
        mod = tb.to_relax(graph, groups)
        tiling = None
        if plan_path and depth_first:
            from fuser.fusion.plan import Plan
            from fuser.fusion.tiling import tile_hints

            threads = int(tvm_target.attrs["num-cores"]) if target == "llvm" else 1
            tiling = tile_hints(Plan.load(plan_path), threads)
        fused = tb.fuse(mod, tvm_target, planned=bool(groups), tiling=tiling, schedules=schedules)
        kernels = tb.kernel_names(fused)
        group_kernels = tb.group_kernels(mod)
    tuning = None
    if tuning_db:
        tuned = tune_with_progress(fused, tvm_target, tuning_db, tune_trials, runner, schedules)
        fused = tuned.mod
        tuning = {
            "trials_requested": tuned.trials_requested,
            "trials_run": tuned.trials_run,
            "build_errors": tuned.build_errors,
            "kernels": {b.name: b.want for b in tuned.budgets},
            "seeded": tuned.seeded,
            "rpc_tracker": rpc_tracker,
            "rpc_key": rpc_key,
        }
    with status(f"scheduling {len(kernels)} kernels"):
        fused = tb.schedule(fused, tvm_target, schedules)
        sources = schedule_sources(fused)
    with status(f"building for {target}"):
        executable = tb.build_fused(fused, tvm_target, schedules)
    build_s = time.perf_counter() - start
    with status(f"writing {out_dir}"):
        meta = tvm_artifact.save(
            out_dir,
            executable,
            graph,
            tvm_target,
            extra={
                "kernels": kernels,
                "kernel_calls": tb.kernel_calls(fused),
                "plan": plan_path,
                "plan_groups": len(plan) if plan else None,
                "depth_first": tb.depth_first_reports(fused) if tiling else None,
                # group id -> kernel, and the kernels TVM shares between identical groups
                "group_kernels": {str(g): k for g, k in group_kernels.items()} if plan else None,
                "shared_kernels": tb.shared_kernels(group_kernels) if plan else None,
                "tune_trials": tune_trials,
                "tuning_db": tuning_db,
                "tuning": tuning,
                "default_schedules": schedules if target == "llvm" else None,
                "cpu_facts": cpu_facts(tvm_target).to_dict() if target == "llvm" else None,
                "kernel_schedules": sources,
            },
        )
    summary = {"output": out_dir, "build_seconds": round(build_s, 2), **meta}
    if as_json:
        emit_json(summary)
        return
    t = Table(title=f"{safe(model)} -> {safe(out_dir)} ({target})", title_justify="left", show_header=False)
    t.add_column("")
    t.add_column("")
    for label, specs in (("inputs", meta["inputs"]), ("outputs", meta["outputs"])):
        t.add_row(label, ", ".join(f"{safe(s['name'])} {s['dtype']}{s['shape']}" for s in specs))
    t.add_row("kernels", f"{len(kernels)}" + (f" for {len(plan)} plan groups" if plan else ""))
    shared = meta.get("shared_kernels")
    if shared:
        t.add_row(
            "shared kernels",
            f"{sum(map(len, shared.values()))} groups are structurally identical to another group "
            f"and share its kernel: "
            + "; ".join(f"{k} runs groups {', '.join(map(str, g))}" for k, g in shared.items()),
        )
    if target == "llvm":
        t.add_row("cpu", f"{meta['cpu']}" + (f" ({' '.join(meta['mattr'])})" if meta["mattr"] else ""))
        t.add_row("features", _features_line(meta["cpu_features"]))
        facts = meta["cpu_facts"]
        t.add_row(
            "tiles from",
            f"{facts['vector_lanes_f32']} float lanes, {facts['vector_registers']} vector registers; "
            f"caches L1d {_kib(facts['l1d_bytes'])}, L2 {_kib(facts['l2_bytes'])}, "
            f"L3 {_kib(facts['l3_bytes'])} (this host's)",
        )
        t.add_row("schedules", _sources_line(sources, schedules))
    else:
        t.add_row("cuda arch", meta["cuda_arch"])
    if tuning:
        t.add_row("tuning", f"{tuning['trials_run']} of {tuning['trials_requested']} trials run this time")
    t.add_row("versions", ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    t.add_row("build", f"{build_s:.1f} s")
    show(t)
    if target == "llvm":
        show(_kernel_table(sources, meta["kernel_calls"]))


# the instruction sets worth naming first; the full list is in --json
_VECTOR_ISAS = ("sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512vnni")


def _features_line(features: list[str]) -> str:
    shown = [f for f in _VECTOR_ISAS if f in features]
    return f"{', '.join(shown) or 'no vector ISA beyond SSE2'} ({len(features)} instruction sets in all)"


def _kib(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def _sources_line(sources: dict[str, str], schedules: bool) -> str:
    counts: dict[str, int] = {}
    for s in sources.values():
        counts[s] = counts.get(s, 0) + 1
    text = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return text + ("" if schedules else " (--no-default-schedules)")


def _kernel_table(sources: dict[str, str], calls: dict[str, int]) -> Table:
    """One row per kernel: its schedule's source (default rule, tuned, naive)."""
    from fuser.backends.tvm.schedules import NAIVE, TUNED

    t = Table(title="kernel schedules", title_justify="left")
    for col in ("kernel", "calls", "schedule"):
        t.add_column(col, justify="right" if col == "calls" else "left", overflow="fold")
    for name, source in sorted(sources.items()):
        style = "red" if source == NAIVE else "green" if source == TUNED else ""
        t.add_row(safe(name), str(calls.get(name, 1)), f"[{style}]{source}[/]" if style else source)
    return t
