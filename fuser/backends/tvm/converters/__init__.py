"""Relax converters, one module per op family; importing this package registers each
converter into the op registry (``fuser.ir.ops``) as the op's ``"relax"`` implementation,
and names the admitted ops that have none."""

from fuser.ir.ops import refuse

from . import elementwise, nn, shape  # noqa: F401  (registration)
from .context import Lowering, relax_const

refuse(
    "relax",
    ["Constant", "ConstantOfShape", "Range", "Shape", "Size"],
    "computes shapes; fuser folds it to a constant once input shapes are fixed",
)
refuse(
    "relax",
    [
        "And",
        "ArgMax",
        "CastLike",
        "Cos",
        "DepthToSpace",
        "Elu",
        "GlobalMaxPool",
        "GroupNormalization",
        "InstanceNormalization",
        "LogSoftmax",
        "Mean",
        "Mish",
        "Mod",
        "Not",
        "Or",
        "ReduceL2",
        "ReduceMin",
        "ReduceProd",
        "Sin",
        "Softplus",
        "SpaceToDepth",
        "Tile",
        "Upsample",
    ],
    "has no Relax converter in fuser; run the model with the torch or ONNX Runtime backend",
)

__all__ = ["Lowering", "relax_const"]
