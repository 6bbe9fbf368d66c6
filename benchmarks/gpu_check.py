"""The GPU run of block fusion in one prepared script (about 10 minutes on one H100/H200).

  1. CUDA-template kernels: every fused block kernel (``fuser.blockfusion``: ConvFirst, MBConv,
     ResNet basic) that the zoo models hold, one per distinct kernel (blocks of the same shapes
     share it), fp16 channels_last, against the same block in PyTorch eager (cuDNN convs, then
     the activations and the residual add: ``fuser.blockfusion.measure.block_forward``) and
     under torch.compile: median us of each (CUDA events), and each output's error against the
     block in fp32 (max |d| / max |ref|; target <= 1e-3 for the fused kernel).
  2. TVM depth-first kernels: every residual block found by structure (``fuser blocks``:
     ConvNeXt, C2f, MBConv + SE too), one per distinct subgraph, built for cuda as one kernel
     (fp32), against the subgraph in PyTorch eager and under torch.compile (TF32 off). Eager
     here is fuser's torch backend, one torch call per ONNX node, so its Python dispatch
     counts; the torch.compile column has none.
  3. DRAM: ``benchmarks/block_fusion.py --ncu`` where Nsight Compute is on PATH (the ConvFirst
     configurations: bytes read + written by the fused kernel and by eager's kernels).
  4. end to end: ConvFirst against ConvNeXt-T, eager and torch.compile, images/s.
Target (Lavin 2024): a ConvFirst block at least 2x faster fused than eager.

Each part writes its lines to the report as it goes, and a part that would start past
``--budget`` seconds is skipped with a line that says so: a run stopped by its time limit still
leaves what it measured.

    python benchmarks/gpu_check.py --out DIR            # the GPU machine: DIR/gpu_check.txt, .json
    # the lent H200 (its image has torch, onnx, onnxruntime, networkx, rich, scipy; no Apache TVM,
    # whose part then says so in one line), with nothing installed:
    PYTHONUNBUFFERED=1 PYTHONPATH=$PWD python3 benchmarks/gpu_check.py --out $OUT
    python benchmarks/gpu_check.py --device cpu --quick # here: the same flow on the CPU in fp32,
        # the CUDA kernels' tile loop in numpy (fuser.blockfusion.run_schedule) standing in for
        # them, and the TVM kernels built for llvm
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fuser.blockfusion.verify import rel_err

ROOT = Path(__file__).resolve().parent
ZOO = ("convfirst", "convnext_tiny", "resnet18", "mobilenet_v2", "efficientnet_b0", "yolov8n")
TOL = 1e-3


def capture(models, shape) -> dict:
    """{model: its optimized graph (BN folded)} at ``shape``."""
    import fuser

    return {model: fuser.optimize(f"zoo:{model}", input_shapes=shape).graph for model in models}


def distinct_blocks(graphs: dict, device_name: str):
    """[(model, BlockCost, how many blocks share its kernel)], one per distinct CUDA-template
    kernel, in model order; and {model: (blocks found, rejected)}."""
    from fuser.blockfusion.cuda import kernel_name
    from fuser.blockfusion.report import find_and_cost

    seen, picked, counts = {}, [], {}
    for model, graph in graphs.items():
        _, _, costs, rejected = find_and_cost(graph, device_name)
        counts[model] = (len(costs), len(rejected))
        for cost in costs:
            name = kernel_name(cost.schedule)
            if name in seen:
                seen[name][2] += 1
                continue
            seen[name] = entry = [model, cost, 1]
            picked.append(entry)
    return [tuple(e) for e in picked], counts


class Runner:
    """Where the blocks run: fp16 on the GPU with the CUDA kernels, or fp32 on the CPU with the
    kernels' numpy tile loop standing in for them (the same schedule, so the same arithmetic)."""

    def __init__(self, device: str, repeats: int):
        import torch

        self.device, self.repeats = device, repeats
        self.dtype = torch.float16 if device == "cuda" else torch.float32

    def kernels(self, costs):
        if self.device == "cuda":
            from fuser.blockfusion import load_blocks

            return load_blocks([c.schedule for c in costs])
        from fuser.blockfusion import run_schedule

        def numpy_kernel(schedule):
            import torch

            return lambda x: torch.from_numpy(run_schedule(schedule, x.numpy()))

        return [numpy_kernel(c.schedule) for c in costs]

    def time(self, fn, x) -> float:
        from fuser.blockfusion.measure import time_fn

        return time_fn(lambda: fn(x), self.device, self.repeats, warmup=3)

    def input(self, shape, seed: int):
        import torch

        g = torch.Generator().manual_seed(seed)
        x = torch.randn(shape, generator=g)
        if self.device == "cuda":
            x = x.to("cuda", self.dtype).contiguous(memory_format=torch.channels_last)
        return x


def part_blocks(args, runner: Runner, report, graphs: dict) -> None:
    target = "cpu" if runner.device == "cpu" else args.target
    blocks, counts = distinct_blocks(graphs, target)
    for model, (found, rejected) in counts.items():
        report.line(f"  {model}: {found} blocks fused, {rejected} refused")
    kernels = runner.kernels([c for _, c, _ in blocks])
    report.line(
        f"{'model':<14} {'kind':<13} {'block':<26} {'shares':>6} {'fused us':>9} {'eager us':>9} "
        f"{'compile us':>10} {'eager/fused':>11} {'err fused':>9} {'err eager':>9}"
    )
    for (model, cost, shares), kernel in zip(blocks, kernels):
        try:
            template_row(args, runner, report, model, cost, shares, kernel)
        except Exception as error:  # noqa: BLE001
            report.failed(f"{model} {cost.spec.name}", error)
    convfirst = [r["speedup"] for r in report.rows if r.get("kind") == "convfirst"]
    if runner.device == "cpu":
        report.line("(CPU: 'fused' is the kernel's tile loop in numpy, not a kernel: its time says nothing)")
    elif convfirst:
        met = "met" if min(convfirst) >= 2 else "missed"
        span = f"{min(convfirst):.2f}x .. {max(convfirst):.2f}x"
        report.line(f"ConvFirst blocks fused vs eager: {span} (target 2x: {met})")


def template_row(args, runner: Runner, report, model: str, cost, shares: int, kernel) -> None:
    import torch

    from fuser.blockfusion.measure import block_forward

    spec = cost.spec
    x = runner.input(spec.input_shape, seed=len(report.rows))
    eager = block_forward(spec, runner.device, runner.dtype)
    reference = block_forward(spec, runner.device, torch.float32)
    with torch.inference_mode():
        want = reference(x.float()).float().cpu()
        got = kernel(x).float().cpu()
        got_eager = eager(x).float().cpu()
    row = dict(model=model, kind=spec.kind, block=spec.name, shares=shares)
    row.update(err_fused=rel_err(got, want), err_eager=rel_err(got_eager, want))
    if runner.device == "cpu":  # what fp16 storage would cost the kernel, before any GPU runs it
        from fuser.blockfusion import run_schedule

        row["err_fp16_simulated"] = rel_err(run_schedule(cost.schedule, x.numpy(), "fp16"), want)
    row.update(fused_us=1e6 * runner.time(kernel, x), eager_us=1e6 * runner.time(eager, x))
    row["compile_us"] = None
    if args.compile and report.left() > 60:
        compiled = torch.compile(eager)
        row["compile_us"] = 1e6 * runner.time(compiled, x)
    row["speedup"] = row["eager_us"] / row["fused_us"]
    report.rows.append(row)
    compiled_us = "-" if row["compile_us"] is None else f"{row['compile_us']:.1f}"
    flag = "" if row["err_fused"] <= TOL else "  > 1e-3"
    if "err_fp16_simulated" in row:
        flag += f"  fp16 (simulated) {row['err_fp16_simulated']:.1e}"
    report.line(
        f"{model:<14} {spec.kind:<13} {spec.name:<26} {shares:>6} {row['fused_us']:>9.1f} "
        f"{row['eager_us']:>9.1f} {compiled_us:>10} {row['speedup']:>10.2f}x "
        f"{row['err_fused']:>9.1e} {row['err_eager']:>9.1e}{flag}"
    )


def part_tvm_blocks(args, runner: Runner, report, graphs: dict) -> None:
    """Every residual block found by structure (``fuser blocks``: ConvNeXt, C2f, SE blocks
    too), one per distinct subgraph, as one depth-first TVM kernel (fp32; cuda on the GPU,
    llvm on the CPU) against the same subgraph in PyTorch eager and under torch.compile (fp32,
    TF32 off: the same arithmetic)."""
    import importlib.util

    import torch

    from fuser.blockfusion.structure import find_residual_blocks

    if importlib.util.find_spec("tvm") is None:
        report.line("Apache TVM is not installed here: no TVM kernels built")
        return
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    report.line(
        f"{'model':<14} {'kind':<22} {'block':<34} {'tvm us':>9} {'eager us':>9} {'compile us':>10} "
        f"{'eager/tvm':>9} {'err tvm':>8}"
    )
    seen = set()
    for model, graph in graphs.items():
        by_name = {n.name: n for n in graph.nodes}
        for block in (b for b in find_residual_blocks(graph, templates=False) if b.fused):
            sub = graph.extract([by_name[n] for n in block.nodes], name="block")
            key = (tuple(tuple(v.shape) for v in sub.inputs), tuple(n.op for n in sub.nodes))
            if key in seen:
                continue
            if report.left() < 60:
                report.line(f"(stopped before {model} {block.name}: the budget is nearly spent)")
                return
            seen.add(key)
            try:
                tvm_row(args, runner, report, model, graph, block, sub, len(seen))
            except Exception as error:  # noqa: BLE001
                report.failed(f"{model} {block.name}", error)


def tvm_row(args, runner: Runner, report, model: str, graph, block, sub, seed: int) -> None:
    import torch

    from fuser.backends.torch import to_torch
    from fuser.blockfusion.verify import compile_block

    _, kernel, _ = compile_block(graph, block.nodes, "cuda" if runner.device == "cuda" else "llvm")
    rng = np.random.default_rng(seed)
    feeds = [rng.standard_normal([int(d) for d in v.shape]).astype(np.float32) for v in sub.inputs]
    eager = to_torch(sub).to(runner.device).eval()
    xs = [torch.from_numpy(a).to(runner.device) for a in feeds]
    with torch.inference_mode():
        want = eager(*xs)
    want = (want[0] if isinstance(want, (tuple, list)) else want).float().cpu()
    row = dict(model=model, kind=block.kind, block=block.name, tvm=True)
    row["err_tvm"] = rel_err(kernel(*feeds)[0], want)
    timed = kernel.time_main(*feeds, number=args.repeats, repeat=3)
    row["tvm_us"] = 1e6 * float(np.median(timed.results))
    row["eager_us"] = 1e6 * runner.time(lambda x, f=eager: f(*x), xs)
    row["compile_us"] = None
    if args.compile and report.left() > 90:
        compiled = torch.compile(eager)
        row["compile_us"] = 1e6 * runner.time(lambda x, f=compiled: f(*x), xs)
    report.rows.append(row)
    compiled_us = "-" if row["compile_us"] is None else f"{row['compile_us']:.1f}"
    report.line(
        f"{model:<14} {block.kind:<22} {block.name:<34} {row['tvm_us']:>9.1f} "
        f"{row['eager_us']:>9.1f} {compiled_us:>10} {row['eager_us'] / row['tvm_us']:>8.2f}x "
        f"{row['err_tvm']:>8.1e}"
    )


def part_ncu(args, report) -> None:
    if shutil.which("ncu") is None:
        report.line("Nsight Compute (ncu) is not on PATH: no measured DRAM bytes")
        return
    timeout = max(report.left() - 90, 30)
    cmd = [
        sys.executable,
        str(ROOT / "block_fusion.py"),
        "--ncu",
        "--json",
        str(args.out / "block_fusion.json"),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        report.line(proc.stdout.rstrip() or proc.stderr[-2000:])
    except subprocess.TimeoutExpired:
        report.line(f"block_fusion.py --ncu stopped after {timeout:.0f} s")


def part_end_to_end(args, runner: Runner, report) -> None:
    import torch

    from fuser.models import create

    report.line(f"{'model':<14} {'eager img/s':>12} {'compile img/s':>14}")
    x = runner.input((args.batch, 3, args.size, args.size), seed=0)
    for name in ("convfirst", "convnext_tiny"):
        model = create(name).to(runner.device, runner.dtype)
        if runner.device == "cuda":
            model = model.to(memory_format=torch.channels_last)
        eager = args.batch / runner.time(model, x)
        compiled = None
        if args.compile and report.left() > 90:
            compiled = args.batch / runner.time(torch.compile(model), x)
        report.rows.append(dict(model=name, end_to_end=True, eager_img_s=eager, compile_img_s=compiled))
        report.line(f"{name:<14} {eager:>12.1f} {'-' if compiled is None else f'{compiled:.1f}':>14}")


class Report:
    """The lines and rows measured so far, written out after each line; the time left to the
    part running (its share of the budget) and to the whole run."""

    def __init__(self, out: Path, budget: float):
        self.out, self.rows, self.lines = out, [], []
        self.deadline = self.part_deadline = time.perf_counter() + budget

    def start_part(self, seconds: float) -> None:
        self.part_deadline = min(self.deadline, time.perf_counter() + seconds)

    def left(self) -> float:
        return min(self.deadline, self.part_deadline) - time.perf_counter()

    def total_left(self) -> float:
        return self.deadline - time.perf_counter()

    def failed(self, what: str, error: Exception) -> None:
        """One line for what failed, and on: one block's error must not cost the run."""
        self.line(
            f"{what}: FAILED, {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        )

    def line(self, text: str) -> None:
        print(text, flush=True)
        self.lines.append(text)
        self.save()

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.txt").write_text("\n".join(self.lines) + "\n")
        (self.out / "gpu_check.json").write_text(json.dumps(self.rows, indent=1) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda", help="where to run (cpu: the flow's check)"
    )
    ap.add_argument("--target", default="h100", help="schedules for this GPU's limits (h100, h200)")
    ap.add_argument("--models", default=",".join(ZOO), help="comma list of zoo models for the blocks part")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224, help="input height and width")
    ap.add_argument("--repeats", type=int, default=50, help="timed calls per kernel (median)")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile")
    ap.add_argument("--budget", type=float, default=540, help="seconds; a part past it is skipped")
    ap.add_argument("--quick", action="store_true", help="batch 1, 64x64, ConvFirst only, 3 repeats")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.size, args.repeats, args.models = 1, 64, 3, "convfirst"
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU here (torch.cuda.is_available() is False); --device cpu runs the flow on the CPU")
        return 2
    if args.device == "cuda":
        args.target = "h200" if "H200" in torch.cuda.get_device_name() else args.target
    report = Report(args.out, args.budget)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({os.cpu_count()} cores), fp32"
    report.line(
        f"# python benchmarks/gpu_check.py  ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {where}, "
        f"torch {torch.__version__}; batch {args.batch}, {args.size}x{args.size})"
    )
    runner = Runner(args.device, args.repeats)
    graphs = capture(args.models.split(","), (args.batch, 3, args.size, args.size))
    template = f"CUDA-template block kernels ({'fp16' if args.device == 'cuda' else 'fp32, numpy stand-in'})"
    # (name, share of the budget, run): the TVM kernels, the slowest to build, take what is left
    parts = [
        (template, 0.3, lambda: part_blocks(args, runner, report, graphs)),
        ("end to end", 0.2, lambda: part_end_to_end(args, runner, report)),
    ]
    if args.device == "cuda":
        parts.append(("DRAM (ncu)", 0.2, lambda: part_ncu(args, report)))
    parts.append(
        ("TVM depth-first block kernels (fp32)", 1.0, lambda: part_tvm_blocks(args, runner, report, graphs))
    )
    for name, share, run in parts:
        if report.total_left() <= 0:
            report.line(f"\n{name}: skipped, the {args.budget:.0f} s budget is spent")
            continue
        report.line(f"\n{name}:")
        report.start_part(share * args.budget)
        start = time.perf_counter()
        try:
            run()
        except Exception as error:  # noqa: BLE001 - the next part still runs
            report.failed(name, error)
        report.line(f"({name}: {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
