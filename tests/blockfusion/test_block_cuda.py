"""Block-fusion kernels as CUDA: every emitted kernel compiles with ``nvcc -arch=sm_90`` (skipped
without nvcc), and on a GPU (skipped without one) each matches PyTorch within fp16 tolerance and
the CPU tile-schedule reference in its fp16 numerics.

Compiles are cached by source hash (fuser.blockfusion.cuda.compile_nvcc), so a second run is fast;
identical kernels are compiled once.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from test_block_fusion import SYNTHETIC, ZOO_BLOCKS, folded_zoo, single_block
from util import HEAVY, random_input, rel_err

import fuser
from fuser.blockfusion import (
    choose_schedule,
    compile_nvcc,
    emit_kernel,
    find_nvcc,
    fixed_schedule,
    run_schedule,
)
from fuser.blockfusion.report import find_and_cost

needs_nvcc = pytest.mark.skipif(
    find_nvcc() is None,
    reason="nvcc not found: install the CUDA toolkit (or set CUDA_HOME) to compile the generated kernels",
)
needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA GPU here (torch.cuda.is_available() is False): run on a GPU machine",
)
FP16_VS_TORCH = 1e-2  # fp16 storage of input, weights and intermediates vs PyTorch fp32
FP16_VS_REFERENCE = 2e-3  # same rounding points as the CPU reference, other summation order


def compile_distinct(schedules) -> dict:
    """Compile each distinct kernel once (two nvcc processes at a time); {name: CompileResult}."""
    kernels = {}
    for s in schedules:
        k = emit_kernel(s)
        kernels.setdefault(k.name, k)
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        results = dict(zip(kernels, pool.map(lambda k: compile_nvcc(k.source, "sm_90"), kernels.values())))
    return results


def assert_compiled(results: dict) -> None:
    failed = {name: r.log[-2000:] for name, r in results.items() if not r.ok}
    assert not failed, failed
    spilled = {name: r.spill_bytes for name, r in results.items() if r.spill_bytes}
    assert not spilled, f"register spills: {spilled}"


# ---- nvcc ---------------------------------------------------------------------------------------------


@needs_nvcc
@pytest.mark.parametrize("model", sorted(ZOO_BLOCKS))
def test_every_zoo_kernel_compiles_for_sm90(model, record_property):
    _, _, costs, _ = find_and_cost(folded_zoo(model))
    t0 = time.perf_counter()
    results = compile_distinct([c.schedule for c in costs])
    record_property("nvcc_seconds", round(time.perf_counter() - t0, 1))
    record_property("kernels", len(results))
    assert_compiled(results)
    assert all(r.registers and r.registers <= 255 for r in results.values())


# Code paths the zoo kernels do not take: convfirst's grouped conv on FMAs (group width 4), k = 7,
# HardSwish and SiLU in an mbconv, a 7×7 resnet block with a projection.
BEYOND_ZOO = [
    "convfirst_group_width4",
    "convfirst_k7_relu",
    "mbconv_k7_hardswish",
    "mbconv_k3_s2_silu_b2",
    "resnet_k7_s2_projection",
]


@needs_nvcc
def test_synthetic_kernels_compile_for_sm90():
    """The synthetic blocks beyond the zoo's code paths, chosen tiles (FUSER_HEAVY=1: every synthetic
    block, with its chosen and its 3×5 tiles, as the GPU tests run them)."""
    schedules = []
    for name in sorted(SYNTHETIC) if HEAVY else BEYOND_ZOO:
        _, spec = single_block(name)
        schedules += [choose_schedule(spec)] + ([fixed_schedule(spec, 3, 5)] if HEAVY else [])
    assert_compiled(compile_distinct(schedules))


@needs_nvcc
@pytest.mark.heavy
@pytest.mark.skipif(not HEAVY, reason="FUSER_HEAVY=1: the zoo at full resolution")
@pytest.mark.parametrize("model", sorted(ZOO_BLOCKS))
def test_full_resolution_zoo_kernels_compile(model):
    from zoo_cache import zoo_case

    import fuser

    graph = fuser.optimize(zoo_case(model)[2]).graph
    _, _, costs, _ = find_and_cost(graph)
    assert_compiled(compile_distinct([c.schedule for c in costs]))


@needs_nvcc
def test_compile_failure_is_reported():
    r = compile_nvcc('extern "C" __global__ void broken() { undefined_symbol(); }')
    assert not r.ok and "undefined_symbol" in r.log


# ---- on a GPU -------------------------------------------------------------------------------------------


def _run_fused(fused, x: np.ndarray) -> np.ndarray:
    shape = fused.schedule.spec.output_shape
    # leave NaNs where the output will be allocated: an element the kernel does not write stays NaN
    poison = torch.full(shape, float("nan"), device="cuda", dtype=torch.float16)
    del poison
    y = fused(torch.from_numpy(x).cuda())
    torch.cuda.synchronize()
    assert y.is_contiguous(memory_format=torch.channels_last)
    return y.float().cpu().numpy()


def _torch_output(graph, spec, x: np.ndarray) -> np.ndarray:
    """The unfused block run by PyTorch on the GPU (fuser's torch backend), fp32."""
    sub = graph.extract([graph.node_by_name(n) for n in spec.nodes])
    module = fuser.to_torch(sub).cuda().eval()
    with torch.inference_mode():
        out = module(torch.from_numpy(x).cuda())
    return (out[0] if isinstance(out, (tuple, list)) else out).float().cpu().numpy()


@pytest.fixture(scope="module")
def synthetic_kernels():
    """Every synthetic block with its chosen and its 3×5 schedule, built in one extension."""
    from fuser.blockfusion import load_blocks

    cases = []
    for name in sorted(SYNTHETIC):
        graph, spec = single_block(name)
        cases += [(name, graph, spec, choose_schedule(spec)), (name, graph, spec, fixed_schedule(spec, 3, 5))]
    fused = load_blocks([c[3] for c in cases])
    return [(*c, f) for c, f in zip(cases, fused)]


@needs_gpu
def test_kernels_match_pytorch_on_gpu(synthetic_kernels):
    """Shapes no tile divides, k ∈ {3, 5, 7}, with and without residual, strides 1 and 2."""
    for i, (name, graph, spec, schedule, fused) in enumerate(synthetic_kernels):
        x = random_input(spec.input_shape, seed=100 + i)
        got = _run_fused(fused, x)
        assert np.isfinite(got).all(), (name, schedule.summary())
        assert rel_err(got, _torch_output(graph, spec, x)) <= FP16_VS_TORCH, (name, schedule.summary())
        assert rel_err(got, run_schedule(schedule, x, "fp16")) <= FP16_VS_REFERENCE, (
            name,
            schedule.summary(),
        )


@needs_gpu
@pytest.mark.parametrize("model", sorted(ZOO_BLOCKS))
def test_zoo_blocks_match_pytorch_on_gpu(model):
    from fuser.blockfusion import load_blocks

    graph = folded_zoo(model)
    _, _, costs, _ = find_and_cost(graph)
    for i, (c, fused) in enumerate(zip(costs, load_blocks([c.schedule for c in costs]))):
        x = random_input(c.spec.input_shape, seed=i)
        got = _run_fused(fused, x)
        assert rel_err(got, _torch_output(graph, c.spec, x)) <= FP16_VS_TORCH, c.spec.name
        assert rel_err(got, run_schedule(c.schedule, x, "fp16")) <= FP16_VS_REFERENCE, c.spec.name
