"""`fuser blocks`: find the residual blocks one generated CUDA kernel each computes, and model
(or measure) what fusing them saves."""

from __future__ import annotations

import click

from fuser.blockfusion.devices import DEVICE_NAMES
from fuser.cli.common import emit_json, input_shape_option, json_option, load_graph, show, status
from fuser.reports.text import plain


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
def command(model, input_shapes, as_json, device, measure, emit_dir, plot_path):
    """Block fusion report for MODEL: one CUDA kernel per residual block.

    MODEL is folded (BatchNorm into the convs) and searched for ConvFirst blocks
    (grouped kxk -> 1x1 expand + act -> 1x1 project, + x), MBConv blocks without
    squeeze-and-excite (1x1 expand -> depthwise kxk -> 1x1 project, + x) and
    ResNet basic blocks. For each: MACs, DRAM bytes of the unfused layers and of
    the fused kernel (input with its halo, output, weights), operational
    intensity and roofline latency. Blocks that cannot be fused depth-first
    (squeeze-and-excite, other global ops) are listed with the reason.

    \b
    Examples:
      fuser blocks zoo:convfirst                        # tables, H100 model
      fuser blocks zoo:mobilenet_v2 --json              # blocks[].kind/ops/macs/dram_bytes_*
      fuser blocks zoo:resnet18 --emit-cuda kernels/    # one .cu per distinct kernel
      fuser blocks zoo:convfirst --plot roofline.png    # roofline, fused vs unfused
      fuser blocks zoo:mobilenet_v2 --device cpu --measure   # efficiency gap on this CPU
      fuser blocks model.onnx --input-shape x:32,3,224,224 --device h200
    """
    from fuser.api import optimize
    from fuser.blockfusion.report import blocks_report, emit_kernels, measurement_device
    from fuser.reports.blocks import blocks_view
    from fuser.serde.files import atomic_write

    if measure:
        measurement_device(device)  # a GPU device on a machine without one: refused before capture
    graph = load_graph(model, input_shapes)
    with status("folding BatchNorm into the convs"):
        graph = optimize(graph).graph
    with status("finding blocks" + (" and timing them" if measure else "")):
        report = blocks_report(graph, device, measure)
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
