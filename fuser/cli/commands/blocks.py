"""`fuser blocks`: find the residual blocks one generated CUDA kernel each computes, and model
(or measure) what fusing them saves."""

from __future__ import annotations

from pathlib import Path

import click

from fuser.blockfusion.devices import DEVICE_NAMES
from fuser.cli.common import (
    emit_json,
    input_shape_option,
    json_option,
    load_graph,
    progress_bar,
    show,
    status,
)
from fuser.reports.text import plain


def verify_with_progress(graph, blocks):
    """blockfusion.verify.verify_blocks behind a progress bar (a TVM build per block)."""
    from fuser.blockfusion.verify import verify_blocks

    with progress_bar() as progress:
        task = progress.add_task("building blocks with TVM", total=sum(b.fused for b in blocks))
        return verify_blocks(graph, blocks, on_block=lambda i, n: progress.update(task, completed=i))


def _outputs(emit_dir: str | None, plot_path: str | None, kernels: list[str]) -> list[Path]:
    """The files `fuser blocks` writes: --emit-cuda's <kernel>.cu per kernel and manifest.json
    (as ``emit_kernels`` names them), and the --plot PNG."""
    files = []
    if emit_dir:
        files += [Path(emit_dir) / f"{k}.cu" for k in kernels] + [Path(emit_dir) / "manifest.json"]
    return files + ([Path(plot_path)] if plot_path else [])


@click.command("blocks")
@click.argument("model")
@input_shape_option
@json_option
@click.option(
    "--device",
    type=click.Choice(DEVICE_NAMES),
    default="h100",
    show_default=True,
    help="Peaks for the model: h100/h200 from NVIDIA's specs (fp16 storage); cpu measured "
    "here (fp32). Kernels always target sm_90.",
)
@click.option(
    "--measure",
    is_flag=True,
    help="Time each unfused layer with PyTorch here (and each fused kernel on a GPU) for the "
    "efficiency gap and the measured waterline.",
)
@click.option(
    "--verify",
    is_flag=True,
    help="Build every fused block as one depth-first TVM kernel and compare it with ONNX Runtime "
    "on the block's subgraph (and with the CUDA template's CPU reference where one covers it).",
)
@click.option(
    "--emit-cuda",
    "emit_dir",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Write one .cu per distinct kernel and manifest.json (block → kernel, launch) to DIR.",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    metavar="PNG",
    help="Write a roofline plot: one point per kernel, unfused layers and fused blocks.",
)
def command(model, input_shapes, as_json, device, measure, verify, emit_dir, plot_path):
    """Block fusion report for MODEL: each residual block becomes one kernel.

    MODEL is folded (BatchNorm into the convs) and its residual blocks are found by
    structure: single-entry, single-exit regions whose skip edge rejoins them (ResNet
    basic and bottleneck, MBConv with or without squeeze-and-excite, ConvFirst,
    ConvNeXt, YOLOv8 C2f and bottlenecks, PP-LCNet squeeze-excite, ShuffleNet units).
    Each is listed with what it computes (activations named: SiLU, HardSwish, ...),
    whether it is fused as one depth-first TVM kernel, and why not (ops TVM lacks,
    attention mixing rows); squeeze-and-excite is fused split at its global pool.
    Then the hand-written CUDA templates' report, a cross-check for the blocks they
    cover: MACs, DRAM bytes unfused and fused, intensity, roofline latency.

    \b
    Examples:
      fuser blocks zoo:yolov8n                          # C2f blocks, SiLU named
      fuser blocks zoo:mobilenet_v2 --verify            # each block's TVM kernel vs ORT
      fuser blocks zoo:mobilenet_v2 --json              # residual_blocks[], blocks[] (templates)
      fuser blocks zoo:resnet18 --emit-cuda kernels/    # one .cu per distinct kernel
      fuser blocks zoo:convfirst --plot roofline.png    # roofline, fused vs unfused
      fuser blocks zoo:mobilenet_v2 --device cpu --measure   # efficiency gap on this CPU
      fuser blocks model.onnx --input-shape x:32,3,224,224 --device h200
    """
    from fuser.api import optimize
    from fuser.blockfusion.report import blocks_report, emit_kernels, measurement_device
    from fuser.blockfusion.structure import find_residual_blocks
    from fuser.frontends.onnx import model_files
    from fuser.reports.blocks import blocks_view
    from fuser.serde.files import atomic_write, check_outputs

    if measure:
        measurement_device(device)  # a GPU device on a machine without one: refused before capture
    reads = [] if model.startswith("zoo:") else model_files(model)

    def check(kernels: list[str]) -> None:
        check_outputs(
            _outputs(emit_dir, plot_path, kernels), protect=reads, new_folders=[emit_dir] if emit_dir else []
        )

    check([])  # the outputs known before the model is read; the .cu files once they are known
    graph = load_graph(model, input_shapes)
    with status("folding BatchNorm into the convs"):
        graph = optimize(graph).graph
    with status("finding residual blocks"):
        residual = find_residual_blocks(graph)
    with status("costing the CUDA templates" + (" and timing them" if measure else "")):
        report = blocks_report(graph, device, measure)
    report["residual_blocks"] = [b.to_dict() for b in residual]
    check(sorted({row["kernel"] for row in report["blocks"]}))  # every file, before writing any
    if verify:
        report["residual_checks"] = [c.to_dict() for c in verify_with_progress(graph, residual)]
    notes = []
    if emit_dir:
        manifest = emit_kernels(graph, emit_dir, device)
        report["emitted"] = {"directory": emit_dir, "kernels": sorted({m["file"] for m in manifest})}
        notes.append(f"wrote {len(report['emitted']['kernels'])} kernels and manifest.json to {emit_dir}")
    if plot_path:
        from fuser.reports.plots import figure_bytes, roofline_figure

        atomic_write(plot_path, figure_bytes(roofline_figure(report)))
        notes.append(f"wrote {plot_path}")
    if as_json:
        emit_json(report)
        return
    show(blocks_view(report), *(plain(note) for note in notes))
