"""Latency of zoo CNNs at 224x224, batch 1: torch eager, torch.compile, ONNX Runtime,
TVM untuned and TVM tuned (MetaSchedule, a stated trial budget), ratios against ONNX
Runtime, all from one run. Writes benchmarks/results/latency.txt.

    python benchmarks/latency.py                       # ResNet-50, MobileNetV2, EfficientNet-B0
    python benchmarks/latency.py --models resnet18 --size 64 --trials 0 --repeat 5   # smoke run
    python benchmarks/latency.py --trials mobilenet_v2=2000,resnet50=1000,efficientnet_b0=1000

Tuning is cached in --tuning-db (benchmarks/.tuning-db, shared across models and runs):
rerunning with the same budget re-uses the records and only builds. On a 2-core CPU
MetaSchedule gets through about 40 trials a minute.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "latency.txt"
MODELS = ("resnet50", "mobilenet_v2", "efficientnet_b0")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help="comma list of zoo models")
    ap.add_argument("--size", type=int, default=224, help="input height and width")
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
    ap.add_argument("--output", default=str(RESULTS), help="where the text report goes")
    ap.add_argument("--json", action="store_true", help="print the reports as JSON too")
    args = ap.parse_args(argv)

    import fuser
    from fuser.api import from_zoo
    from fuser.backends import latency as tvm_latency
    from fuser.backends.tvm import tuning as tvm_tuning

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    trials = _per_model(args.trials, models)
    base = ["torch"] + ([] if args.no_torch_compile else ["torch-compile"]) + ["ort", "tvm"]
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

    lines = [
        f"# fuser latency report ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        f"# {platform.processor() or platform.machine()}, {args.threads} threads, batch 1, "
        f"{args.size}x{args.size}, median of {args.repeat} after {args.warmup} warm-up; "
        f"tvm-tuned budget (MetaSchedule trials): {args.trials}",
        "# every backend runs the same optimized graph (BN folded): torch and torch-compile run "
        "it as fuser's torch module",
        "# ratios: median / ONNX Runtime median (ORT_ENABLE_ALL)",
        "",
    ]
    reports = []
    for name in models:
        print(f"{name}: capturing", file=sys.stderr, flush=True)
        behind.clear()
        behind["budget"] = trials[name]
        backends = base + (["tvm-tuned"] if trials[name] > 0 else [])
        graph = fuser.optimize(from_zoo(name, (1, 3, args.size, args.size))).graph
        start = time.perf_counter()
        report = tvm_latency.run_report(
            graph,
            backends,
            threads=args.threads,
            warmup=args.warmup,
            repeat=args.repeat,
            tuning=tuning,
            on_step=lambda s: print(f"  {s}", file=sys.stderr, flush=True),
        )
        reports.append(report)
        lines.append(
            f"{name} ({time.perf_counter() - start:.0f} s to build, tune and time)"
            + (
                f"; tuned build: budget {trials[name]} trials, {behind['records']} valid "
                f"records in the database for its kernels"
                if trials[name]
                else ""
            )
        )
        lines.append(f"  {'backend':<14}{'median ms':>11}{'min..max ms':>22}{'vs ORT':>9}")
        for t in report.timings:
            if t.error:
                lines.append(f"  {t.backend:<14}failed: {t.error}")
                continue
            ratio = f"{t.vs_ort:.2f}x" if t.vs_ort else "-"
            lines.append(
                f"  {t.backend:<14}{t.median_ms:>11.2f}{f'{t.min_ms:.2f}..{t.max_ms:.2f}':>22}{ratio:>9}"
            )
        top = report.kernels[:5]
        if top:
            lines.append(
                "  slowest TVM kernels: " + ", ".join(f"{k.kernel} {k.median_ms:.2f} ms" for k in top)
            )
        lines.append("")
        print("\n".join(lines[-(len(report.timings) + 4) :]), flush=True)
    text = "\n".join(lines) + "\n"
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    from fuser.serde.files import atomic_write

    atomic_write(out, text.encode())
    print(text)
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    return 0


def _per_model(spec: str, models: list[str]) -> dict[str, int]:
    """'2000' (every model) or 'resnet50=600,mobilenet_v2=2000' (others 0)."""
    if "=" not in spec:
        return {m: int(spec) for m in models}
    given = {k.strip(): int(v) for k, v in (p.split("=") for p in spec.split(",") if p.strip())}
    return {m: given.get(m, 0) for m in models}


if __name__ == "__main__":
    sys.exit(main())
