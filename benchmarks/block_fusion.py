"""ConvFirst block fusion: one generated CUDA kernel vs PyTorch eager (cuDNN) and torch.compile.

Configurations: ConvFirst block (fuser.models.convfirst_block: 3×3 grouped conv, group width 8
→ 1×1 expand + SiLU → 1×1 project, + x; BN with random statistics), C ∈ {64, 128},
E ∈ {4, 6}, k = 3, 56×56, batch 32, fp16, channels_last.

  fused     fuser's kernel for the block (BN folded; fuser.blockfusion)
  eager     the torch module in eval mode (cuDNN convs, separate BN/SiLU/add kernels)
  eager-bn  the same with BN folded into the convs (fuser.convbn deploy mode)
  compile   torch.compile(module) (Inductor, default mode)

Timing: CUDA events around one call, median of --repeats calls after warm-up, cycling through
8 input tensors (together larger than L2) so no run reads its input from cache. The fused output
is checked against the fp32 module (max |Δ| / max |ref| ≤ 1e-2). Where Nsight Compute (ncu) is on
PATH, --ncu re-runs each configuration under it and reports the DRAM bytes read + written
(dram__bytes_read.sum + dram__bytes_write.sum) of the fused kernel and of eager's kernels,
next to the model's counts. Target: fused ≥ 2× faster than eager.

Without a GPU the script prints the analytic model (MACs, DRAM bytes unfused and fused,
roofline latencies on H100 and H200) and says that it did not time.

    python benchmarks/block_fusion.py                    # the four configurations
    python benchmarks/block_fusion.py --quick            # C=64 E=4, batch 2: a smoke run
    python benchmarks/block_fusion.py --ncu --json out.json
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import statistics
import subprocess
import sys

CONFIGS = [(64, 4), (64, 6), (128, 4), (128, 6)]
KERNEL, HW, BATCH = 3, 56, 32
TARGET_SPEEDUP = 2.0
TOLERANCE = 1e-2
ROTATING_INPUTS = 8


def build(channels: int, expansion: int, batch: int, hw: int):
    """(torch module, folded graph, BlockSpec) of one ConvFirst block."""
    import torch

    import fuser
    from fuser.blockfusion import find_blocks
    from fuser.models import convfirst_block, randomize_batchnorm

    torch.manual_seed(0)
    module = convfirst_block(channels, expansion, KERNEL).eval()
    randomize_batchnorm(module, seed=0)
    graph = fuser.optimize(module, (torch.zeros(batch, channels, hw, hw),)).graph
    blocks, rejected = find_blocks(graph)
    if len(blocks) != 1:
        raise SystemExit(f"expected one ConvFirst block, found {len(blocks)} ({rejected})")
    return module, graph, blocks[0]


def analytic(spec) -> dict:
    from fuser.blockfusion import block_cost, choose_schedule, get_device

    out = {}
    for key in ("h100", "h200"):
        dev = get_device(key)
        cost = block_cost(choose_schedule(spec, key), elem_bytes=2)
        out[key] = {
            "schedule": cost.schedule.summary(),
            "macs": cost.fused.macs,
            "ops": cost.fused.ops,
            "dram_bytes_unfused": sum(k.dram_bytes for k in cost.unfused),
            "dram_bytes_fused": cost.fused.dram_bytes,
            "roofline_us_unfused": 1e6 * sum(k.roofline_seconds(dev) for k in cost.unfused),
            "roofline_us_fused": 1e6 * cost.fused.roofline_seconds(dev),
            "ideal_us": 1e6 * cost.fused.ideal_seconds(dev),
        }
    return out


def _time(fn, inputs, repeats: int) -> float:
    """Median µs of fn(x) over ``repeats`` calls, x cycling through ``inputs``."""
    import torch

    with torch.inference_mode():
        for x in inputs[:3]:
            fn(x)
        torch.cuda.synchronize()
        times = []
        for i in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            x = inputs[i % len(inputs)]
            start.record()
            fn(x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def gpu_target() -> str:
    """The device table's key for this GPU (the schedule's model uses its bandwidth)."""
    import torch

    return "h200" if "H200" in torch.cuda.get_device_name() else "h100"


def run_gpu(module, spec, repeats: int) -> dict:
    import torch

    from fuser.blockfusion import choose_schedule, load_blocks
    from fuser.torchtools.convbn import convbn

    fused = load_blocks([choose_schedule(spec, gpu_target())])[0]
    gen = torch.Generator(device="cuda").manual_seed(0)
    inputs = [
        torch.randn(spec.input_shape, device="cuda", generator=gen)
        .half()
        .contiguous(memory_format=torch.channels_last)
        for _ in range(ROTATING_INPUTS)
    ]
    with torch.inference_mode():
        reference = module.float().cuda()(inputs[0].float())
    eager = module.cuda().half().to(memory_format=torch.channels_last)
    eager_bn = convbn(module, "deploy").cuda().half().to(memory_format=torch.channels_last)
    compiled = torch.compile(eager)
    with torch.inference_mode():
        err = ((fused(inputs[0]).float() - reference).abs().max() / reference.abs().max()).item()
    times = {
        "fused": _time(fused, inputs, repeats),
        "eager": _time(eager, inputs, repeats),
        "eager-bn": _time(eager_bn, inputs, repeats),
        "compile": _time(compiled, inputs, repeats),
    }
    return {
        "device": torch.cuda.get_device_name(),
        "rel_err": err,
        "us": times,
        "speedup_vs_eager": times["eager"] / times["fused"],
        "speedup_vs_compile": times["compile"] / times["fused"],
        "fused_kernel": fused.kernel_name,
    }


def ncu_bytes(channels: int, expansion: int, batch: int) -> dict | None:
    """DRAM bytes read + written per launch, measured by ncu: {'fused': ..., 'eager': ...}."""
    ncu = shutil.which("ncu")
    if ncu is None:
        return None
    cmd = [
        ncu,
        "--clock-control",
        "none",
        "--profile-from-start",
        "off",
        "--metrics",
        "dram__bytes_read.sum,dram__bytes_write.sum",
        "--csv",
        "--print-units",
        "base",
        sys.executable,
        os.path.abspath(__file__),
        "--ncu-worker",
        f"{channels},{expansion},{batch}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    rows = list(csv.DictReader(io.StringIO(proc.stdout[proc.stdout.find('"ID"') :])))
    if not rows:
        return {"error": (proc.stderr or proc.stdout)[-500:]}
    fused = eager = 0.0  # the worker profiles one fused launch and one eager forward, nothing else
    for r in rows:
        value = float(r["Metric Value"].replace(",", ""))
        if r["Kernel Name"].startswith("fbf_"):
            fused += value
        else:
            eager += value
    return {"fused": fused, "eager": eager}


def ncu_worker(arg: str) -> None:
    """Under ncu: warm up, then profile exactly one fused launch and one eager forward."""
    import torch

    from fuser.blockfusion import choose_schedule, load_blocks

    channels, expansion, batch = (int(v) for v in arg.split(","))
    module, _, spec = build(channels, expansion, batch, HW)
    fused = load_blocks([choose_schedule(spec, gpu_target())])[0]
    x = torch.randn(spec.input_shape, device="cuda").half().contiguous(memory_format=torch.channels_last)
    eager = module.cuda().half().to(memory_format=torch.channels_last)
    with torch.inference_mode():
        fused(x)
        eager(x)
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
        fused(x)
        eager(x)
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="C=64 E=4 at batch 2 only (smoke run)")
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--ncu", action="store_true", help="also measure DRAM bytes with Nsight Compute")
    ap.add_argument("--json", metavar="PATH", help="write all numbers as JSON")
    ap.add_argument("--ncu-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ncu_worker:
        ncu_worker(args.ncu_worker)
        return
    import torch

    from fuser.units import human_bytes

    configs, batch = ([CONFIGS[0]], 2) if args.quick else (CONFIGS, BATCH)
    gpu = torch.cuda.is_available()
    results = []
    for c, e in configs:
        module, _, spec = build(c, e, batch, HW)
        row = {
            "channels": c,
            "expansion": e,
            "kernel": KERNEL,
            "hw": HW,
            "batch": batch,
            "block": spec.describe(),
            "model": analytic(spec),
        }
        if gpu:
            row["gpu"] = run_gpu(module, spec, args.repeats)
            if args.ncu:
                row["ncu_dram_bytes"] = ncu_bytes(c, e, batch)
        results.append(row)

    print(
        f"ConvFirst block, k={KERNEL}, {HW}×{HW}, batch {batch}, fp16 storage: analytic model "
        "(DRAM = activations + weights; fused counts each tile's input halo)"
    )
    print(
        f"{'C':>4} {'E':>2} {'MACs':>8} {'DRAM unfused':>13} {'DRAM fused':>11} {'÷':>5} "
        f"{'H100 roof µs unf→fused':>23} {'H200 roof µs unf→fused':>23} {'tile':>6}"
    )
    for r in results:
        h1, h2 = r["model"]["h100"], r["model"]["h200"]
        print(
            f"{r['channels']:>4} {r['expansion']:>2} {h1['macs'] / 1e9:>7.2f}G "
            f"{human_bytes(h1['dram_bytes_unfused']):>13} {human_bytes(h1['dram_bytes_fused']):>11} "
            f"{h1['dram_bytes_unfused'] / h1['dram_bytes_fused']:>5.2f} "
            f"{h1['roofline_us_unfused']:>11.1f}→{h1['roofline_us_fused']:<11.1f}"
            f"{h2['roofline_us_unfused']:>11.1f}→{h2['roofline_us_fused']:<11.1f} "
            f"{'×'.join(map(str, h1['schedule']['tile'])):>6}"
        )
    if not gpu:
        print(
            "\nno CUDA GPU here (torch.cuda.is_available() is False): did not time; "
            "run this script on a GPU machine for fused vs eager vs torch.compile."
        )
    else:
        print(f"\nmeasured on {results[0]['gpu']['device']} (median µs of {args.repeats} calls)")
        print(
            f"{'C':>4} {'E':>2} {'fused':>8} {'eager':>8} {'eager-bn':>9} {'compile':>8} "
            f"{'×eager':>7} {'×compile':>9} {'rel err':>8} {'target':>7}"
        )
        for r in results:
            g = r["gpu"]
            t = g["us"]
            met = "met" if g["speedup_vs_eager"] >= TARGET_SPEEDUP else "missed"
            print(
                f"{r['channels']:>4} {r['expansion']:>2} {t['fused']:>8.1f} {t['eager']:>8.1f} "
                f"{t['eager-bn']:>9.1f} {t['compile']:>8.1f} {g['speedup_vs_eager']:>7.2f} "
                f"{g['speedup_vs_compile']:>9.2f} {g['rel_err']:>8.1e} {met:>7}"
            )
            if r.get("ncu_dram_bytes"):
                n = r["ncu_dram_bytes"]
                if "error" in n:
                    print(f"      ncu failed: {n['error']}")
                else:
                    print(
                        f"      ncu DRAM: fused {human_bytes(n['fused'])} (model "
                        f"{human_bytes(r['model']['h100']['dram_bytes_fused'])}), "
                        f"eager {human_bytes(n['eager'])} "
                        f"(model unfused {human_bytes(r['model']['h100']['dram_bytes_unfused'])})"
                    )
            if g["rel_err"] > TOLERANCE:
                print(f"      WRONG: fused output differs from the fp32 module by {g['rel_err']:.2e}")
    if args.json:
        from fuser.serde.files import atomic_write

        atomic_write(args.json, json.dumps(results, indent=2).encode())


if __name__ == "__main__":
    main()
