"""torch -> IR capture.

``from_torch`` captures a module with torch.export (falling back to
torch.fx.symbolic_trace, then torch.export of the traced module, non-strict) and
converts the ExportedProgram's ATen graph to the IR directly (``fuser.frontends.aten``:
parameters keep their fully-qualified names, nodes are named by module path and record
module and source line in ``Node.meta``). A model holding an op without a converter is
lowered instead with PyTorch's own ONNX exporter (``optimize=False`` so
BatchNormalization stays a node for fuser's passes to see) and imported from ONNX, with
one warning line naming the op (logger ``fuser.frontends.torch``); its nodes get the module
path the exporter recorded (``Node.meta``) and are named ``<module>/<op>``. The module is
captured in eval mode (inference semantics); its train/eval flags are restored
afterwards.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import re
import warnings
from collections.abc import Sequence
from typing import Any

from fuser.ir import FuserError, Graph, display_name

log = logging.getLogger(__name__)


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
    # a failed capture logs each failing op's whole traceback at ERROR (fake tensors); the
    # exception raised after says the same in one line, and fuser reports that
    silenced = [logging.getLogger(n) for n in ("torch._subclasses", "torch._subclasses.fake_tensor")]
    levels = [lg.level for lg in loggers + silenced]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    for lg in silenced:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        # a failed torch.export writes the traced graph to stderr itself (twice), not through
        # a logger: the one-line FuserError after it says what matters
        out, err = io.StringIO(), io.StringIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers + silenced, levels):
            lg.setLevel(lv)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(e: BaseException) -> str:
    text = _ANSI.sub("", str(e)).strip().splitlines()  # the ONNX exporter colours its text
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _root_cause(e: BaseException) -> BaseException:
    """The innermost exception ``e`` was raised from: the ONNX exporter's outer error is "Failed
    to convert ... Next steps:", its cause names the op ("No ONNX function found for ...")."""
    while e.__cause__ is not None:
        e = e.__cause__
    return e


# what torch says when an input is too small for a model's convolutions and pools: an output
# size with a zero or negative dim, or a kernel larger than its (padded) input
_TOO_SMALL = re.compile(
    r"output size:? \([^)]*(?<![\d.])(0|-\d+)\b[^)]*\)|output size is too small|"
    r"kernel size can't be greater than actual input size",
    re.IGNORECASE,
)


def _shapes(args: tuple) -> str:
    return ", ".join(f"{str(a.dtype).removeprefix('torch.')}{list(a.shape)}" for a in args)


def export_program(module, args: tuple):
    """torch.export, or torch.fx.symbolic_trace + non-strict torch.export when that fails."""
    import torch

    try:  # (callers hold _quiet(): a failed capture's fake-tensor tracebacks stay unprinted)
        return torch.export.export(module, args)
    except Exception as first:
        reason = _first_line(first)
        if _TOO_SMALL.search(reason):
            shape = "x".join(map(str, args[0].shape)) if args else "?"
            raise FuserError(
                f"{type(module).__name__}: input {shape} is too small for this model: {reason}"
            ) from None
        try:
            with torch.no_grad():
                module(*args)
        except Exception as eager:  # not a capture problem: forward() fails on these inputs
            raise FuserError(
                f"{type(module).__name__}: forward() fails on the example inputs "
                f"({_shapes(args)}): {_first_line(eager)}; pass inputs the model accepts"
            ) from None
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


def _args(module, example_inputs) -> tuple:
    import torch

    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if not all(isinstance(a, torch.Tensor) for a in args):
        raise FuserError(f"{type(module).__name__}: example_inputs must be tensors")
    return args


def program_to_onnx(module, program, args: tuple):
    """PyTorch's ONNX exporter on an ExportedProgram: an onnx.ModelProto (BatchNormalization kept)."""
    import torch

    n_out = len(program.graph_signature.user_outputs)
    names = _input_names(module, len(args))
    with _quiet():
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
            reason = _first_line(_root_cause(e))
            raise FuserError(f"{type(module).__name__}: the ONNX exporter failed: {reason}") from None
    return onnx_program.model_proto


def torch_to_onnx(module, example_inputs: Any | Sequence[Any]):
    """Capture ``module`` with PyTorch's ONNX exporter: an onnx.ModelProto (BatchNormalization kept)."""
    import torch

    args = _args(module, example_inputs)
    with _eval_mode(module), _quiet(), torch.no_grad():
        program = export_program(module, args)
        return program_to_onnx(module, program, args)


def _exporter_meta(model) -> dict[str, dict]:
    """Node name -> the module path, source line and ATen op the exporter recorded on it."""
    import ast

    from fuser.frontends.aten import source_of_trace

    meta = {}
    for n in model.graph.node:
        props = {p.key: p.value for p in n.metadata_props}
        try:
            scopes = ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))
        except (ValueError, SyntaxError):
            continue
        if len(scopes) < 2:
            continue
        meta[n.name] = {
            "module": scopes[-2],  # scopes: '', 'layer1', 'layer1.0', 'layer1.0.conv1', then the op
            "source": source_of_trace(props.get("pkg.torch.onnx.stack_trace", "")),
            "torch_op": props.get("namespace", "").rpartition(": ")[2],
        }
    return meta


def _from_exporter(module, program, args, fold: bool) -> Graph:
    from fuser.frontends.onnx import from_onnx
    from fuser.passes import drop_zero_bias

    model = program_to_onnx(module, program, args)
    graph = from_onnx(model, fold=fold)
    drop_zero_bias.run(graph)  # the exporter's zero bias for bias-free convs
    meta = _exporter_meta(model)
    taken: dict[str, int] = {}
    for node in graph.nodes:  # named as the direct path names ops inside a module: <module>/<op>
        node.meta.update(meta.get(node.name, {}))
        if "module" in node.meta:
            base = display_name(node) if node.meta["module"] else node.op.lower()
            k = taken[base] = taken.get(base, -1) + 1
            node.name = graph.unique_name(base if k == 0 else f"{base}@{k}")
    return graph


def from_torch(
    module, example_inputs, *, fold: bool = True, direct: bool = True, fallback: bool = True
) -> Graph:
    """Capture an nn.Module into a Graph with static shapes (those of ``example_inputs``).

    ``direct=False`` takes the ONNX exporter path even where every op has a converter;
    ``fallback=False`` raises FuserError, naming the op and module, where one has none."""
    import torch

    from fuser.analysis.shapes import infer_shapes
    from fuser.frontends.aten import UnsupportedOp, convert_program

    args = _args(module, example_inputs)
    name = type(module).__name__
    with _eval_mode(module), torch.no_grad():
        with _quiet():
            program = export_program(module, args)
        graph = None
        if direct:
            try:
                graph = convert_program(program, module, name)
            except UnsupportedOp as e:
                if not fallback:
                    raise FuserError(
                        f"{name}: no direct converter for {e}; this needs every op converted directly "
                        "(the ONNX exporter's graph cannot be traced back to the module's layers)"
                    ) from None
                log.warning(
                    "fuser: %s: no direct converter for %s; capturing through the ONNX exporter (slower)",
                    name,
                    e,
                )
        if graph is None:
            graph = _from_exporter(module, program, args, fold)
        elif any(v.shape is None or v.dtype is None for n in graph.nodes for v in n.outputs):
            infer_shapes(graph)
    graph.name = name
    graph.source = f"<{name}>"
    return graph
