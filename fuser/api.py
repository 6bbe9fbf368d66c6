"""The Python API: one entry point per user job. This facade is the only place that turns
models, paths and zoo names into Graphs; every feature below it takes a Graph."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from fuser.analysis import analyze
from fuser.frontends.onnx import from_onnx
from fuser.frontends.torch import from_torch
from fuser.ir import FuserError, Graph
from fuser.passes.pipeline import PassSpec, PipelineReport, default_passes, run_passes
from fuser.serde import onnx as serde_onnx

ZOO_PREFIX = "zoo:"


@dataclass
class Result:
    """A graph and the report of what made it (the optimize pipeline, or pruning).

    Every facade function takes a Result where it takes a model; ``to_onnx()``,
    ``to_torch()`` and ``print(result)`` are shorthands."""

    graph: Graph
    report: Any

    def to_onnx(self, **kw):
        return serde_onnx.to_onnx(self.graph, **kw)

    def to_torch(self):
        return to_torch(self.graph)

    def __str__(self) -> str:
        return f"{self.graph.summary()}\n{self.report}"


def to_graph(
    model: Any, example_inputs: Any = None, input_shapes: Any = None, input_values: Any = None
) -> Graph:
    """Any model fuser accepts -> a Graph with static shapes.

    ``model``: a Graph or Result; an ONNX path or ModelProto (``input_shapes`` fixes
    dynamic dims, ``input_values`` the values of inputs that shapes depend on); ``"zoo:NAME"``
    (``input_shapes``: one shape, default the model's); or an ``nn.Module``
    (``example_inputs`` required).
    """
    import onnx

    if isinstance(model, Result):
        return model.graph
    if isinstance(model, Graph):
        return model
    if isinstance(model, str) and model.startswith(ZOO_PREFIX):
        return from_zoo(model[len(ZOO_PREFIX) :], input_shapes)
    if isinstance(model, (str, os.PathLike, onnx.ModelProto)):
        return from_onnx(model, input_shapes, input_values=input_values)
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None
    if torch is not None and isinstance(model, torch.nn.Module):
        if example_inputs is None:
            raise FuserError(
                f"{type(model).__name__}: an nn.Module needs example_inputs "
                "(e.g. torch.randn(1, 3, 224, 224))"
            )
        return from_torch(model, example_inputs)
    raise FuserError(
        f"cannot make a graph from {type(model).__name__}: pass an ONNX path, "
        "a ModelProto, 'zoo:NAME', an nn.Module or a Graph"
    )


def zoo_input_shape(name: str, input_shapes: Any = None) -> tuple[int, ...]:
    from fuser import models

    if input_shapes is None:
        return tuple(models.input_shape(name))
    if isinstance(input_shapes, dict):
        if len(input_shapes) != 1:
            raise FuserError(f"zoo:{name} has one input; give one --input-shape")
        input_shapes = next(iter(input_shapes.values()))
    return tuple(int(d) for d in input_shapes)


def from_zoo(name: str, input_shapes: Any = None, seed: int = 0) -> Graph:
    """Capture zoo model ``name`` at its default (or the given) input shape."""
    import torch

    from fuser import models

    if name not in models.names():
        raise FuserError(f"zoo:{name}: no such model; `fuser zoo list` shows {len(models.names())}")
    shape = zoo_input_shape(name, input_shapes)
    module = models.create(name, seed=seed)
    graph = from_torch(module, (torch.zeros(shape),))
    graph.name = name
    graph.source = f"zoo:{name}"
    return graph


def optimize(
    model: Any,
    example_inputs: Any = None,
    input_shapes: Any = None,
    *,
    passes: Sequence[PassSpec] | None = None,
    skip: Sequence[str] = (),
    prune: float | None = None,
    criterion: str = "l2",
    round_to: int | None = None,
) -> Result:
    """Import ``model`` and run the optimize pipeline (default passes, minus ``skip``;
    ``prune=R`` adds structured pruning of R of each channel group after them, channel counts
    kept multiples of ``round_to`` when given).

    Returns a Result: ``.graph`` (a new Graph; the input is not modified) and ``.report``
    (a PipelineReport: what each pass changed).
    """
    graph = to_graph(model, example_inputs, input_shapes)
    passes = list(passes if passes is not None else default_passes(skip))
    if prune is not None:
        passes.append(("prune_channels", {"ratio": prune, "criterion": criterion, "round_to": round_to}))
    graph, report = run_passes(graph, passes)
    return Result(graph, report)


_optimize = optimize  # partition's `optimize` flag shadows the function


def info(model: Any, example_inputs: Any = None, input_shapes: Any = None) -> dict:
    """MACs, params, bytes and op counts (see fuser.analysis for the conventions)."""
    return analyze(to_graph(model, example_inputs, input_shapes))


def to_onnx(model: Any, **kw):
    """The model (a Graph, a Result, ...) as an onnx.ModelProto that ONNX Runtime runs."""
    return serde_onnx.to_onnx(to_graph(model), **kw)


def save_onnx(model: Any, path: str | os.PathLike, *, protect: Sequence[str | os.PathLike] = ()) -> None:
    """Save a Graph, Result or ModelProto as an ONNX file (written atomically)."""
    import onnx

    serde_onnx.save_onnx(
        model if isinstance(model, onnx.ModelProto) else to_graph(model), path, protect=protect
    )


def to_torch(model: Any):
    """A trainable nn.Module computing the model (its weights are nn.Parameters)."""
    from fuser.backends.torch import to_torch as build

    return build(to_graph(model))


def partition(
    model: Any,
    buffer: int | str = "256KB",
    style: str = "lbdf",
    search: str = "local",
    split: str = "explain",
    budget: int = 1000,
    seed: int = 0,
    *,
    input_shapes: Any = None,
    optimize: bool = True,
    **options,
):
    """Fusion groups of a model under an on-chip buffer (``fuser.fusion.partition``); the model
    is optimized first (BN folded) unless ``optimize=False``.

        >>> plan = fuser.partition("zoo:resnet18", buffer="128KB", search="local", budget=500)
        >>> plan.dram_bytes / plan.no_fusion_dram_bytes
    """
    from fuser.fusion import partition as plan_graph

    graph = (
        _optimize(model, input_shapes=input_shapes).graph
        if optimize
        else to_graph(model, input_shapes=input_shapes)
    )
    return plan_graph(graph, buffer, style, search, split, budget, seed, **options)


def prune(
    model: Any,
    ratio: float = 0.5,
    criterion: str = "l2",
    *,
    example_inputs: Any = None,
    input_shapes: Any = None,
    data: Any = None,
    loss: Callable | None = None,
    global_pruning: bool = False,
    group_reduction: str = "mean",
    normalizer: str | None = "mean",
    round_to: int | None = None,
    ignored: Sequence[str] = (),
    layer_ratios: dict[str, float] | None = None,
    heads: bool = False,
    progress: Callable[[str], None] | None = None,
    in_place: bool = False,
) -> Result:
    """Remove ``ratio`` of the channels of every prunable group of ``model``.

    ``model``: anything ``fuser.to_graph`` accepts (ONNX path or ModelProto, ``"zoo:NAME"``,
    a Graph -- never modified -- or an ``nn.Module`` with ``example_inputs``); the raw IR
    (BatchNormalization prunes with its conv) and the optimized one (BN folded) both work.
    ``criterion``: ``l1``, ``l2`` (magnitude), ``taylor`` (needs ``data``: inputs, or an
    (inputs, targets) pair, or an iterable of batches; ``loss(output, targets)`` optional)
    or ``obs`` (data-free, with weight compensation). ``global_pruning`` ranks all groups
    together instead of applying ``ratio`` per group; ``layer_ratios`` maps node/module name
    patterns to their own ratio; ``round_to`` keeps channel counts multiples of it;
    ``ignored`` names layers whose output channels stay (graph outputs -- the classifier --
    always keep theirs); ``heads`` prunes attention by whole heads (head count rewritten)
    rather than by head dimension (the default: the same dims go from every head).

    Returns a Result: ``.graph`` (pruned; ``fuser.to_torch(result)`` gives a trainable
    nn.Module of it) and ``.report``, a PruneReport (per-group channels, MACs and params
    before/after, and the ops that blocked pruning). With ``in_place=True`` (an ``nn.Module``
    with ``example_inputs``): ``fuser.prune_module``, which returns the module itself.
    """
    from fuser.pruning import prune_graph

    options = dict(
        data=data,
        loss=loss,
        global_pruning=global_pruning,
        group_reduction=group_reduction,
        normalizer=normalizer,
        round_to=round_to,
        ignored=ignored,
        layer_ratios=layer_ratios,
        heads=heads,
        progress=progress,
    )
    if in_place:
        return prune_module(model, example_inputs, ratio, criterion, **options)
    graph = to_graph(model, example_inputs, input_shapes).copy()
    report = prune_graph(graph, ratio, criterion, **options)
    return Result(graph, report)


def prune_module(model, example_inputs, ratio: float = 0.5, criterion: str = "l2", **options):
    """``fuser.prune`` into the user's own ``nn.Module``: returns the same object (same class,
    attribute names and forward) with its layers shrunk in place and its ``state_dict`` keys
    unchanged; create the optimizer afterwards. ``module.fuser_prune_report`` says what changed.
    Options are ``fuser.prune``'s. A layer whose forward() holds a fixed channel count, or a
    custom op, is refused by name (FuserError) and the module is left as it was; see
    ``fuser.torchtools.prune_module`` for the rules.
    """
    import torch

    from fuser.pruning import prune_graph
    from fuser.torchtools.prune_module import shrink

    if not isinstance(model, torch.nn.Module) or example_inputs is None:
        raise FuserError(
            "prune in place needs an nn.Module and its example_inputs, e.g. "
            "fuser.prune_module(model, torch.randn(1, 3, 224, 224), ratio=0.5)"
        )
    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    graph = from_torch(model, inputs, fallback=False)
    pruned = graph.copy()
    report = prune_graph(pruned, ratio, criterion, **options)
    model.fuser_prune_report = shrink(
        model, inputs, graph, pruned, report, lambda: from_torch(model, inputs, fallback=False)
    )
    return model


def find_blocks(model: Any, device: str | None = "h100", input_shapes: Any = None):
    """Block-fusion groups of a model (``fuser.blockfusion.find_blocks``) and the groups not fused."""
    from fuser.blockfusion import find_blocks as match

    return match(to_graph(model, input_shapes=input_shapes), device)


def report(
    model: Any,
    example_inputs: Any = None,
    input_shapes: Any = None,
    *,
    html: str | os.PathLike | None = None,
    trace: str | os.PathLike | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    **options,
) -> dict:
    """What ``fuser report`` shows, as data (its ``--json``), and the page and trace it writes.

    ``model``: anything ``fuser.to_graph`` accepts, as given (the report optimizes it, and with
    ``prune=R`` prunes it, and compares). ``options``: ``buffer`` ("256KB"), ``sweep`` (sizes),
    ``style``, ``search``, ``split``, ``budget``, ``seed``, ``element_bytes``, ``prune``,
    ``criterion``, ``round_to``, ``measure`` (time ONNX Runtime and torch, profile every op),
    ``compile`` (TVM, one kernel per group), ``threads``, ``repeat``, ``device`` (see
    ``fuser.reports.model_report.ReportOptions``). ``html``: write the page there; ``trace``:
    the Chrome trace of measured times (needs ``measure=True``).

        >>> data = fuser.report("zoo:resnet18", html="r18.html", buffer="128KB")
        >>> data["summary"]["fused_dram_bytes"], len(data["groups"])
    """
    from fuser.reports.model_report import ReportOptions, build_report

    known = {f.name for f in fields(ReportOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(
            f"fuser.report() got an unknown option {unknown[0]!r}; options: {', '.join(sorted(known))}"
        )
    opts = ReportOptions(**options)
    if trace is not None and not (opts.measure or opts.compile):
        raise FuserError("a trace holds measured times: pass measure=True (or compile=True)")
    graph = to_graph(model, example_inputs, input_shapes)
    source = str(model) if isinstance(model, (str, os.PathLike)) else graph.source
    data = build_report(graph, opts, source=source, progress=progress)
    if html is not None:
        from fuser.reports.html import save_html

        save_html(data, html)
    if trace is not None:
        from fuser.reports.trace import save_trace

        save_trace(data, trace)
    return data


__all__ = [
    "PipelineReport",
    "Result",
    "find_blocks",
    "from_zoo",
    "info",
    "optimize",
    "partition",
    "prune",
    "report",
    "prune_module",
    "save_onnx",
    "to_graph",
    "to_onnx",
    "to_torch",
]
