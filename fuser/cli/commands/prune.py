"""`fuser prune`: structured channel pruning of an ONNX file or zoo model."""

from __future__ import annotations

import click

from fuser.cli.common import (
    emit_json,
    input_shape_option,
    json_option,
    load_graph,
    progress_bar,
    show,
    status,
)
from fuser.ir import FuserError
from fuser.pruning.importance import CRITERIA, NORMALIZERS, REDUCTIONS

STEPS = ("dependencies", "importance", "selection", "rewrite")


def _layer_ratios(specs: tuple[str, ...]) -> dict[str, float] | None:
    ratios = {}
    for spec in specs:
        pattern, sep, value = spec.rpartition("=")
        try:
            ratios[pattern] = float(value)
        except ValueError:
            pattern = ""
        if not sep or not pattern:
            raise FuserError(f"--layer-ratio '{spec}': write PATTERN=RATIO, e.g. 'layer4.*=0.7'")
    return ratios or None


def _load_data(path: str | None):
    """Inputs (and targets) for taylor: an .npy of inputs or an .npz with x (and y)."""
    if path is None:
        return None
    import numpy as np

    try:
        loaded = np.load(path)
    except Exception as e:
        raise FuserError(f"--data {path}: not a readable .npy/.npz file ({type(e).__name__})") from None
    if isinstance(loaded, np.ndarray):
        return loaded
    if "x" not in loaded:
        raise FuserError(f"--data {path}: an .npz needs an array 'x' (inputs) and optionally 'y'")
    return (loaded["x"], loaded["y"]) if "y" in loaded else loaded["x"]


@click.command("prune")
@click.argument("model")
@click.argument("output")
@click.option(
    "--ratio", type=float, required=True, help="Fraction of each group's channels to remove, in [0, 1)."
)
@click.option(
    "--criterion",
    type=click.Choice(CRITERIA),
    default="l2",
    show_default=True,
    help="l1/l2: weight magnitude; taylor: |w·dL/dw| on --data; obs: data-free, compensates the next layers.",
)
@click.option(
    "--global",
    "global_pruning",
    is_flag=True,
    help="Rank channels of all groups together (ratio of all channels), not per group.",
)
@click.option(
    "--round-to",
    type=int,
    default=8,
    show_default=True,
    help="Keep channel counts multiples of this (vector-friendly for ONNX Runtime and TVM; 0: off).",
)
@click.option(
    "--ignore",
    "ignored",
    multiple=True,
    metavar="NAME",
    help="A layer (node, weight or module name, glob) keeping its output channels. Repeat.",
)
@click.option(
    "--layer-ratio",
    "layer_ratios",
    multiple=True,
    metavar="PATTERN=R",
    help="Own ratio for the groups made by matching layers, e.g. 'layer4.*=0.7'. Repeat.",
)
@click.option(
    "--reduction",
    type=click.Choice(REDUCTIONS),
    default="mean",
    show_default=True,
    help="How the scores of a group's layers combine per channel.",
)
@click.option(
    "--normalizer",
    type=click.Choice([n for n in NORMALIZERS if n] + ["none"]),
    default="mean",
    show_default=True,
    help="Per-group score normalization (matters with --global).",
)
@click.option(
    "--data",
    "data_path",
    type=click.Path(dir_okay=False),
    help="For taylor: an .npy of inputs, or an .npz with 'x' and (class) targets 'y'.",
)
@click.option(
    "--heads",
    is_flag=True,
    help="Prune attention by whole heads (head count rewritten), not by head dimension.",
)
@click.option(
    "--optimize",
    "optimize_first",
    is_flag=True,
    help="Run the optimize pipeline first (fold BatchNorm into convs, cleanups).",
)
@input_shape_option
@json_option
def command(
    model,
    output,
    ratio,
    criterion,
    global_pruning,
    round_to,
    ignored,
    layer_ratios,
    reduction,
    normalizer,
    data_path,
    heads,
    optimize_first,
    input_shapes,
    as_json,
):
    """Remove channels from MODEL and write OUTPUT (.onnx); print MACs/params before and after.

    \b
    Channels that must go together are found on the graph itself: residual
    adds, concat offsets, splits, depthwise/grouped convs, norms, flatten into
    a classifier, squeeze-and-excite, channel shuffle and attention heads. An op
    without a rule keeps its channels and is listed. Graph outputs (the
    classifier) keep their shapes. Per-group ratio, Torch-Pruning's convention:
    each group keeps int(C * (1 - ratio)) channels, rounded up to a multiple of
    --round-to (8 by default). The channel counts left are printed, with a
    warning when they are not multiples of this CPU's vector width.

    \b
    Examples:
      fuser prune zoo:resnet18 r18-half.onnx --ratio 0.5
      fuser prune model.onnx small.onnx --ratio 0.3 --criterion obs --round-to 16
      fuser prune det.onnx det-p.onnx --ratio 0.3 --input-shape x:1,3,640,640 --json
      fuser prune model.onnx p.onnx --ratio 0.5 --criterion taylor --data calib.npz
      fuser prune zoo:resnet50 p.onnx --ratio 0.5 --ignore 'layer4.*' --global
      fuser prune zoo:vit_tiny_patch16_224 v.onnx --ratio 0.3 --heads
    """
    from fuser import api
    from fuser.frontends.onnx import model_files
    from fuser.pruning import prune_graph
    from fuser.reports.pruning import prune_view
    from fuser.serde.files import check_output
    from fuser.serde.onnx import save_onnx

    inputs = [] if model.startswith("zoo:") else model_files(model)
    check_output(output, inputs)  # before the work: a refused output path fails fast
    if not 0 <= ratio < 1:
        raise FuserError(f"--ratio {ratio:g}: must be in [0, 1), the fraction of channels to remove")
    if round_to < 0:
        raise FuserError(f"--round-to {round_to}: give a channel multiple >= 1, or 0 for no rounding")
    if data_path and criterion != "taylor":
        raise FuserError(f"--data feeds --criterion taylor only; drop it, or use taylor (not {criterion})")
    data = _load_data(data_path)
    ratios = _layer_ratios(layer_ratios)
    graph = load_graph(model, input_shapes)
    if optimize_first:
        with status("optimizing"):
            graph = api.optimize(graph).graph
    with progress_bar(not as_json) as bar:
        task = bar.add_task("pruning", total=len(STEPS))

        def progress(step: str):
            bar.update(task, description=step, completed=STEPS.index(step))

        report = prune_graph(
            graph,
            ratio,
            criterion,
            data=data,
            global_pruning=global_pruning,
            group_reduction=reduction,
            normalizer=None if normalizer == "none" else normalizer,
            round_to=round_to or None,
            ignored=ignored,
            layer_ratios=ratios,
            heads=heads,
            progress=progress,
        )
        bar.update(task, description="writing", completed=len(STEPS))
        save_onnx(graph, output, protect=inputs)
    if as_json:
        emit_json({"input": model, "output": output, **report.to_dict()})
        return
    show(prune_view(report.to_dict(), model, output, round_to))
