"""The IR as a trainable torch ``nn.Module`` (weights are ``nn.Parameter``s).

Modules: ``context`` (what an op implementation sees of its node), one module per op
family (``nn``, ``elementwise``, ``reduce``, ``shape``, ``resize``, ``source``; each
registers its implementations into ``fuser.ir.ops`` as ``"torch"``, and its build-time
checks as ``"torch.check"``), ``module`` (FuserModule: the interpreter over the graph).
"""

from .context import ONNX_TO_TORCH_DTYPE
from .module import FuserModule, run_torch, sanitize_name, to_torch

__all__ = ["ONNX_TO_TORCH_DTYPE", "FuserModule", "run_torch", "sanitize_name", "to_torch"]
