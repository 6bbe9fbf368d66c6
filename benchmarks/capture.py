"""Capture time: torch.export -> IR directly (fuser.frontends.aten) vs the ONNX exporter path.

Contenders, per model (zoo weights, seed 0, one input at the model's own resolution, eval mode):
  direct    fuser.from_torch(model, x): torch.export + the ATen converter
  exporter  fuser.from_torch(model, x, direct=False): torch.export + PyTorch's ONNX exporter
            (optimize=False) + ONNX import with shape inference and folding (the path before)

Both run in this one process after one warm-up capture of ResNet-18 by each path (the first
torch.export in a process pays seconds of one-time initialisation, which a CLI call pays
once); rounds interleave the contenders and alternate their order; medians of wall time
(and of process CPU time, steadier on a shared machine) are reported, with the direct path's
split into torch.export and conversion. Targets (this machine): ResNet-50 <= 2 s and
EfficientNet-B3 <= 5 s for the direct path.

``--zoo`` adds every zoo model captured directly at full size: time, node count, and the
largest relative error (max |a - b| / max |b|) of the graph in ONNX Runtime against torch eager.

    python benchmarks/capture.py                    # resnet50, efficientnet_b3, 3 rounds
    python benchmarks/capture.py --zoo              # + the whole zoo: time and parity
    python benchmarks/capture.py --quick            # CI smoke: resnet18, 1 round
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

TARGETS = {"resnet50": 2.0, "efficientnet_b3": 5.0}
PARITY = 1e-5


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def _direct_split(model, x) -> tuple[float, float]:
    """(torch.export seconds, conversion seconds) of one direct capture."""
    import torch

    from fuser.frontends.aten import convert_program
    from fuser.frontends.torch import _quiet, export_program

    with torch.no_grad(), _quiet():
        program, t_export, _ = _timed(lambda: export_program(model, (x,)))
        _, t_convert, _ = _timed(lambda: convert_program(program, model))
    return t_export, t_convert


def compare(names: list[str], rounds: int) -> list[dict]:
    import torch

    import fuser
    from fuser import models

    warm = models.create("resnet18").eval()
    for direct in (True, False):
        fuser.from_torch(warm, (torch.zeros(1, 3, 64, 64),), direct=direct)
    rows = []
    for name in names:
        model = models.create(name, seed=0).eval()
        x = torch.randn(models.input_shape(name), generator=torch.Generator().manual_seed(0))
        times = {"direct": [], "exporter": []}
        cpu = {"direct": [], "exporter": []}
        for r in range(rounds):
            order = ("direct", "exporter") if r % 2 == 0 else ("exporter", "direct")
            for how in order:
                graph, wall, cpu_s = _timed(
                    lambda how=how, model=model, x=x: fuser.from_torch(model, (x,), direct=how == "direct")
                )
                times[how].append(wall)
                cpu[how].append(cpu_s)
                print(f"#   {name} round {r} {how}: {wall:.2f} s ({len(graph.nodes)} nodes)", file=sys.stderr)
        t_export, t_convert = _direct_split(model, x)
        row = {
            "model": name,
            "direct_s": statistics.median(times["direct"]),
            "exporter_s": statistics.median(times["exporter"]),
            "direct_cpu_s": statistics.median(cpu["direct"]),
            "exporter_cpu_s": statistics.median(cpu["exporter"]),
            "export_s": t_export,
            "convert_s": t_convert,
        }
        row["ratio"] = row["exporter_s"] / row["direct_s"]
        rows.append(row)
    return rows


def zoo_parity() -> list[dict]:
    import numpy as np
    import onnxruntime as ort
    import torch

    import fuser
    from fuser import models

    rows = []
    for name in models.names():
        model = models.create(name, seed=0).eval()
        x = torch.randn(models.input_shape(name), generator=torch.Generator().manual_seed(0))
        graph, wall, _ = _timed(lambda model=model, x=x: fuser.from_torch(model, (x,)))
        with torch.no_grad():
            want = model(x).numpy()
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(
            fuser.to_onnx(graph).SerializeToString(), so, providers=["CPUExecutionProvider"]
        )
        (got,) = sess.run(None, {graph.inputs[0].name: x.numpy()})
        err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
        direct = all("module" in n.meta for n in graph.nodes)
        rows.append(
            {"model": name, "seconds": wall, "nodes": len(graph.nodes), "rel_err": err, "direct": direct}
        )
        print(f"#   {name}: {wall:.2f} s, rel err {err:.2e}", file=sys.stderr)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(TARGETS), help="comma-separated zoo names")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--zoo", action="store_true", help="also capture the whole zoo: time and parity")
    p.add_argument("--quick", action="store_true", help="CI smoke: resnet18, one round")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.rounds = "resnet18", 1

    import torch

    print(
        f"# from_torch, fp32 CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.1f}; medians of {args.rounds} "
        "interleaved round(s), after one warm-up capture per path",
        flush=True,
    )
    rows = compare(args.models.split(","), args.rounds)
    print(
        f"{'model':<18} {'direct s':>9} {'(export':>8} {'+ convert)':>10} {'exporter s':>11} "
        f"{'ratio':>6} {'direct CPU s':>13} {'exporter CPU s':>15} {'target':>8}"
    )
    for r in rows:
        target = TARGETS.get(r["model"])
        verdict = "-" if target is None else ("MET" if r["direct_s"] <= target else "NOT MET")
        print(
            f"{r['model']:<18} {r['direct_s']:>9.2f} {r['export_s']:>8.2f} {r['convert_s']:>10.2f} "
            f"{r['exporter_s']:>11.2f} {r['ratio']:>5.1f}x {r['direct_cpu_s']:>13.2f} "
            f"{r['exporter_cpu_s']:>15.2f} {verdict + (f' <={target:g}s' if target else ''):>8}"
        )
    if args.zoo:
        zoo = zoo_parity()
        print(f"\n{'zoo model (full size)':<28} {'direct':>6} {'capture s':>10} {'nodes':>6} {'rel err':>9}")
        for r in zoo:
            print(
                f"{r['model']:<28} {'yes' if r['direct'] else 'NO':>6} {r['seconds']:>10.2f} "
                f"{r['nodes']:>6} {r['rel_err']:>9.1e}"
            )
        worst = max(r["rel_err"] for r in zoo)
        ok = worst <= PARITY and all(r["direct"] for r in zoo)
        print(
            f"parity {'MET' if ok else 'NOT MET'}: every zoo model captured directly, "
            f"worst rel err {worst:.1e} (<= {PARITY:g})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
