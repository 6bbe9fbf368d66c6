"""Relax converters, one module per op family; importing this package registers each
converter into the op registry (``fuser.ir.ops``) as the op's ``"relax"`` implementation:
fuser's own first, then TVM's own ONNX converters for the standard ops fuser does not lower
(``onnx_fallback``); every other admitted op is refused by name."""

from fuser.ir.ops import IMPORT_ONLY_OPS, OPS, implementation, refuse

from . import elementwise, nn, shape  # noqa: F401  (registration)
from .context import Lowering, relax_const

SHAPE_OPS = ["Constant", "ConstantOfShape", "Range", "Shape", "Size"]
refuse("relax", SHAPE_OPS, "computes shapes; fuser folds it to a constant once input shapes are fixed")

from . import onnx_fallback  # noqa: E402, F401  (after fuser's own: registers only what they leave)

refuse(
    "relax",
    sorted(
        n
        for n in OPS
        if implementation("relax", n) is None and n not in SHAPE_OPS and n not in IMPORT_ONLY_OPS
    ),
    "has no Relax converter in fuser or a verified one in TVM's ONNX frontend; "
    "run the model with the torch or ONNX Runtime backend",
)

__all__ = ["Lowering", "relax_const"]
