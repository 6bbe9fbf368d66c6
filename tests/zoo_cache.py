"""Zoo models captured once per test session (capture takes seconds per model)."""

from __future__ import annotations

import functools

import torch
from util import HEAVY

# CI's reduced form: CNNs at 64x64 (VGG keeps 224: its adaptive pool needs >= 7x7 maps
# to stay a plain pool; ViT needs 224). FUSER_HEAVY=1 runs every model at its real size.
REDUCED_SIZE = 64
FULL_SIZE_ONLY = {"vit_tiny_patch16_224", "vgg16"}


def test_shape(name: str) -> tuple[int, ...]:
    from fuser.models import input_shape

    shape = tuple(input_shape(name))
    if HEAVY or name in FULL_SIZE_ONLY:
        return shape
    return shape[:2] + (REDUCED_SIZE, REDUCED_SIZE)


@functools.cache
def zoo_case(name: str):
    """(module, example input, captured graph) for zoo model ``name``."""
    import fuser
    from fuser.models import create

    module = create(name, seed=0)
    x = torch.randn(test_shape(name), generator=torch.Generator().manual_seed(0))
    return module, x, fuser.from_torch(module, (x,))


@functools.cache
def zoo_eager(name: str):
    """The zoo module's eager output on the cached input, as numpy (computed once)."""
    module, x, _ = zoo_case(name)
    with torch.no_grad():
        return module(x).numpy()
