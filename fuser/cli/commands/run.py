"""`fuser run`: run a TVM build written by `fuser compile` on .npy inputs."""

from __future__ import annotations

import io
from pathlib import Path

import click
from rich.table import Table

from fuser.cli.common import emit_json, json_option, safe, show, status
from fuser.ir import FuserError


def _split_input(spec: str) -> tuple[str | None, str]:
    """'x=in.npy' -> ('x', 'in.npy'); a bare 'in.npy' -> (None, 'in.npy')."""
    name, sep, path = spec.partition("=")
    return (name, path) if sep else (None, spec)


def _parse_inputs(specs: tuple[str, ...], names: list[str]) -> dict:
    """('x=in.npy',) -> {'x': array}; a bare 'in.npy' names the only input."""
    import numpy as np

    feeds = {}
    for spec in specs:
        name, path = _split_input(spec)
        if name is None:
            if len(names) != 1:
                raise FuserError(f"--input '{spec}': the build has inputs {names}; write NAME=file.npy")
            name, path = names[0], spec
        if not Path(path).is_file():
            raise FuserError(f"--input '{spec}': {path}: no such file")
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except Exception as e:
            raise FuserError(f"--input '{spec}': not a readable .npy file ({type(e).__name__})") from None
    return feeds


@click.command("run")
@click.argument("build_dir", type=click.Path(file_okay=False))
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="NAME=FILE.npy",
    help="An input array; repeat per input. FILE.npy alone names a single input.",
)
@click.option(
    "--output",
    "output",
    type=click.Path(dir_okay=False),
    help="Write the outputs to this .npz, keyed by output name.",
)
@json_option
def command(build_dir, inputs, output, as_json):
    """Run the TVM build in BUILD_DIR (from `fuser compile`) on numpy inputs.

    \b
    Example:
      python -c "import numpy as np; np.save('x.npy', np.random.rand(1,3,224,224).astype('float32'))"
      fuser run r18_tvm --input x=x.npy --output out.npz
    """
    import numpy as np

    from fuser.backends.tvm import artifact as tvm_artifact
    from fuser.serde.files import atomic_write, check_output

    # the .npz may replace none of what this command reads: its .npy inputs and the build
    reads = [_split_input(spec)[1] for spec in inputs]
    reads += [Path(build_dir) / tvm_artifact.LIBRARY, Path(build_dir) / tvm_artifact.METADATA]
    if output:
        check_output(output, protect=reads)  # refused before the build is loaded and run
    with status(f"loading {safe(build_dir)}"):
        model = tvm_artifact.load(build_dir)
    feeds = _parse_inputs(inputs, model.input_names)
    results = model(**feeds)
    named = {spec["name"]: r for spec, r in zip(model.outputs, results)}
    if output:
        buf = io.BytesIO()
        np.savez(buf, **named)
        atomic_write(output, buf.getvalue(), protect=reads)
    summary = [
        {
            "name": k,
            "shape": list(v.shape),
            "dtype": str(v.dtype),
            "min": float(v.min()),
            "max": float(v.max()),
            "mean": float(v.mean()),
        }
        for k, v in named.items()
    ]
    if as_json:
        emit_json({"build": build_dir, "output": output, "outputs": summary})
        return
    title = f"{safe(build_dir)} outputs" + (f" -> {safe(output)}" if output else "")
    t = Table(title=title, title_justify="left")
    for col in ("name", "shape", "dtype", "min", "max", "mean"):
        t.add_column(col, justify="right" if col in ("min", "max", "mean") else "left")
    for s in summary:
        t.add_row(
            safe(s["name"]),
            str(s["shape"]),
            s["dtype"],
            f"{s['min']:.4g}",
            f"{s['max']:.4g}",
            f"{s['mean']:.4g}",
        )
    show(t)
