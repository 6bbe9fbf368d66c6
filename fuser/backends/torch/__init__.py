"""The IR as a trainable torch ``nn.Module`` (weights are ``nn.Parameter``s)."""

from .core import FuserModule, run_torch, to_torch

__all__ = ["FuserModule", "run_torch", "to_torch"]
