"""Shared pieces of the CLI: options, consoles, model loading, JSON output.

Command modules in ``fuser/commands/`` import from here; each defines ``command``
(a click command) and is registered by ``fuser.cli`` automatically.
"""

from __future__ import annotations

import json
import math
import re
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console

from fuser.ir import FuserError

err = Console(stderr=True)
out = Console()

NAME_LIMIT = 200  # characters of one name or path shown; the rest is counted, not printed
MESSAGE_LIMIT = 2000  # characters of one error line
MAX_DIM = 2**31 - 1
# what fuser.reports.text.visible leaves as it is but one line must not hold: line breaks, tabs,
# zero-width and bidirectional-override characters
_INVISIBLE = re.compile("[\t\n\r\u200b-\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]")


def safe(text, limit: int = NAME_LIMIT, total: int | None = None) -> str:
    """Text from a model or a path for one line of rich markup: ``markup_safe`` (markup and
    control characters escaped), line breaks and invisible characters shown escaped too, runs
    of more than ``limit`` non-blank characters cut (the rest counted), at most ``total``
    characters in all."""
    from fuser.reports.text import markup_safe

    s = _INVISIBLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))
    s = re.sub(
        rf"\S{{{limit + 1},}}", lambda m: f"{m.group()[:limit]}...(+{len(m.group()) - limit} chars)", s
    )
    if total is not None and len(s) > total:
        s = f"{s[:total]}...(+{len(s) - total} chars)"
    return markup_safe(s)


def parse_shape_options(specs: tuple[str, ...]):
    """('x:1,3,224,224',) -> {'x': (1,3,224,224)}; ('1,3,224,224',) -> (1,3,224,224)."""
    if not specs:
        return None
    named, bare = {}, []
    for spec in specs:
        name, _, dims = spec.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
        except ValueError:
            raise FuserError(f"--input-shape '{spec}': dims must be integers, e.g. x:1,3,224,224") from None
        if not shape or any(d <= 0 or d > MAX_DIM for d in shape):
            raise FuserError(f"--input-shape '{spec}': dims must be integers from 1 to {MAX_DIM}")
        if name in named:
            raise FuserError(f"--input-shape: '{name}' is given twice; give each input once")
        if name:
            named[name] = shape
        else:
            bare.append(shape)
    if bare and (named or len(bare) > 1):
        raise FuserError("--input-shape: name every input (NAME:dims) when giving more than one")
    return bare[0] if bare else named


def parse_input_values(specs: tuple[str, ...]) -> dict[str, list]:
    """('axes:1,2', 'scales:1,1,2,2') -> {'axes': [1, 2], 'scales': [1.0, 1.0, 2.0, 2.0]}."""
    values = {}
    for spec in specs:
        name, sep, text = spec.rpartition(":")
        if not sep or not name:
            raise FuserError(f"--input-value '{spec}': write NAME:V,V,.. (e.g. axes:1,2)")
        try:
            items = [
                float(v) if any(c in v for c in ".eEn") else int(v) for v in text.split(",") if v.strip()
            ]
        except ValueError:
            raise FuserError(f"--input-value '{spec}': values must be numbers, e.g. axes:1,2") from None
        values[name] = items
    return values


def _remember_input_values(ctx: click.Context, param, specs):
    ctx.meta["fuser.input_values"] = parse_input_values(specs) if specs else None


def input_shape_option(f):
    """--input-shape, and --input-value (read by load_graph, not passed to the command)."""
    f = click.option(
        "--input-value",
        "input_values",
        multiple=True,
        metavar="NAME:V,V,..",
        expose_value=False,
        callback=_remember_input_values,
        help="Fix the values of an input that shapes depend on (a Reshape's target, reduction axes), "
        "e.g. axes:1,2. Repeat per input.",
    )(f)
    return click.option(
        "--input-shape",
        "input_shapes",
        multiple=True,
        metavar="[NAME:]D,D,..",
        help="Fix dynamic input dims, e.g. x:1,3,640,640. Repeat per input.",
    )(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(f)


@contextmanager
def status(message: str):
    """A spinner on stderr for steps that can take seconds (silent when not a terminal)."""
    with err.status(message, spinner="dots"):
        yield


def load_graph(model: str, input_shapes: tuple[str, ...]):
    """MODEL (a path or zoo:NAME) as a Graph; the file and its external data become inputs that
    no output of this command may overwrite."""
    from fuser.api import to_graph
    from fuser.frontends.onnx import model_files
    from fuser.serde.files import protect_inputs

    shapes = parse_shape_options(input_shapes)
    ctx = click.get_current_context(silent=True)
    values = ctx.meta.get("fuser.input_values") if ctx is not None else None
    zoo = model.startswith("zoo:")
    if not zoo:
        if not Path(model).exists():
            raise FuserError(f"{model}: no such file (MODEL is an .onnx path or zoo:NAME)")
        protect_inputs(model_files(model))
    with status(f"capturing {safe(model)} (torch.export, then ONNX)" if zoo else f"importing {safe(model)}"):
        return to_graph(model, input_shapes=shapes, input_values=values)


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


# ---- output that reads the same in a terminal and in a pipe ---------------------------------
# (fuser.reports builds the tables; commands print them with ``show``)
PIPE_WIDTH = 100_000  # "as wide as it needs": tables take only their content's width


def show(*renderables) -> None:
    """Print tables and lines on stdout. In a terminal rich fits them to its width; anywhere
    else (a pipe, a file, CI logs, ``| less``) they come out at the width they need, with no
    name cut short and no line wrapped."""
    console = out if out.is_terminal else Console(file=out.file, width=PIPE_WIDTH, soft_wrap=True)
    for renderable in renderables:
        console.print(renderable, highlight=False)


def progress_bar(enabled: bool = True):
    """A rich progress bar on stderr (what, bar, k/n, time), gone when done; silent when
    stderr is not a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not (enabled and err.is_terminal),
    )


@contextmanager
def steps_progress(enabled: bool = True):
    """A progress bar for a command's steps; yields ``step(what, done, total)`` (what it is
    doing now, steps done of total)."""
    from fuser.reports.text import markup_safe

    with progress_bar(enabled) as progress:
        task = progress.add_task("starting", total=None)

        def step(what: str, done: int = 0, total: int | None = None) -> None:
            progress.update(task, description=markup_safe(what), completed=done, total=total)

        yield step


# ---- options that several commands share ----------------------------------------------------
SEED = click.IntRange(0, 2**63 - 1)  # the seeds numpy's, Python's and torch's generators all take


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses nan and inf: nan passes every range comparison,
    and inf makes a time limit or a ratio meaningless."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


MAX_THREADS = 256  # torch.set_num_threads(100000) died with "double free or corruption"


def timing_options(f):
    """--threads and --repeat of the commands that time backends (bench, report)."""
    f = click.option(
        "--repeat", type=click.IntRange(min=1), default=20, show_default=True, help="Timed calls per backend."
    )(f)
    return click.option(
        "--threads",
        type=click.IntRange(min=1, max=MAX_THREADS),
        default=2,
        show_default=True,
        help="Threads for every timed backend (intra-op).",
    )(f)


def fusion_options(f):
    """The fusion planner's --style, --search, --split, --budget, --seed, --element-bytes and
    --layers."""
    from fuser.fusion.cost import STYLES
    from fuser.fusion.search import SEARCHES
    from fuser.fusion.split import SPLITS

    options = [
        click.option(
            "--style",
            type=click.Choice(STYLES),
            default="lbdf",
            show_default=True,
            help="lbdf: weights stay on chip, line-buffered features; brr: weights streamed per row tile.",
        ),
        click.option(
            "--search",
            type=click.Choice(SEARCHES),
            default="local",
            show_default=True,
            help="greedy (one plan), random, local (top-K mutations) or nsga2 (DRAM vs peak buffer).",
        ),
        click.option(
            "--split",
            type=click.Choice(SPLITS),
            default="explain",
            show_default=True,
            help="How groups over the buffer are split: explain (cost-aware, explained) or random.",
        ),
        click.option(
            "--budget",
            type=click.IntRange(min=1),
            default=1000,
            show_default=True,
            help="Plans to evaluate (per buffer size).",
        ),
        click.option("--seed", type=SEED, default=0, show_default=True, help="Same seed, same plan."),
        click.option(
            "--element-bytes",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Bytes per tensor element (1: int8, 2: fp16, 4: fp32).",
        ),
        click.option(
            "--layers",
            is_flag=True,
            help="Plan over layers: each op with the elementwise ops that only extend it (conv + "
            "bias + activation, a residual Add) is one unit, as TVM and ONNX Runtime fuse them "
            "whatever the buffer, so the plan never moves more than that layer fusion. Without it "
            "ops are planned one by one (the paper's model), and an activation after a conv too "
            "big for the buffer runs as a group of its own.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def prune_options(f):
    """--prune R with its --criterion (data-free ones) and --round-to, for commands that prune
    inside a pipeline (optimize, report)."""
    options = [
        click.option(
            "--prune",
            "prune_ratio",
            type=FiniteFloatRange(0, 1, max_open=True),
            metavar="R",
            help="Also prune R of every channel group's channels (structured pruning, after BN folding).",
        ),
        click.option(
            "--criterion",
            default="l2",
            show_default=True,
            type=click.Choice(["l1", "l2", "obs"]),
            help="Channel importance for --prune.",
        ),
        click.option(
            "--round-to",
            type=click.IntRange(min=0),
            default=8,
            show_default=True,
            help="Channel counts --prune keeps are multiples of this (vector-friendly; 0: off).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f
