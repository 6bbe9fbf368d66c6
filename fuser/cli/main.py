"""The `fuser` command line.

MODEL, everywhere, is a path to an .onnx file or `zoo:NAME` (see `fuser zoo list`).
Exit status: 0 success, 2 user error (one line on stderr, no traceback), 1 internal error.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import traceback

import click

from fuser.ir import FuserError
from fuser.passes import DEFAULT_PIPELINE

from .common import (
    MESSAGE_LIMIT,
    SEED,
    emit_json,
    err,
    input_shape_option,
    json_option,
    load_graph,
    parse_shape_options,
    prune_options,
    safe,
    show,
    status,
)


class FuserGroup(click.Group):
    """Turns FuserError into one line on stderr and exit 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FuserError as e:
            err.print(f"[bold red]error:[/] {safe(e, total=MESSAGE_LIMIT)}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except OSError as e:  # the file system refused something fuser did not check first
            where = f"{e.filename}: " if e.filename else ""
            err.print(
                f"[bold red]error:[/] {safe(f'{where}{e.strerror or e}', total=MESSAGE_LIMIT)}",
                highlight=False,
                soft_wrap=True,
            )
            sys.exit(2)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            err.print("interrupted")
            sys.exit(130)
        except Exception as e:  # a bug in fuser, not in the user's input
            if os.environ.get("FUSER_DEBUG"):
                traceback.print_exc()
            err.print(
                f"[bold red]internal error:[/] {type(e).__name__}: {safe(e, total=MESSAGE_LIMIT)} "
                "(set FUSER_DEBUG=1 for a traceback)",
                highlight=False,
                soft_wrap=True,
            )
            sys.exit(1)


@click.group(cls=FuserGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fuser")
def main():
    """fuser: a graph compiler and operator-fusion optimizer for CNNs.

    \b
    Typical session:
      fuser zoo list                              # models you can try
      fuser info zoo:resnet50                     # MACs, params, op counts
      fuser zoo export resnet18 r18.onnx          # a zoo model as ONNX (BN kept)
      fuser optimize r18.onnx r18.opt.onnx        # run the pass pipeline
      fuser info model.onnx --input-shape x:1,3,640,640 --json
    """


# ---- info ---------------------------------------------------------------------
@main.command()
@click.argument("model")
@input_shape_option
@json_option
@click.option("--nodes", "show_nodes", is_flag=True, help="Also list every node with its costs.")
def info(model, input_shapes, as_json, show_nodes):
    """MACs, parameters, bytes and op counts of MODEL.

    MACs count Conv/ConvTranspose/Gemm/MatMul multiply-accumulates; params count
    weights (BN running stats are buffers, reported apart). See fuser.analysis.

    \b
    Examples:
      fuser info zoo:resnet50 --json                   # params 25,557,032, MACs 4.09 G
      fuser info det.onnx --input-shape x:1,3,640,640  # fix dynamic dims
      fuser info m.onnx --input-value axes:2,3         # fix an input that shapes depend on
      fuser info r18.onnx --nodes                      # every node with its costs
    """
    from fuser.analysis import analyze
    from fuser.reports.tables import info_view

    graph = load_graph(model, input_shapes)
    report = analyze(graph)
    if as_json:
        if not show_nodes:
            report.pop("per_node")
        emit_json(report)
        return
    show(info_view(report, model, show_nodes))


# ---- optimize -----------------------------------------------------------------
@main.command()
@click.argument("model")
@click.argument("output")
@input_shape_option
@click.option(
    "--skip",
    multiple=True,
    metavar="PASS",
    help="Leave out a pass of the default pipeline: " + ", ".join(DEFAULT_PIPELINE) + ".",
)
@click.option("--passes", "pass_list", metavar="P1,P2", help="Run exactly these passes, in order.")
@prune_options
@json_option
def optimize(model, output, input_shapes, skip, pass_list, prune_ratio, criterion, round_to, as_json):
    """Run the optimize pipeline on MODEL and write OUTPUT (.onnx).

    \b
    The default pipeline: constant folding of shape subgraphs, identity
    removal and dead-node elimination, then the optimizing passes; --skip
    lists them. OUTPUT is written to a temporary file and renamed; it is
    never the input.

    \b
    Examples:
      fuser optimize det.onnx det.opt.onnx --input-shape 1,3,640,640
      fuser optimize r18.onnx out.onnx --skip fold_conv_bn --json
      fuser optimize r18.onnx out.onnx --prune 0.3     # pruning inside the pipeline
    """
    from fuser.analysis import analyze
    from fuser.api import optimize as run_optimize
    from fuser.frontends.onnx import model_files
    from fuser.reports.tables import optimize_view
    from fuser.serde.files import check_output
    from fuser.serde.onnx import save_onnx

    inputs = [] if model.startswith("zoo:") else model_files(model)
    check_output(output, inputs)  # before the work: a refused output path fails fast
    graph = load_graph(model, input_shapes)
    passes = [p.strip() for p in pass_list.split(",") if p.strip()] if pass_list is not None else None
    if passes == []:
        raise FuserError("--passes: name at least one pass (fuser optimize --help lists them)")
    before = analyze(graph)
    with status("optimizing"):
        result = run_optimize(
            graph, passes=passes, skip=skip, prune=prune_ratio, criterion=criterion, round_to=round_to or None
        )
    graph, report = result.graph, result.report
    after = analyze(graph)
    save_onnx(graph, output, protect=inputs)
    summary = {
        "input": model,
        "output": output,
        "import": graph.meta.get("import"),
        **report.to_dict(),
        "nodes_before": before["nodes"],
        "nodes_after": after["nodes"],
        "ops_before": before["ops"],
        "ops_after": after["ops"],
        "macs_before": before["macs"],
        "macs_after": after["macs"],
        "params_before": before["params"],
        "params_after": after["params"],
    }
    if as_json:
        emit_json(summary)
        return
    show(optimize_view(summary))


# ---- zoo ----------------------------------------------------------------------
@main.group()
def zoo():
    """The model zoo: plain-torch CNNs with torchvision/timm parameter counts."""


@zoo.command("list")
@json_option
def zoo_list(as_json):
    """List zoo models with their default input shape and parameter count.

    \b
    Examples:
      fuser zoo list
      fuser zoo list --json
    """
    from fuser import models
    from fuser.reports.tables import zoo_table

    rows = [{"name": n, "input_shape": list(models.input_shape(n)), **models.info(n)} for n in models.names()]
    if as_json:
        emit_json(rows)
        return
    show(zoo_table(rows))


@zoo.command("export")
@click.argument("name")
@click.argument("output")
@input_shape_option
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed for the random weights.")
def zoo_export(name, output, input_shapes, seed):
    """Export zoo model NAME to OUTPUT (.onnx), BatchNormalization nodes kept.

    \b
    Examples:
      fuser zoo export resnet18 r18.onnx
      fuser zoo export mobilenet_v2 m.onnx --input-shape 1,3,160,160 --seed 1
    """
    from fuser.api import from_zoo
    from fuser.reports.text import plain
    from fuser.serde.onnx import save_onnx

    with status(f"capturing zoo:{name} (torch.export, then ONNX)"):
        graph = from_zoo(name, parse_shape_options(input_shapes), seed=seed)
    save_onnx(graph, output)
    show(
        plain(
            f"wrote {output}: {len(graph.nodes)} nodes, inputs "
            + ", ".join(f"{v.name} {list(v.shape)}" for v in graph.inputs)
        )
    )


def _register_commands() -> None:
    """Each module in fuser/commands/ contributes its ``command``."""
    from fuser.cli import commands

    for info_ in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        main.add_command(importlib.import_module(f"fuser.cli.commands.{info_.name}").command)


_register_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
