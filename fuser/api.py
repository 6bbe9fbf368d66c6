"""The Python API: one entry point per user job."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from fuser.passes.pipeline import PassSpec, default_passes, run_passes

from .ir import FuserError, Graph

ZOO_PREFIX = "zoo:"


def to_graph(model: Any, example_inputs: Any = None, input_shapes: Any = None) -> Graph:
    """Any model fuser accepts -> a Graph with static shapes.

    ``model``: a Graph; an ONNX path or ModelProto (``input_shapes`` fixes
    dynamic dims); ``"zoo:NAME"`` (``input_shapes``: one shape, default the
    model's); or an ``nn.Module`` (``example_inputs`` required).
    """
    import onnx

    from fuser.frontends.torch import from_torch
    from fuser.serde.onnx import from_onnx

    if isinstance(model, Graph):
        return model
    if isinstance(model, str) and model.startswith(ZOO_PREFIX):
        return from_zoo(model[len(ZOO_PREFIX) :], input_shapes)
    if isinstance(model, (str, os.PathLike, onnx.ModelProto)):
        return from_onnx(model, input_shapes)
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
    from fuser.frontends.torch import from_torch

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
) -> Graph:
    """Import ``model`` and run the optimize pipeline (default passes, minus ``skip``;
    ``prune=R`` adds structured pruning of R of each channel group after them).

    Returns the optimized Graph; ``graph.report`` says what each pass changed.
    """
    graph = to_graph(model, example_inputs, input_shapes)
    passes = list(passes if passes is not None else default_passes(skip))
    if prune is not None:
        passes.append(("prune_channels", {"ratio": prune, "criterion": criterion}))
    graph, report = run_passes(graph, passes)
    graph.report = report
    return graph


def info(model: Any, example_inputs: Any = None, input_shapes: Any = None) -> dict:
    """MACs, params, bytes and op counts (see fuser.analysis for the conventions)."""
    from .analysis import analyze

    return analyze(to_graph(model, example_inputs, input_shapes))
