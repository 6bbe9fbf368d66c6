"""Latency of zoo CNNs at 224x224, batch 1: ONNX Runtime, torch eager (and torch.compile),
TVM with fuser's default schedules (untuned) and TVM tuned from them (MetaSchedule, a stated
trial budget): each median's ratio to ONNX Runtime's and its GFLOP/s (2 x MACs per run), the
TVM compile times, what a TVM call costs besides its kernels (the VM share, with the input
copied per call as before and bound in place as now), and the slowest TVM kernels with
their schedule source next to ONNX Runtime's slowest ops (--ort-profile). All contenders of
a model are timed in one run, interleaved (``fuser.backends.latency.interleaved``). Writes
benchmarks/results/latency.txt.

    python benchmarks/latency.py                       # ResNet-50, MobileNetV2, EfficientNet-B0
    python benchmarks/latency.py --models resnet18 --size 64 --trials 0 --repeat 5   # smoke run
    python benchmarks/latency.py --models all --no-torch-compile      # every zoo model, untuned
    python benchmarks/latency.py --trials mobilenet_v2=2000,resnet50=2000 --ort-profile

Tuning is cached in --tuning-db (benchmarks/.tuning-db, shared across models and runs):
rerunning with the same budget re-uses the records and only builds. On a 2-core CPU
MetaSchedule gets through about 40 trials a minute.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "latency.txt"
MODELS = ("resnet50", "mobilenet_v2", "efficientnet_b0")
# each model at the size its architecture is made for (the zoo's own input shape) with --size 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help="comma list of zoo models, or 'all'")
    ap.add_argument("--size", type=int, default=224, help="input height and width (0: each model's own)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument(
        "--trials",
        default="0",
        help="MetaSchedule trials per model for 'tvm tuned', one number or name=N,... (0: leave it out)",
    )
    ap.add_argument(
        "--tuning-db",
        default=str(Path(__file__).resolve().parent / ".tuning-db"),
        help="MetaSchedule database; the report counts the records behind each "
        "tuned build, so a database filled by bigger runs shows up there",
    )
    ap.add_argument(
        "--no-torch-compile",
        action="store_true",
        help="skip torch.compile (its first call compiles for minutes)",
    )
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="1 thread everywhere, each call timed by this process's CPU time: stable on a "
        "shared, loaded machine (provisional numbers); the issue's ratios are 2-thread wall clock",
    )
    ap.add_argument(
        "--ort-profile",
        action="store_true",
        help="also print ONNX Runtime's slowest ops (its profiler) beside TVM's slowest kernels",
    )
    ap.add_argument("--kernels", type=int, default=8, help="slowest TVM kernels to list per model")
    ap.add_argument("--output", default=str(RESULTS), help="where the text report goes")
    ap.add_argument("--json", action="store_true", help="print the reports as JSON too")
    args = ap.parse_args(argv)
    if args.cpu_time:
        args.threads = 1

    import fuser
    from fuser.api import from_zoo
    from fuser.backends import latency as tvm_latency
    from fuser.backends.tvm import tuning as tvm_tuning
    from fuser.models import input_shape, names

    models = names() if args.models == "all" else [m.strip() for m in args.models.split(",") if m.strip()]
    trials = _per_model(args.trials, models)
    base = ["ort", "torch"] + ([] if args.no_torch_compile else ["torch-compile"]) + ["tvm"]
    behind: dict[str, int] = {}

    def report_plan(budgets):
        behind["records"] = sum(b.records for b in budgets)
        print(
            f"  tuning: {tvm_tuning.describe_budgets(budgets, args.tuning_db)}", file=sys.stderr, flush=True
        )

    def report_progress(done, total, kernel):
        print(f"  tuned {done}/{total} ({kernel})", file=sys.stderr, flush=True)

    def tuning(fused, target):
        tuned = tvm_tuning.tune(
            fused, target, args.tuning_db, behind["budget"], on_plan=report_plan, on_progress=report_progress
        )
        print(f"  {tvm_tuning.describe_result(tuned)}", file=sys.stderr, flush=True)
        tvm_tuning.tune(fused, target, args.tuning_db, 0, on_plan=report_plan)  # count after
        return tuned.mod

    from fuser.backends.tvm import host_cpu
    from fuser.reports.hardware import cpu_name

    lines = [
        f"# fuser latency report ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        f"# {cpu_name()} (LLVM: {host_cpu()}), {args.threads} threads, batch 1, "
        f"{'each model at its own size' if not args.size else f'{args.size}x{args.size}'}, median of "
        f"{args.repeat} after {args.warmup} warm-up"
        f"{' (process CPU time per call)' if args.cpu_time else ''}, backends interleaved in turns "
        f"of 5 calls (the first of each turn untimed); tvm-tuned budget (MetaSchedule trials): {args.trials}",
        "# every backend runs the same optimized graph (BN folded): torch and torch-compile run "
        "it as fuser's torch module; tvm: fuser's default schedules, untuned",
        "# ratios: median / ONNX Runtime median (ORT_ENABLE_ALL); GFLOP/s: 2 x MACs / median",
        "",
    ]
    reports = []
    for name in models:
        print(f"{name}: capturing", file=sys.stderr, flush=True)
        behind.clear()
        behind["budget"] = trials[name]
        backends = base + (["tvm-tuned"] if trials[name] > 0 else [])
        size = args.size or input_shape(name)[-1]
        graph = fuser.optimize(from_zoo(name, (1, 3, size, size))).graph
        start = time.perf_counter()
        report = tvm_latency.run_report(
            graph,
            backends,
            threads=args.threads,
            warmup=args.warmup,
            repeat=args.repeat,
            tuning=tuning,
            on_step=lambda s: print(f"  {s}", file=sys.stderr, flush=True),
            clock=tvm_latency.cpu_clock if args.cpu_time else time.perf_counter,
        )
        reports.append(report)
        first = len(lines)
        lines.append(
            f"{name} {size}x{size} ({time.perf_counter() - start:.0f} s to build, tune and time)"
            + (
                f"; tuned build: budget {trials[name]} trials, {behind['records']} valid "
                f"records in the database for its kernels"
                if trials[name]
                else ""
            )
        )
        lines += _timing_lines(report)
        lines += _kernel_lines(report, args.kernels)
        if args.ort_profile:
            lines += _ort_profile_lines(graph, args.threads, args.kernels)
        lines.append("")
        print("\n".join(lines[first:]), flush=True)
    text = "\n".join(lines) + "\n"
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    from fuser.serde.files import atomic_write

    atomic_write(out, text.encode())
    print(text)
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    return 0


def _timing_lines(report) -> list[str]:
    lines = [
        f"  {'backend':<14}{'median ms':>11}{'min..max ms':>22}{'vs ORT':>9}{'GFLOP/s':>9}{'build s':>9}"
    ]
    for t in report.timings:
        if t.error:
            lines.append(f"  {t.backend:<14}failed: {t.error}")
            continue
        ratio = f"{t.vs_ort:.2f}x" if t.vs_ort else "-"
        gflops = f"{t.gflops:.1f}" if t.gflops else "-"
        built = f"{t.build_s:.1f}" if t.build_s is not None else "-"
        lines.append(
            f"  {t.backend:<14}{t.median_ms:>11.2f}{f'{t.min_ms:.2f}..{t.max_ms:.2f}':>22}"
            f"{ratio:>9}{gflops:>9}{built:>9}"
        )
    o = report.overhead
    if o:
        lines.append(
            f"  TVM call besides its kernels (kernels emptied): {o.copy_in_ms:.3f} ms with the input "
            f"copied per call (before) = {100 * o.share_before:.1f}% of the run, {o.in_place_ms:.3f} ms "
            f"bound in place (now) = {100 * o.share_after:.1f}%"
        )
    return lines


def _kernel_lines(report, top: int) -> list[str]:
    if not report.kernels:
        return []
    total = sum(k.total_ms for k in report.kernels)
    counts: dict[str, int] = {}
    for src in report.kernel_sources.values():
        counts[src] = counts.get(src, 0) + 1
    lines = [
        f"  TVM kernels: {len(report.kernels)} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}); "
        f"timed in the run they sum to {total:.2f} ms; slowest:"
    ]
    for k in report.kernels[:top]:
        src = report.kernel_sources.get(k.kernel, "?")
        lines.append(f"    {k.total_ms:8.3f} ms  x{k.calls:<3d} {src:<10} {k.kernel}")
    return lines


def _ort_profile_lines(graph, threads: int, top: int) -> list[str]:
    """ONNX Runtime's slowest ops, from its profiler (20 runs, per-run ms)."""
    import json
    import os
    import tempfile

    import numpy as np
    import onnxruntime as ort

    from fuser.serde.onnx import to_onnx

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    so.enable_profiling = True
    with tempfile.TemporaryDirectory() as d:
        so.profile_file_prefix = os.path.join(d, "ort")
        session = ort.InferenceSession(
            to_onnx(graph).SerializeToString(), so, providers=["CPUExecutionProvider"]
        )
        x = (
            np.random.default_rng(0)
            .standard_normal([int(v) for v in graph.inputs[0].shape])
            .astype("float32")
        )
        runs = 20
        for _ in range(runs):
            session.run(None, {graph.inputs[0].name: x})
        with open(session.end_profiling()) as f:
            events = json.load(f)
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            key = f"{e['args'].get('op_name', '?')} {e['name'][: -len('_kernel_time')]}"
            per_op[key] = per_op.get(key, 0.0) + e["dur"] / 1e3 / runs
    total = sum(per_op.values())
    lines = [f"  ONNX Runtime ops (its profiler): {len(per_op)}, sum {total:.2f} ms a run; slowest:"]
    for key, ms in sorted(per_op.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {ms:8.3f} ms  {key}")
    return lines


def _per_model(spec: str, models: list[str]) -> dict[str, int]:
    """'2000' (every model) or 'resnet50=600,mobilenet_v2=2000' (others 0)."""
    if "=" not in spec:
        return {m: int(spec) for m in models}
    given = {k.strip(): int(v) for k, v in (p.split("=") for p in spec.split(",") if p.strip())}
    return {m: given.get(m, 0) for m in models}


if __name__ == "__main__":
    sys.exit(main())
