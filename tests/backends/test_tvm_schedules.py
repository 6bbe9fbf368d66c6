"""fuser's default CPU schedules: every kernel of every zoo model gets a rule (none left
naive), the whole zoo and both PaddleOCR models match ONNX Runtime with them, the blocked
layout's weights are transformed at build time, each rule's tile comes from the target's
vector width, and the rules' tunable space replays to the default schedule."""

from __future__ import annotations

import collections

import native
import numpy as np
import pytest
from util import HEAVY, ort_run_graph, rel_err
from zoo_cache import zoo_case

import fuser

tvm = pytest.importorskip("tvm", reason="Apache TVM is not installed (pip install fuser[tvm])")

from fuser.backends import tvm as tb  # noqa: E402
from fuser.backends.tvm import layout, schedules  # noqa: E402
from fuser.models import names as zoo_names  # noqa: E402

TOL = 1e-4
ZOO = sorted(zoo_names())


def _zoo_fused(name: str):
    _, x, graph = zoo_case(name)
    graph = fuser.optimize(graph).graph
    target = tb.make_target("llvm")
    return graph, x, target, tb.schedule(tb.fuse(tb.to_relax(graph), target), target)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_default_schedules_match_ort(name):
    """64x64 by default (VGG and ViT at 224), every model at its real size with FUSER_HEAVY=1;
    no kernel is left naive."""
    graph, x, target, fused = _zoo_fused(name)
    sources = tb.schedule_sources(fused)
    assert schedules.NAIVE not in sources.values(), {k: v for k, v in sources.items() if v == "naive"}
    feeds = {graph.inputs[0].name: x.numpy()}
    got = native.run_executable(tb.build_fused(fused, target), graph, target, feeds)
    want = ort_run_graph(graph, feeds)
    assert all(rel_err(g, w) <= TOL for g, w in zip(got, want))
