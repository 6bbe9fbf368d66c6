"""torch -> IR capture.

``from_torch`` captures a module with torch.export (falling back to
torch.fx.symbolic_trace, then torch.export of the traced module, non-strict),
lowers the ExportedProgram to ONNX with PyTorch's own exporter (``optimize=False``
so BatchNormalization stays a node for fuser's passes to see) and imports that.
The module is captured in eval mode (inference semantics); its train/eval flags
are restored afterwards.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from collections.abc import Sequence
from typing import Any

from fuser.ir import FuserError, Graph


@contextlib.contextmanager
def _eval_mode(module):
    flags = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, t in flags.items():
            m.training = t


@contextlib.contextmanager
def _quiet():
    """The exporter logs and warns a lot (e.g. about torchvision ops); keep the CLI readable."""
    loggers = [
        logging.getLogger(n)
        for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "torch.fx")
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def export_program(module, args: tuple):
    """torch.export, or torch.fx.symbolic_trace + non-strict torch.export when that fails."""
    import torch

    try:
        return torch.export.export(module, args)
    except Exception as first:
        try:
            traced = torch.fx.symbolic_trace(module)
            return torch.export.export(traced, args, strict=False)
        except Exception as second:
            raise FuserError(
                f"{type(module).__name__}: cannot capture the module: torch.export said "
                f"'{_first_line(first)}'; torch.fx said '{_first_line(second)}'. Remove "
                "data-dependent control flow from forward() or export it to ONNX yourself"
            ) from None


def _input_names(module, count: int) -> list[str]:
    try:
        params = [
            p.name
            for p in inspect.signature(module.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    return params[:count] if len(params) >= count else [f"input{i}" for i in range(count)]


def torch_to_onnx(module, example_inputs: Any | Sequence[Any]):
    """Capture ``module`` and return an onnx.ModelProto (BatchNormalization kept)."""
    import torch

    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if not all(isinstance(a, torch.Tensor) for a in args):
        raise FuserError(f"{type(module).__name__}: example_inputs must be tensors")
    with _eval_mode(module), _quiet(), torch.no_grad():
        program = export_program(module, args)
        n_out = len(program.graph_signature.user_outputs)
        names = _input_names(module, len(args))
        try:
            onnx_program = torch.onnx.export(
                program,
                args,
                dynamo=True,
                optimize=False,
                verify=False,
                verbose=False,
                input_names=names,
                output_names=["output"] if n_out == 1 else [f"output{i}" for i in range(n_out)],
            )
        except Exception as e:
            raise FuserError(f"{type(module).__name__}: the ONNX exporter failed: {_first_line(e)}") from None
    return onnx_program.model_proto


def from_torch(module, example_inputs, *, fold: bool = True) -> Graph:
    """Capture an nn.Module into a Graph with static shapes (those of ``example_inputs``)."""
    from fuser.frontends.onnx import from_onnx
    from fuser.passes import drop_zero_bias

    graph = from_onnx(torch_to_onnx(module, example_inputs), fold=fold)
    drop_zero_bias.run(graph)  # the exporter's zero bias for bias-free convs
    graph.name = type(module).__name__
    graph.source = f"<{type(module).__name__}>"
    return graph
