"""Timing the kernels the analytic model counts: each unfused layer as PyTorch runs it (cuDNN on
a GPU, fp16 channels_last; ATen on the CPU, fp32) and each fused block kernel (GPU only).

Every kernel runs on its own seeded random input (never zeros), after warm-up; the median of
``repeats`` runs is kept (CUDA events on a GPU, perf_counter on the CPU).
"""

from __future__ import annotations

import statistics
import time

from .model import BlockCost
from .spec import BlockSpec, ConvLayer

TORCH_ACTIVATIONS = {
    "none": lambda v: v,
    "relu": "relu",
    "relu6": "relu6",
    "silu": "silu",
    "hardswish": "hardswish",
}


def _act(name: str):
    import torch.nn.functional as F

    f = TORCH_ACTIVATIONS[name]
    return f if callable(f) else getattr(F, f)


def time_fn(fn, device: str, repeats: int = 20, warmup: int = 3) -> float:
    """Median seconds of ``fn()``."""
    import torch

    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        times = []
        if device == "cuda":
            torch.cuda.synchronize()
            for _ in range(repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
        else:
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _tensor(shape, device: str, dtype, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    return t.contiguous(memory_format=torch.channels_last) if device == "cuda" and t.dim() == 4 else t


def conv(layer: ConvLayer, x, w, b):
    """``layer``'s Conv + bias (no activation) on ``x``, with the bottom/right padding that gives
    the recorded output size (ONNX pads may be asymmetric; torch's are not)."""
    import torch.nn.functional as F

    pb = (layer.out_hw[0] - 1) * layer.stride + layer.kernel - layer.in_hw[0] - layer.pad_top
    pr = (layer.out_hw[1] - 1) * layer.stride + layer.kernel - layer.in_hw[1] - layer.pad_left
    if (pb, pr) == (layer.pad_top, layer.pad_left):
        return F.conv2d(x, w, b, layer.stride, (layer.pad_top, layer.pad_left), 1, layer.groups)
    x = F.pad(x, (layer.pad_left, max(pr, 0), layer.pad_top, max(pb, 0)))
    return F.conv2d(x, w, b, layer.stride, 0, 1, layer.groups)


def conv_fn(layer: ConvLayer, batch: int, device: str, dtype, seed: int = 0):
    """A closure running layer ``l`` (Conv + bias + activation) on a random input of its shape."""
    x = _tensor((batch, layer.c_in, *layer.in_hw), device, dtype, seed)
    w = _tensor(layer.weight.shape, device, dtype, seed + 1)
    b = _tensor(layer.bias.shape, device, dtype, seed + 2)
    act = _act(layer.activation)
    return lambda: act(conv(layer, x, w, b))


def block_forward(spec: BlockSpec, device: str, dtype):
    """The block as PyTorch runs it unfused, with its own (BN-folded) weights: each Conv of the
    main path with its activation, the residual (identity, or the projection's Conv), the final
    activation. A function of the block's input (N, C, H, W)."""
    import torch

    def params(layer: ConvLayer):
        return tuple(torch.from_numpy(a).to(device=device, dtype=dtype) for a in (layer.weight, layer.bias))

    main = [(layer, *params(layer)) for layer in spec.layers]
    short = (spec.shortcut, *params(spec.shortcut)) if spec.residual == "projection" else None
    final = _act(spec.final_activation)

    def forward(x):
        y = x
        for layer, w, b in main:
            y = _act(layer.activation)(conv(layer, y, w, b))
        if spec.residual == "identity":
            y = y + x
        elif short is not None:
            layer, w, b = short
            y = y + _act(layer.activation)(conv(layer, x, w, b))
        return final(y)

    return forward


def measure_block(cost: BlockCost, device: str, repeats: int = 20, fused_kernel=None) -> dict:
    """{'unfused': [seconds per unfused kernel, in cost.unfused order], 'fused': seconds or None}."""
    import torch

    spec = cost.spec
    dtype = torch.float16 if device == "cuda" else torch.float32
    fns = [conv_fn(layer, spec.batch, device, dtype, seed=3 * i) for i, layer in enumerate(spec.all_layers())]
    if spec.residual != "none":
        shape = spec.output_shape
        a, b = _tensor(shape, device, dtype, 100), _tensor(shape, device, dtype, 101)
        act = _act(spec.final_activation)
        fns.append(lambda: act(a + b))
    unfused = [time_fn(f, device, repeats) for f in fns]
    fused = None
    if fused_kernel is not None:
        x = _tensor(spec.input_shape, device, torch.float16, 7)
        fused = time_fn(lambda: fused_kernel(x), device, repeats)
    return {"unfused": unfused, "fused": fused}


def measure_blocks(costs: list[BlockCost], device: str, repeats: int = 20) -> list[dict]:
    """measure_block for each cost; on a GPU the fused kernels are built once, together."""
    kernels = [None] * len(costs)
    if device == "cuda":
        from .loader import load_blocks

        kernels = load_blocks([c.schedule for c in costs])
    return [measure_block(c, device, repeats, k) for c, k in zip(costs, kernels)]
