"""`fuser report`: one page a person reads (HTML), the same numbers as JSON, and measured
kernel times as a Chrome trace."""

from __future__ import annotations

import shlex

import click

from fuser.blockfusion.devices import DEVICE_NAMES
from fuser.cli.common import (
    emit_json,
    fusion_options,
    input_shape_option,
    json_option,
    load_graph,
    prune_options,
    show,
    steps_progress,
    timing_options,
)
from fuser.ir import FuserError
from fuser.units import parse_size


def reproducing_command(ctx: click.Context) -> str:
    """``fuser report ...`` with the arguments and the options that differ from their defaults."""
    words = ["fuser", ctx.info_name or "report"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(param, click.Argument):
            words.append(str(value))
            continue
        if value is None or value == param.default or (param.multiple and not value):
            continue
        flag = param.opts[0]
        if param.is_flag:
            words.append(flag)
        else:
            for v in value if param.multiple else (value,):
                words += [flag, str(v)]
    return shlex.join(words)


def _sizes(text: str, option: str) -> list[int]:
    if text.strip().lower() in ("", "none", "0"):
        return []
    sizes = [parse_size(s) for s in text.split(",") if s.strip()]
    if not sizes:
        raise FuserError(f"{option}: give sizes such as 64KB,256KB,1MB (or 'none')")
    return sizes


@click.command("report")
@click.argument("model")
@click.option(
    "-o", "--output", "html_path", type=click.Path(dir_okay=False), help="Write the report page here (.html)."
)
@click.option(
    "--trace",
    "trace_path",
    type=click.Path(dir_okay=False),
    help="Write measured kernel times as a Chrome trace (.json; needs --measure or --compile).",
)
@input_shape_option
@click.option(
    "--buffer",
    default="256KB",
    show_default=True,
    metavar="SIZE",
    help="On-chip buffer of the fusion plan (KB = 1024 B).",
)
@click.option(
    "--sweep",
    default="64KB,128KB,256KB,512KB,1MB",
    show_default=True,
    metavar="SIZES",
    help="Buffer sizes of the DRAM-against-buffer plot ('none': no sweep).",
)
@fusion_options
@prune_options
@click.option(
    "--measure",
    is_flag=True,
    help="Time ONNX Runtime (every stage, interleaved) and torch, and profile every op.",
)
@click.option(
    "--compile",
    "compile_tvm",
    is_flag=True,
    help="Also build with TVM, one kernel per fusion group, and time it (slow: minutes).",
)
@timing_options
@click.option(
    "--device",
    type=click.Choice(DEVICE_NAMES),
    help="Block-fusion model: h100/h200 (NVIDIA's peaks) or cpu (measured here); "
    "default cpu with --measure, else h100.",
)
@click.option("--no-graph", is_flag=True, help="Leave the graph picture out (no Graphviz needed).")
@json_option
@click.pass_context
def command(
    ctx,
    model,
    html_path,
    trace_path,
    input_shapes,
    buffer,
    sweep,
    style,
    search,
    split,
    budget,
    seed,
    element_bytes,
    layers,
    prune_ratio,
    criterion,
    round_to,
    measure,
    compile_tvm,
    threads,
    repeat,
    device,
    no_graph,
    as_json,
):
    """Report MODEL in one page: what fuser buys, the graph coloured by fusion group, every
    group and split explained, the buffer sweep, block fusion, pruning and latency.

    \b
    The page (-o) is one self-contained HTML file: no network at view time, static
    SVG and tables that read with JavaScript off (the script only highlights). The
    graph is drawn with Graphviz (`dot`). --json prints the same numbers; --trace
    writes measured op and kernel times for chrome://tracing or ui.perfetto.dev.

    \b
    Examples:
      fuser report zoo:mobilenet_v2 -o report.html
      fuser report det.onnx --input-shape x:1,3,640,640 -o det.html --buffer 128KB
      fuser report r18.onnx -o r18.html --prune 0.3 --measure --trace r18.trace.json
      fuser report zoo:resnet18 -o r18.html --compile --measure     # TVM, one kernel per group
      fuser report zoo:squeezenet1_1 --json > report.json
    """
    from fuser.blockfusion.report import measurement_device
    from fuser.reports.model_report import ReportOptions, build_report
    from fuser.reports.text import plain

    if not (html_path or trace_path or as_json):
        raise FuserError("say where the report goes: -o report.html, --trace trace.json and/or --json")
    if trace_path and not (measure or compile_tvm):
        raise FuserError("--trace writes measured times: add --measure (or --compile)")
    from fuser.frontends.onnx import model_files
    from fuser.serde.files import check_outputs

    inputs = [] if model.startswith("zoo:") else model_files(model)
    # every output checked before any work: none an input, no two the same file
    check_outputs([p for p in (html_path, trace_path) if p], protect=inputs)
    options = ReportOptions(
        buffer=parse_size(buffer),
        style=style,
        search=search,
        split=split,
        budget=budget,
        seed=seed,
        element_bytes=element_bytes,
        layers=layers,
        sweep=_sizes(sweep, "--sweep"),
        prune=prune_ratio,
        criterion=criterion,
        round_to=round_to or None,
        measure=measure,
        compile=compile_tvm,
        threads=threads,
        repeat=repeat,
        device=device,
    )
    if measure and options.blocks_device != "cpu":
        measurement_device(options.blocks_device)  # a GPU model on a machine without one
    if compile_tvm:
        from fuser.backends import tvm as tb

        tb.require_tvm()
    if not no_graph and html_path:
        from fuser.reports.dag import require_dot

        require_dot()
    graph = load_graph(model, input_shapes)
    with steps_progress(enabled=not as_json) as step:
        data = build_report(graph, options, source=model, command=reproducing_command(ctx), progress=step)
        notes = []
        if html_path:
            from fuser.reports.html import save_html

            step("drawing the graph and the plots", len(options.steps()), len(options.steps()))
            size = save_html(data, html_path, graph=not no_graph, protect=inputs)
            notes.append(f"wrote {html_path} ({size / 1024:.0f} KB): open it in a browser")
        if trace_path:
            from fuser.reports.trace import save_trace

            save_trace(data, trace_path, protect=inputs)
            notes.append(f"wrote {trace_path}: open it in ui.perfetto.dev or chrome://tracing")
    if as_json:
        emit_json(data)
        return
    from fuser.reports.fusion import groups_table
    from fuser.reports.summary import before_after_line, before_after_table

    names = {op: label for g in data["groups"] for op, label in zip(g["ops"], g["labels"])}
    parts = [
        before_after_table(data),
        groups_table({**data["plan"], "groups": data["groups"], "splits": data["splits"]}, names, top=5),
    ]
    if data["pruning"]:
        from fuser.reports.pruning import alignment_warning

        warning = alignment_warning(data["pruning"], data["pruning"]["round_to"])
        parts += [warning] if warning is not None else []
    show(*parts, plain(before_after_line(data)), *(plain(n) for n in notes))
