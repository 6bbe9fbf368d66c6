"""Shared pieces of the CLI: options, consoles, model loading, JSON output.

Command modules in ``fuser/commands/`` import from here; each defines ``command``
(a click command) and is registered by ``fuser.cli`` automatically.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console

from fuser.ir import FuserError

err = Console(stderr=True)
out = Console()


def parse_input_shapes(specs: tuple[str, ...]):
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
        if not shape or any(d <= 0 for d in shape):
            raise FuserError(f"--input-shape '{spec}': dims must be positive integers")
        if name:
            named[name] = shape
        else:
            bare.append(shape)
    if bare and (named or len(bare) > 1):
        raise FuserError("--input-shape: name every input (NAME:dims) when giving more than one")
    return bare[0] if bare else named


def input_shape_option(f):
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
    from fuser.api import to_graph

    shapes = parse_input_shapes(input_shapes)
    if not model.startswith("zoo:") and not Path(model).exists():
        raise FuserError(f"{model}: no such file (MODEL is an .onnx path or zoo:NAME)")
    with status(f"importing {model}"):
        return to_graph(model, input_shapes=shapes)


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))
