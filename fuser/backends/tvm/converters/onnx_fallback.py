"""Relax converters borrowed from TVM's own ONNX frontend (``tvm.relax.frontend.onnx``), for
standard ops fuser does not lower itself.

``FALLBACK_OPS`` lists the ops whose TVM converter reproduces onnx's backend test cases
(``benchmarks/onnx_conformance.py --tvm --ops tvm-fallback``; BitShift, IsInf, Mod, Tile and
TopK are left out: their converters computed other values or did not build), with ``GUARDS``
refusing by name the cases that failed there; each is registered as the op's ``"relax"``
implementation here, and the converter is called as TVM's importer calls it (the op's
attributes parsed the importer's way, the graph's opset, constant inputs as Relax
constants). Every admitted op that neither fuser nor this list lowers is refused by name
(``converters/__init__.py``). Registration only adds ops that have no converter yet, so
fuser's own converters always win; TVM's frontend is imported at the first conversion.
"""

from __future__ import annotations

from fuser.ir.ops import OPS, implementation, register
from fuser.serde.onnx import attribute_proto

from ..common import relax, require_tvm
from .context import Lowering

# Verified against onnx's backend tests through fuser (import -> optimize -> TVM llvm build).
FALLBACK_OPS = (
    "Acos",
    "Acosh",
    "And",
    "ArgMax",
    "ArgMin",
    "Asin",
    "Asinh",
    "Atan",
    "Atanh",
    "BitwiseAnd",
    "BitwiseNot",
    "BitwiseOr",
    "BitwiseXor",
    "CastLike",
    "Cos",
    "Cosh",
    "CumSum",
    "DepthToSpace",
    "Einsum",
    "Elu",
    "EyeLike",
    "GatherElements",
    "GatherND",
    "GlobalLpPool",
    "GlobalMaxPool",
    "GreaterOrEqual",
    "GridSample",
    "GroupNormalization",
    "Hardmax",
    "InstanceNormalization",
    "IsNaN",
    "LRN",
    "LessOrEqual",
    "LogSoftmax",
    "LpPool",
    "MaxUnpool",
    "Mean",
    "MeanVarianceNormalization",
    "Mish",
    "Not",
    "OneHot",
    "Or",
    "PRelu",
    "RMSNormalization",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceProd",
    "ReduceSumSquare",
    "RoiAlign",
    "Round",
    "Scatter",
    "ScatterElements",
    "ScatterND",
    "Selu",
    "Shrink",
    "Sign",
    "Sin",
    "Sinh",
    "Softplus",
    "Softsign",
    "SpaceToDepth",
    "Sum",
    "Tan",
    "ThresholdedRelu",
    "Trilu",
    "Upsample",
    "Xor",
)


def _rms_axis(node) -> str | None:
    rank = len(node.inputs[0].shape)
    if node.attrs.get("axis", -1) % rank == 0:
        return "normalizing over every axis (axis 0) crashes TVM's converter"
    return None


def _space_to_depth(node) -> str | None:
    return "mode=CRD is ignored by TVM's converter" if node.attrs.get("mode", "DCR") != "DCR" else None


def _elu(node) -> str | None:
    return "TVM's converter handles float32 only" if node.inputs[0].dtype.name != "float32" else None


# Cases where TVM's converter for a listed op fails or computes something else: refused by name.
GUARDS = {
    "RMSNormalization": _rms_axis,
    "SpaceToDepth": _space_to_depth,
    "Elu": _elu,
}


def _frontend():
    require_tvm()
    from tvm.relax.frontend.onnx import onnx_frontend

    return onnx_frontend


def _attrs(frontend, c: Lowering) -> dict:
    """The node's attributes as TVM's importer hands them to a converter."""
    protos = [attribute_proto(k, v, c.node.op) for k, v in sorted(c.node.attrs.items())]
    attrs = frontend.ONNXGraphImporter({}, {})._parse_attr(protos)
    attrs["tvm_custom"] = {"name": c.node.name, "num_outputs": len(c.node.outputs)}
    return attrs


def convert(c: Lowering, *args):
    """Lower one node with TVM's ONNX converter for its op."""
    op = c.node.op
    guard = GUARDS.get(op)
    why = guard(c.node) if guard is not None else None
    if why:
        raise c.fail(f"op {op}: {why}")
    frontend = _frontend()
    opset = c.node.graph.opset if c.node.graph is not None else 17
    try:
        fn = frontend._get_convert_map()[op].get_converter(opset)
        out = fn(c.bb, frontend.onnx_input(args), _attrs(frontend, c), [{}, {}])
    except Exception as e:  # TVM's converters assert and raise on what they do not handle
        raise c.fail(f"TVM's ONNX converter for {op} fails ({type(e).__name__}: {str(e)[:160]})") from None
    if isinstance(out, relax.Tuple):
        return list(out.fields)
    out = c.bb.normalize(out)
    if isinstance(out.ty, relax.TupleType):
        return [relax.TupleGetItem(out, i) for i in range(len(out.ty.fields))]
    return out


for _op in FALLBACK_OPS:
    if _op in OPS and implementation("relax", _op) is None:
        register("relax", _op, convert)
