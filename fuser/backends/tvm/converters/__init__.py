"""Relax converters, one module per op family; importing this package registers each
converter into the op registry (``fuser.ir.ops``) as the op's ``"relax"`` implementation."""

from . import elementwise, nn, shape  # noqa: F401  (registration)
from .context import Lowering, relax_const

__all__ = ["Lowering", "relax_const"]
