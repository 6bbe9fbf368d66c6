"""The op registry: every ONNX op fuser admits, and what each stage needs to know of it.

One ``OpDef`` per op (ONNX name, default domain):
  - ``category``: the kind of computation (conv, matmul, norm, pool, elementwise,
    reduction, injective data movement, source, sequence); fusion, folding and block
    matching read it instead of keeping their own op lists;
  - ``inputs``: the role of each input slot (data, weight, bias, statistic, config,
    index); inputs past the tuple take its last role (variadic ops). Analysis counts
    parameters from it and the torch backend decides parameter / buffer / Python value;
  - ``macs``: the name of its multiply-accumulate rule (``fuser.analysis`` implements
    the rules; ``"none"``: 0 by the counting convention);
  - ``impls``: what each consumer registered for it: ``"torch"`` and ``"relax"`` (the
    backends, with the ``implements`` decorator), ``"prune"`` (the channel rule of
    ``fuser.pruning.deps``); ``refusals``: a named reason where one deliberately has none.

The table below holds the ops fuser reasons about. Every other default-domain op that onnx
defines (up to ``MAX_OPSET``, the newest opset onnx's shape inference knows) is admitted too,
as ``Category.OPAQUE``: an ``OpDef`` generated from its ONNX schema, input roles inferred
conservatively (an input that only takes integers is configuration, or an index when its name
says so; everything else is data). Passes treat an opaque op as a barrier: fusion runs it
alone, pruning stops at it and says so, constant folding evaluates it with onnx's reference
implementation; backends implement it or refuse it by name. Refused at import, each with its
own reason: control flow (``CONTROL_FLOW_OPS``), tensor sequences and optionals
(``SEQUENCE_REFUSED``), and any op of another domain. This module imports nothing else of
fuser.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import onnx.defs


class Category(str, Enum):
    CONV = "conv"  # Conv, ConvTranspose: windowed, with a weight
    MATMUL = "matmul"  # Gemm, MatMul
    NORM = "norm"  # per-channel or per-row normalisation with scale/bias
    POOL = "pool"  # windowed reductions
    ELEMENTWISE = "elementwise"  # one output element per (broadcast) input element
    REDUCTION = "reduction"  # reduce or normalise along axes (Reduce*, global pools, Softmax)
    INJECTIVE = "injective"  # move or reinterpret data without arithmetic
    SOURCE = "source"  # make (small) tensors from shapes; folded once shapes are static
    SEQUENCE = "sequence"  # tensor sequences: lowered to Split at import
    OPAQUE = "opaque"  # a standard op known by its ONNX schema only: a barrier to every pass


class Role(str, Enum):
    DATA = "data"  # an activation (a constant here is a weight when it is float and not a scalar)
    WEIGHT = "weight"  # trainable weight
    BIAS = "bias"  # trainable bias
    STAT = "stat"  # running statistic (a buffer, not trained)
    CONFIG = "config"  # shape, axes, pads, bounds: read as plain values
    INDEX = "index"  # integer positions that select data (Gather indices)


D, W, B, S, C, IDX = Role.DATA, Role.WEIGHT, Role.BIAS, Role.STAT, Role.CONFIG, Role.INDEX


@dataclass
class OpDef:
    name: str
    category: Category
    inputs: tuple[Role, ...] = (D,)
    macs: str = "none"
    impls: dict[str, Callable] = field(default_factory=dict)
    refusals: dict[str, str] = field(default_factory=dict)

    def role(self, index: int) -> Role:
        return self.inputs[min(index, len(self.inputs) - 1)]

    def slots(self, role: Role) -> set[int]:
        return {i for i, r in enumerate(self.inputs) if r is role}

    @property
    def windowed(self) -> bool:
        return self.category in (Category.CONV, Category.POOL)


OPS: dict[str, OpDef] = {}


def _define(category: Category, names: Iterable[str], inputs: tuple[Role, ...] = (D,), macs: str = "none"):
    for name in names:
        OPS[name] = OpDef(name, category, inputs, macs)


_define(Category.CONV, ["Conv"], (D, W, B), macs="conv")
_define(Category.CONV, ["ConvTranspose"], (D, W, B), macs="conv_transpose")
_define(Category.MATMUL, ["Gemm"], (D, W, B), macs="gemm")
_define(Category.MATMUL, ["MatMul"], (D, D), macs="matmul")
_define(Category.NORM, ["BatchNormalization"], (D, W, B, S, S))
_define(Category.NORM, ["LayerNormalization", "InstanceNormalization", "GroupNormalization"], (D, W, B))
_define(Category.NORM, ["LRN"])
_define(Category.POOL, ["MaxPool", "AveragePool"])
_define(Category.REDUCTION, ["GlobalAveragePool", "GlobalMaxPool", "Softmax", "LogSoftmax", "ArgMax"])
_define(
    Category.REDUCTION,
    ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2"],
    (D, C),
)
_define(
    Category.ELEMENTWISE,
    [
        "Relu",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Tanh",
        "Erf",
        "Exp",
        "Log",
        "Neg",
        "Abs",
        "Sqrt",
        "Reciprocal",
        "Gelu",
        "LeakyRelu",
        "Elu",
        "Softplus",
        "Mish",
        "Identity",
        "Cast",
        "Floor",
        "Ceil",
        "Not",
        "Sin",
        "Cos",
        "Tan",
        "Asin",
        "Acos",
        "Atan",
        "Sinh",
        "Cosh",
        "Asinh",
        "Acosh",
        "Atanh",
        "Sign",
        "Round",
        "IsNaN",
        "IsInf",
        "Selu",
        "Celu",
        "Softsign",
        "ThresholdedRelu",
        "Shrink",
        "Swish",
        "BitwiseNot",
    ],
)
_define(Category.ELEMENTWISE, ["Clip"], (D, C, C))
_define(Category.ELEMENTWISE, ["Dropout"], (D, C, C))
_define(Category.ELEMENTWISE, ["CastLike"], (D, C))
_define(Category.ELEMENTWISE, ["PRelu"], (D, W))
_define(
    Category.ELEMENTWISE,
    [
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Pow",
        "Max",
        "Min",
        "Sum",
        "Mean",
        "Equal",
        "Less",
        "Greater",
        "LessOrEqual",
        "GreaterOrEqual",
        "Where",
        "And",
        "Or",
        "Xor",
        "Mod",
        "BitShift",
        "BitwiseAnd",
        "BitwiseOr",
        "BitwiseXor",
    ],
    (D, D),
)
_define(Category.INJECTIVE, ["Flatten", "Transpose", "Concat", "DepthToSpace", "SpaceToDepth"])
_define(
    Category.INJECTIVE, ["Reshape", "Squeeze", "Unsqueeze", "Split", "Expand", "Tile", "Upsample"], (D, C)
)
_define(Category.INJECTIVE, ["Slice"], (D, C, C, C, C))
_define(Category.INJECTIVE, ["Pad", "Resize"], (D, C, C, C))
_define(Category.INJECTIVE, ["Gather"], (D, IDX))
_define(Category.SOURCE, ["Constant", "Shape", "Size"])
_define(Category.SOURCE, ["ConstantOfShape", "Range"], (C,))
_define(Category.SEQUENCE, ["SplitToSequence"], (D, C))
_define(Category.SEQUENCE, ["SequenceAt"], (D, C))

# Refused at import with their own message (no OpDef): fuser handles static graphs only.
CONTROL_FLOW_OPS = {"If", "Loop", "Scan", "SequenceMap"}

# The newest default-domain opset onnx (and so its shape inference) knows; a model importing
# a newer one is refused at import.
MAX_OPSET = onnx.defs.onnx_opset_version()


def _latest_schemas() -> dict[str, onnx.defs.OpSchema]:
    latest: dict[str, onnx.defs.OpSchema] = {}
    for s in onnx.defs.get_all_schemas_with_history():
        newer = s.name not in latest or s.since_version > latest[s.name].since_version
        if s.domain in ("", "ai.onnx") and s.since_version <= MAX_OPSET and newer:
            latest[s.name] = s
    return latest


SCHEMAS = _latest_schemas()
# Tensor sequences and optionals, beyond the split-and-index pattern lowered at import.
SEQUENCE_REFUSED = frozenset(
    n
    for n in SCHEMAS
    if n.startswith(("Sequence", "Optional")) or n in ("ConcatFromSequence",)
    if n not in OPS and n not in CONTROL_FLOW_OPS
)
_SHAPE_INTEGERS = {"tensor(int32)", "tensor(int64)"}
_INDEX_NAMES = ("indices", "index", "position", "target", "labels", "ids")


def _schema_roles(schema: onnx.defs.OpSchema) -> tuple[Role, ...]:
    """Input roles from a schema: an input that takes only int32/int64 (when others take more)
    is configuration, or an index when its name says so; every other input is data."""
    constraints = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    allowed = [constraints.get(f.type_str, {f.type_str}) for f in schema.inputs]
    integer = [bool(a) and a <= _SHAPE_INTEGERS for a in allowed]
    if not schema.inputs or all(integer):
        return (D,)
    return tuple(
        (IDX if any(k in f.name.lower() for k in _INDEX_NAMES) else C) if is_int else D
        for f, is_int in zip(schema.inputs, integer)
    )


# Where a schema's types do not tell configuration from data.
_ROLE_OVERRIDES = {
    "HannWindow": (C,),
    "HammingWindow": (C,),
    "BlackmanWindow": (C,),
    "MelWeightMatrix": (C,),
    "OneHot": (IDX, C, D),
}
for _name, _schema in sorted(SCHEMAS.items()):
    if _name not in OPS and _name not in CONTROL_FLOW_OPS and _name not in SEQUENCE_REFUSED:
        OPS[_name] = OpDef(_name, Category.OPAQUE, _ROLE_OVERRIDES.get(_name) or _schema_roles(_schema))


def is_opaque(name: str) -> bool:
    """A standard op fuser knows by its schema only (see the module docstring)."""
    d = OPS.get(name)
    return d is not None and d.category is Category.OPAQUE


def op_def(name: str) -> OpDef | None:
    return OPS.get(name)


def category(name: str) -> Category | None:
    d = OPS.get(name)
    return d.category if d is not None else None


def ops_in(*categories: Category) -> frozenset[str]:
    return frozenset(n for n, d in OPS.items() if d.category in categories)


def reduction_axes(node, rank: int) -> list[int] | None:
    """The axes a Reduce* node reduces, in 0..rank-1: its ``axes`` attribute, or (opset 18)
    its constant second input; None when it names none (every axis) or they are computed."""
    axes = node.attr("axes")
    axes_input = node.inputs[1] if len(node.inputs) > 1 else None
    if axes is None and node.op.startswith("Reduce") and axes_input is not None and axes_input.is_const:
        axes = axes_input.const.reshape(-1).tolist()
    if axes is None:
        return None
    return [int(a) % rank for a in np.atleast_1d(axes)]


def implements(kind: str, *names: str) -> Callable[[Callable], Callable]:
    """Register the decorated function as ``kind``'s implementation of ops ``names``."""

    def register(fn: Callable) -> Callable:
        for name in names:
            OPS[name].impls[kind] = fn
        return fn

    return register


def register(kind: str, name: str, fn: Callable) -> None:
    OPS[name].impls[kind] = fn


def refuse(kind: str, names: Iterable[str], reason: str) -> None:
    """Record that ``kind`` deliberately has no implementation of ``names``, and why."""
    for name in names:
        OPS[name].refusals[kind] = reason


def implementation(kind: str, name: str) -> Callable | None:
    d = OPS.get(name)
    return d.impls.get(kind) if d is not None else None


def refusal(kind: str, name: str) -> str | None:
    """Why ``kind`` has no implementation of ``name``, when it says so."""
    d = OPS.get(name)
    return d.refusals.get(kind) if d is not None else None


def implemented(kind: str) -> frozenset[str]:
    return frozenset(n for n, d in OPS.items() if kind in d.impls)


# Views for readers that want sets of names.
SEQUENCE_OPS = ops_in(Category.SEQUENCE)
# Read by the importer but never left in a Graph: Constant nodes become constant Values and
# sequences are lowered to Split.
IMPORT_ONLY_OPS = SEQUENCE_OPS | {"Constant"}
SUPPORTED_OPS = frozenset(OPS) - SEQUENCE_OPS  # what the importer admits as graph nodes
CONV_OPS = ops_in(Category.CONV)
MATMUL_OPS = ops_in(Category.MATMUL)
ELEMENTWISE_OPS = ops_in(Category.ELEMENTWISE)
BINARY_OPS = frozenset(n for n in ELEMENTWISE_OPS if OPS[n].inputs == (D, D))
