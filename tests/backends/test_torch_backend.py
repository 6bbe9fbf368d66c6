"""The torch backend against ONNX Runtime: real models (original and randomised
weights) and one tiny ONNX model per op semantic that is easy to get wrong."""

from __future__ import annotations

import functools
import glob
import os

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from util import export_weights_as_inputs, ocr_like_input, ort_session, paddle_model, randomized_weights

from fuser.backends.torch import run_torch, to_torch
from fuser.frontends.onnx import from_onnx
from fuser.frontends.torch import from_torch
from fuser.ir import FuserError, Graph
from fuser.ir.ops import SUPPORTED_OPS, Category, implemented, op_def, refusal

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
LIGHT_MODELS = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(LIGHT, "*.onnx")))
PPOCR = {
    "ch_PP-OCRv4_det_infer": (1, 3, 320, 320),  # declared 640x640; smaller is faster
    "ch_ppocr_mobile_v2.0_cls_infer": (1, 3, 48, 192),
}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """On a small shared machine, torch's OpenMP threads thrash when another process holds a
    core (10x slower); one thread is fast and predictable. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _relerr(ref: np.ndarray, out: np.ndarray) -> float:
    assert ref.shape == out.shape, (ref.shape, out.shape)
    if ref.size == 0:
        return 0.0
    ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
    return float(np.abs(ref64 - out64).max() / max(np.abs(ref64).max(), 1e-30))


def _assert_close(refs, outs, tol=1e-4, what=""):
    assert len(refs) == len(outs)
    for i, (r, o) in enumerate(zip(refs, outs)):
        assert r.dtype == o.dtype, f"{what} output {i}: dtype {o.dtype}, ORT {r.dtype}"
        if r.dtype.kind in "biu":
            np.testing.assert_array_equal(o, r, err_msg=f"{what} output {i}")
        else:
            err = _relerr(r, o)
            assert err <= tol, f"{what} output {i}: max rel error {err:.3g} > {tol}"


# ---- real models ------------------------------------------------------------------------
@functools.cache
def _graph(path: str, shape: tuple) -> Graph:
    return from_onnx(path, shape)


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_original(name):
    path = os.path.join(LIGHT, name + ".onnx")
    g = _graph(path, (1, 3, 224, 224))
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    ref = ort_session(path).run(None, {g.inputs[0].name: x})
    _assert_close(ref, run_torch(g, {g.inputs[0].name: x}), what=name)


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_random_weights(name):
    g = randomized_weights(_graph(os.path.join(LIGHT, name + ".onnx"), (1, 3, 224, 224)))
    # Also compare the logits: a saturated softmax would hide errors.
    g.outputs = g.outputs + [n.inputs[0] for n in g.nodes if n.op == "Softmax"]
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    model, feeds = export_weights_as_inputs(g)
    ref = ort_session(model).run(None, {g.inputs[0].name: x, **feeds})
    _assert_close(ref, run_torch(g, {g.inputs[0].name: x}), what=name)


@pytest.mark.parametrize("name", sorted(PPOCR))
def test_ppocr_model(name):
    path = str(paddle_model(name + ".onnx"))
    shape = PPOCR[name]
    g = _graph(path, shape)
    x = ocr_like_input(shape)
    ref = ort_session(path).run(None, {g.inputs[0].name: x})
    _assert_close(ref, run_torch(g, {g.inputs[0].name: x}), what=name)


# ---- tiny single-op models ------------------------------------------------------------------
_ONNX_TYPE = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.int64): TensorProto.INT64,
    np.dtype(np.int32): TensorProto.INT32,
    np.dtype(np.bool_): TensorProto.BOOL,
    np.dtype(np.float64): TensorProto.DOUBLE,
}


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def check(nodes, inputs, inits=None, outputs=("y",), opset=17, out_types=None, tol=1e-5, fold=True):
    """Build a model from ``nodes``; compare run_torch with ORT; return the fuser Graph.
    ``fold=False`` skips the static-shape requirement (for ops ONNX cannot shape-infer)."""
    if isinstance(nodes, onnx.NodeProto):
        nodes = [nodes]
    out_types = out_types or {}
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info(k, _ONNX_TYPE[v.dtype], v.shape) for k, v in inputs.items()],
        [helper.make_tensor_value_info(o, out_types.get(o, TensorProto.FLOAT), None) for o in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    ref = ort_session(model).run(None, inputs)
    g = from_onnx(model, fold=fold)
    _assert_close(ref, run_torch(g, inputs), tol=tol, what=nodes[-1].op_type)
    return g


def _node(op, ins, outs=("y",), **attrs):
    return helper.make_node(op, list(ins), list(outs), **attrs)


def test_every_supported_op_has_an_implementation():
    """Every op of the registry's table has one; opaque ops (schema only) one or a named refusal."""
    table = {op for op in SUPPORTED_OPS if op_def(op).category is not Category.OPAQUE}
    assert table - {"Constant"} <= implemented("torch")
    assert all(op in implemented("torch") or refusal("torch", op) for op in SUPPORTED_OPS - {"Constant"})


# Conv family
@pytest.mark.parametrize(
    "attrs",
    [
        dict(pads=[0, 1, 2, 1], strides=[2, 2]),
        dict(auto_pad="SAME_UPPER", strides=[2, 2]),
        dict(auto_pad="SAME_LOWER", strides=[2, 2]),
        dict(auto_pad="VALID", strides=[1, 2]),
        dict(group=2, dilations=[2, 2], pads=[2, 2, 2, 2]),
        dict(group=4, dilations=[1, 3], strides=[2, 1], pads=[1, 0, 0, 3]),
    ],
)
def test_conv(attrs):
    w = _rand(4, 4 // attrs.get("group", 1), 3, 3, seed=1)
    check(_node("Conv", ["x", "w", "b"], **attrs), {"x": _rand(1, 4, 10, 9)}, {"w": w, "b": _rand(4, seed=2)})


def test_conv1d():
    check(
        _node("Conv", ["x", "w"], pads=[1, 2], strides=[2]),
        {"x": _rand(2, 3, 11)},
        {"w": _rand(5, 3, 4, seed=1)},
    )


@pytest.mark.parametrize(
    "attrs",
    [
        dict(strides=[2, 2], output_padding=[1, 1], pads=[1, 1, 1, 1]),
        dict(strides=[2, 3], output_padding=[1, 0], pads=[0, 1, 2, 1], group=2),
        dict(strides=[2, 2], dilations=[2, 1], pads=[1, 0, 1, 0]),
        dict(strides=[2, 2], output_shape=[12, 11]),
        dict(strides=[2, 2], output_shape=[10, 12], output_padding=[1, 0]),
        dict(strides=[2, 2], output_shape=[10, 12], auto_pad="SAME_UPPER"),
        dict(strides=[2, 2], auto_pad="SAME_UPPER"),
        dict(strides=[2, 2], auto_pad="SAME_LOWER"),
    ],
)
def test_conv_transpose(attrs):
    g = attrs.get("group", 1)
    check(
        _node("ConvTranspose", ["x", "w", "b"], **attrs),
        {"x": _rand(1, 4, 5, 6)},
        {"w": _rand(4, 6 // g, 3, 3, seed=1), "b": _rand(6, seed=2)},
    )


# Pooling
@pytest.mark.parametrize(
    "attrs",
    [
        dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
        dict(kernel_shape=[3, 2], strides=[2, 2], pads=[0, 1, 1, 0], ceil_mode=1),
        dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], dilations=[2, 2]),
        dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
        dict(kernel_shape=[2, 2], strides=[3, 3], auto_pad="SAME_LOWER"),
    ],
)
def test_maxpool(attrs):
    check(_node("MaxPool", ["x"], **attrs), {"x": _rand(1, 2, 8, 7)})


def test_maxpool_indices():
    for attrs in (
        dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        dict(kernel_shape=[2, 3], strides=[2, 2], pads=[0, 1, 1, 0], storage_order=1),
    ):
        check(
            _node("MaxPool", ["x"], ["y", "i"], **attrs),
            {"x": _rand(2, 2, 7, 8)},
            outputs=("y", "i"),
            out_types={"i": TensorProto.INT64},
        )


@pytest.mark.parametrize("include", [0, 1])
@pytest.mark.parametrize(
    "attrs",
    [
        dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
        dict(kernel_shape=[2, 3], strides=[2, 2], pads=[0, 1, 1, 0], ceil_mode=1),
        dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
        dict(kernel_shape=[3, 2], strides=[1, 2], pads=[2, 1, 2, 1], dilations=[2, 2]),
    ],
)
def test_avgpool(attrs, include):
    check(_node("AveragePool", ["x"], count_include_pad=include, **attrs), {"x": _rand(1, 2, 8, 7)}, opset=19)


def test_global_pools():
    x = {"x": _rand(2, 3, 5, 4)}
    check(_node("GlobalAveragePool", ["x"]), x)
    check(_node("GlobalMaxPool", ["x"]), x)


# Resize / Upsample
def _resize(x, scales=None, sizes=None, opset=13, **attrs):
    inits = {"roi": np.zeros(0, np.float32)}
    ins = ["x", "roi"]
    if scales is not None:
        inits["scales"] = np.asarray(scales, np.float32)
        ins.append("scales")
    else:
        inits["scales"] = np.zeros(0, np.float32)
        inits["sizes"] = np.asarray(sizes, np.int64)
        ins += ["scales", "sizes"]
    return check(_node("Resize", ins, **attrs), {"x": x}, inits, opset=opset)


@pytest.mark.parametrize(
    "case",
    [
        dict(
            scales=[1, 1, 2, 2],
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        ),
        dict(scales=[1, 1, 2, 3], mode="linear", coordinate_transformation_mode="half_pixel"),
        dict(scales=[1, 1, 0.6, 1.7], mode="linear", coordinate_transformation_mode="half_pixel"),
        dict(sizes=[1, 2, 11, 4], mode="linear", coordinate_transformation_mode="align_corners"),
        dict(sizes=[1, 2, 13, 9], mode="linear", coordinate_transformation_mode="half_pixel"),
        dict(sizes=[1, 2, 3, 17], mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
        dict(sizes=[1, 2, 1, 9], mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
        dict(scales=[1, 1, 1.5, 0.5], mode="nearest"),
        dict(sizes=[1, 2, 9, 4], mode="nearest", nearest_mode="round_prefer_ceil"),
        dict(
            sizes=[1, 2, 9, 13],
            mode="nearest",
            nearest_mode="ceil",
            coordinate_transformation_mode="align_corners",
        ),
        dict(scales=[1, 1, 2, 2], mode="nearest", coordinate_transformation_mode="tf_half_pixel_for_nn"),
        dict(scales=[1, 1, 2, 0.7], mode="cubic"),
        dict(sizes=[1, 2, 8, 11], mode="cubic", cubic_coeff_a=-0.5, exclude_outside=1),
        dict(sizes=[1, 2, 10, 8], mode="cubic", coordinate_transformation_mode="align_corners"),
    ],
)
def test_resize(case):
    _resize(_rand(1, 2, 6, 7), **case)


def test_resize_tf_crop_and_resize():
    nodes = _node(
        "Resize",
        ["x", "roi", "", "sizes"],
        mode="linear",
        coordinate_transformation_mode="tf_crop_and_resize",
        extrapolation_value=0.5,
    )
    check(
        nodes,
        {"x": _rand(1, 2, 6, 7)},
        {
            "roi": np.array([0, 0, -0.2, 0.3, 1, 1, 0.8, 1.4], np.float32),
            "sizes": np.array([1, 2, 5, 9], np.int64),
        },
    )


def test_resize_opset18_axes_and_aspect_policy():
    check(
        _node(
            "Resize",
            ["x", "", "", "sizes"],
            mode="linear",
            axes=[2, 3],
            keep_aspect_ratio_policy="not_larger",
        ),
        {"x": _rand(1, 2, 6, 8)},
        {"sizes": np.array([9, 20], np.int64)},
        opset=18,
    )


def test_resize_opset10_and_upsample():
    x = {"x": _rand(1, 2, 5, 4)}
    for mode in ("nearest", "linear"):
        for scales in ([1, 1, 2, 3], [1, 1, 0.5, 1.5], [1, 1, 1.5, 2.5]):
            s = {"scales": np.array(scales, np.float32)}
            check(_node("Resize", ["x", "scales"], mode=mode), x, s, opset=10)
            if min(scales) >= 1:  # ORT's Upsample refuses downsampling
                check(_node("Upsample", ["x", "scales"], mode=mode), x, s, opset=9)
                check(_node("Upsample", ["x"], mode=mode, scales=[float(v) for v in scales]), x, opset=7)


# Data movement
@pytest.mark.parametrize(
    "starts,ends,axes,steps",
    [
        ([-1, 8], [-100, 1], [2, 1], [-1, -2]),
        ([0, -3], [2**63 - 1, 2**63 - 1], [0, 2], [1, 2]),
        ([5], [-(2**63)], [1], [-3]),
        ([2, 1, 0], [3, -1, 9], [0, 1, 2], [1, 1, 1]),
    ],
)
def test_slice(starts, ends, axes, steps):
    arr = lambda v: np.array(v, np.int64)  # noqa: E731
    check(
        _node("Slice", ["x", "s", "e", "a", "k"]),
        {"x": _rand(3, 9, 6)},
        {"s": arr(starts), "e": arr(ends), "a": arr(axes), "k": arr(steps)},
    )


def test_slice_opset9_attrs():
    check(_node("Slice", ["x"], starts=[1, -4], ends=[1000, -1], axes=[0, 2]), {"x": _rand(3, 4, 6)}, opset=9)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad(mode):
    pads = np.array([0, 1, 2, 3, 0, 2, 1, -1], np.int64)
    inits = {"pads": pads}
    ins = ["x", "pads"]
    if mode == "constant":
        inits["v"] = np.array(1.5, np.float32)
        ins.append("v")
    check(_node("Pad", ins, mode=mode), {"x": _rand(2, 3, 5, 6)}, inits)


def test_pad_opset2_and_wrap():
    check(
        _node("Pad", ["x"], mode="reflect", pads=[0, 0, 2, 1, 0, 0, 1, 2]), {"x": _rand(1, 2, 4, 5)}, opset=2
    )
    check(
        _node("Pad", ["x", "pads", "", "axes"], mode="wrap"),
        {"x": _rand(1, 2, 4, 5)},
        {"pads": np.array([3, 1, 2, 4], np.int64), "axes": np.array([-1, 2], np.int64)},
        opset=19,
    )


@pytest.mark.parametrize(
    "opset,attrs,inits,n",
    [
        (11, dict(axis=1, split=[1, 3, 2]), {}, 3),
        (13, dict(axis=-1), {"split": np.array([2, 5], np.int64)}, 2),
        (13, dict(axis=0), {}, 2),
        (18, dict(axis=2, num_outputs=3), {}, 3),  # uneven: 3, 3, 1
    ],
)
def test_split(opset, attrs, inits, n):
    outs = [f"y{i}" for i in range(n)]
    check(
        _node("Split", ["x"] + list(inits), outs, **attrs),
        {"x": _rand(4, 6, 7)},
        inits,
        outputs=outs,
        opset=opset,
    )


def test_gather_transpose_expand_tile_concat():
    x = {"x": _rand(3, 4, 5)}
    check(_node("Gather", ["x", "i"], axis=1), x, {"i": np.array([[0, -1], [2, 1]], np.int64)})
    check(_node("Gather", ["x", "i"], axis=2), x, {"i": np.array(-2, np.int64)})
    check(_node("Transpose", ["x"], perm=[2, 0, 1]), x)
    check(_node("Transpose", ["x"]), x)
    check(_node("Expand", ["x", "s"]), {"x": _rand(3, 1, 5)}, {"s": np.array([2, 1, 4, 1], np.int64)})
    check(_node("Tile", ["x", "r"]), x, {"r": np.array([1, 2, 3], np.int64)})
    check(_node("Concat", ["x", "c"], axis=-2), x, {"c": _rand(3, 2, 5, seed=3)})


def test_reshape_flatten_squeeze_unsqueeze():
    x = {"x": _rand(2, 1, 3, 4)}
    check(_node("Reshape", ["x", "s"]), x, {"s": np.array([0, -1, 2], np.int64)})
    check(_node("Flatten", ["x"], axis=-1), x)
    check(_node("Flatten", ["x"], axis=0), x)
    check(_node("Squeeze", ["x"], axes=[1]), x, opset=11)
    check(_node("Squeeze", ["x", "a"]), x, {"a": np.array([-3], np.int64)})
    check(_node("Unsqueeze", ["x"], axes=[0, -1]), x, opset=11)
    check(_node("Unsqueeze", ["x", "a"]), x, {"a": np.array([4, 1], np.int64)})


def test_depth_space():
    x = {"x": _rand(1, 8, 3, 4)}
    check(_node("DepthToSpace", ["x"], blocksize=2, mode="DCR"), x)
    check(_node("DepthToSpace", ["x"], blocksize=2, mode="CRD"), x)
    check(_node("SpaceToDepth", ["x"], blocksize=2), {"x": _rand(1, 3, 4, 6)})


# Normalisation and matmul
@pytest.mark.parametrize("size", [5, 3])  # ORT refuses even sizes
def test_lrn(size):
    check(_node("LRN", ["x"], size=size, alpha=0.01, beta=0.6, bias=1.5), {"x": _rand(1, 7, 4, 3)})


def test_gemm():
    a, b, c = _rand(3, 5), _rand(4, 5, seed=1), _rand(4, seed=2)
    check(_node("Gemm", ["a", "b", "c"], transB=1, alpha=0.7, beta=1.3), {"a": a}, {"b": b, "c": c})
    check(_node("Gemm", ["a", "b", "c"], transB=1), {"a": a}, {"b": b, "c": c})
    check(_node("Gemm", ["a", "b"], transA=1, alpha=2.0), {"a": _rand(5, 3)}, {"b": _rand(5, 4)})
    check(_node("Gemm", ["a", "b", "c"], beta=0.5), {"a": a}, {"b": _rand(5, 4), "c": _rand(3, 1, seed=4)})
    check(_node("MatMul", ["a", "b"]), {"a": _rand(2, 3, 5)}, {"b": _rand(5, 4)})


def test_norms():
    x = {"x": _rand(2, 6, 4, 5)}
    check(
        _node("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=1e-3),
        x,
        {
            "s": _rand(6, seed=1),
            "b": _rand(6, seed=2),
            "m": _rand(6, seed=3),
            "v": np.abs(_rand(6, seed=4)) + 0.1,
        },
    )
    check(
        _node(
            "BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "rm", "rv"], training_mode=1, momentum=0.8
        ),
        x,
        {
            "s": _rand(6, seed=1),
            "b": _rand(6, seed=2),
            "m": _rand(6, seed=3),
            "v": np.abs(_rand(6, seed=4)) + 0.1,
        },
        outputs=("y", "rm", "rv"),
        opset=15,
    )
    check(
        _node("InstanceNormalization", ["x", "s", "b"], epsilon=1e-4),
        x,
        {"s": _rand(6, seed=1), "b": _rand(6, seed=2)},
    )
    check(
        _node("LayerNormalization", ["x", "s", "b"], axis=-2),
        x,
        {"s": _rand(4, 5, seed=1), "b": _rand(4, 5, seed=2)},
    )
    check(_node("LayerNormalization", ["x", "s"], axis=1), x, {"s": _rand(6, 4, 5, seed=1)})
    check(
        _node("GroupNormalization", ["x", "s", "b"], num_groups=3),
        x,
        {"s": _rand(6, seed=1), "b": _rand(6, seed=2)},
        opset=21,
        fold=False,
    )
    check(
        _node("GroupNormalization", ["x", "s", "b"], num_groups=3),
        x,
        {"s": _rand(3, seed=1), "b": _rand(3, seed=2)},
        opset=18,
        fold=False,
    )


# Softmax and reductions
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset", [11, 13])
def test_softmax(op, opset):
    check(_node(op, ["x"], axis=1), {"x": _rand(2, 3, 4, 5)}, opset=opset)
    check(_node(op, ["x"]), {"x": _rand(2, 3, 4)}, opset=opset)


@pytest.mark.parametrize(
    "op", ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2"]
)
def test_reduce(op):
    x = {"x": _rand(2, 3, 4)}
    check(_node(op, ["x"], axes=[0, -1], keepdims=0), x, opset=11)
    check(_node(op, ["x"], keepdims=1), x, opset=11)
    check(_node(op, ["x", "a"], keepdims=0), x, {"a": np.array([1], np.int64)}, opset=18)
    check(_node(op, ["x", "a"], noop_with_empty_axes=1), x, {"a": np.zeros(0, np.int64)}, opset=18)


def test_argmax():
    x = {"x": np.round(_rand(3, 4, 5))}  # ties: first vs last index
    for attrs in (dict(axis=1), dict(axis=-1, keepdims=0), dict(axis=0, select_last_index=1)):
        check(_node("ArgMax", ["x"], **attrs), x, out_types={"y": TensorProto.INT64})


# Elementwise
UNARY = [
    "Relu",
    "Sigmoid",
    "Tanh",
    "Erf",
    "Exp",
    "Neg",
    "Abs",
    "Floor",
    "Ceil",
    "Sin",
    "Cos",
    "HardSwish",
    "Softplus",
    "Identity",
    "Mish",
]


@pytest.mark.parametrize("op", UNARY)
def test_unary(op):
    check(_node(op, ["x"]), {"x": _rand(3, 4) * 3}, opset=18)


def test_unary_with_attrs_and_domain():
    x = {"x": _rand(3, 4) * 3}
    check(_node("Log", ["x"]), {"x": np.abs(x["x"]) + 0.1})
    check(_node("Sqrt", ["x"]), {"x": np.abs(x["x"])})
    check(_node("Reciprocal", ["x"]), {"x": np.abs(x["x"]) + 0.5})
    check(_node("HardSigmoid", ["x"], alpha=0.3, beta=0.4), x)
    check(_node("LeakyRelu", ["x"], alpha=0.2), x)
    check(_node("Elu", ["x"], alpha=0.7), x)
    check(_node("Gelu", ["x"]), x, opset=20)
    check(_node("Gelu", ["x"], approximate="tanh"), x, opset=20)
    check(_node("Clip", ["x"], min=-0.5, max=1.0), x, opset=6)
    check(_node("Clip", ["x", "lo", "hi"]), x, {"lo": np.float32(-1), "hi": np.float32(0.5)})
    check(_node("Clip", ["x", "", "hi"]), x, {"hi": np.float32(0.5)})
    check(_node("Clip", ["x", "lo", "hi"]), {**x, "lo": np.array(-0.2, np.float32)}, {"hi": np.float32(0.5)})
    check(_node("PRelu", ["x", "s"]), {"x": _rand(2, 3, 4, 5)}, {"s": _rand(3, 1, 1, seed=1)})
    check(_node("PRelu", ["x", "s"]), {"x": _rand(2, 3, 4, 5)}, {"s": _rand(5, seed=1)})
    check(_node("Dropout", ["x"], ["y", "m"]), x, outputs=("y", "m"), out_types={"m": TensorProto.BOOL})
    check(_node("Dropout", ["x"], ratio=0.3), x, opset=7)


def test_binary_and_variadic():
    a, b = _rand(2, 3, 4), _rand(3, 1, seed=1)
    ab = {"a": a, "b": b}
    for op in ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean"):
        check(_node(op, ["a", "b"]), ab)
    check(_node("Sum", ["a", "b", "c"]), ab, {"c": _rand(4, seed=2)})
    check(_node("Mean", ["a", "b", "c"]), ab, {"c": _rand(4, seed=2)})
    check(_node("Pow", ["a", "b"]), {"a": np.abs(a) + 0.1, "b": b})
    for op in ("Equal", "Less", "Greater"):
        check(_node(op, ["a", "b"]), {"a": np.round(a), "b": np.round(b)}, out_types={"y": TensorProto.BOOL})
    ia, ib = np.array([7, -7, 9, -9], np.int64), np.array([2, 2, -4, -4], np.int64)
    for fmod in (0, 1):
        check(_node("Mod", ["a", "b"], fmod=fmod), {"a": ia, "b": ib}, out_types={"y": TensorProto.INT64})
    check(_node("Div", ["a", "b"]), {"a": ia, "b": ib}, out_types={"y": TensorProto.INT64})
    check(_node("Mod", ["a", "b"], fmod=1), ab)
    p, q = np.array([True, False, True]), np.array([True, True, False])
    for op in ("And", "Or"):
        check(_node(op, ["a", "b"]), {"a": p, "b": q}, out_types={"y": TensorProto.BOOL})
    check(_node("Not", ["a"]), {"a": p}, out_types={"y": TensorProto.BOOL})
    check(_node("Where", ["c", "a", "b"]), {"c": a > 0, "a": a, "b": b})


def test_cast_and_source_ops():
    x = {"x": _rand(2, 3) * 4}
    check(_node("Cast", ["x"], to=TensorProto.INT32), x, out_types={"y": TensorProto.INT32})
    check(_node("Cast", ["x"], to=TensorProto.BOOL), x, out_types={"y": TensorProto.BOOL})
    check(_node("CastLike", ["x", "t"]), x, {"t": np.zeros(1, np.int64)}, out_types={"y": TensorProto.INT64})
    # Shape/Size/Range/ConstantOfShape folded away on import still run here when kept.
    nodes = [
        _node("Shape", ["x"], ["s"], start=-1),
        _node("ConstantOfShape", ["s"], ["y"], value=numpy_helper.from_array(np.array([2.5], np.float32))),
    ]
    check(nodes, x)
    g = Graph(opset=17)
    xv = g.add_input("x", (2, 3))
    sh = g.add_node("Shape", [xv], name="shape").output
    sz = g.add_node("Size", [xv], name="size").output
    start = g.const(np.array(1, np.int64), "start")
    rng = g.add_node("Range", [start, sz, g.const(np.array(2, np.int64), "delta")], name="range")
    cos = g.add_node("ConstantOfShape", [sh], attrs={"value": np.array([3], np.int32)}, name="cos")
    g.outputs = [sh, sz, rng.output, cos.output]
    outs = run_torch(g, {"x": np.zeros((2, 3), np.float32)})
    assert [o.tolist() for o in outs] == [[2, 3], 6, [1, 3, 5], [[3, 3, 3], [3, 3, 3]]]
    assert outs[3].dtype == np.int32


def test_constant_node_kept_in_graph():
    g = Graph(opset=17)
    x = g.add_input("x", (2, 2))
    c = g.add_node("Constant", [], attrs={"value_floats": [1.0, 2.0]}, name="k").output
    g.outputs = [g.add_node("Add", [x, c], name="add").output]
    (out,) = run_torch(g, {"x": np.ones((2, 2), np.float32)})
    np.testing.assert_array_equal(out, [[2, 3], [2, 3]])


# ---- module properties ----------------------------------------------------------------------
def _conv_bn_model():
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    nodes = [
        _node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c"], pads=[1, 1, 1, 1]),
        _node("BatchNormalization", ["c", "bn.g", "bn.b", "bn.mean", "bn.var"], ["n"]),
        _node("Relu", ["n"], ["r"]),
        _node("Reshape", ["r", "shape"], ["f"]),
        _node("Gemm", ["f", "fc.w", "fc.b"], ["y"], transB=1),
    ]
    inits = {
        "conv1.weight": f(4, 3, 3, 3),
        "conv1.bias": f(4),
        "bn.g": f(4),
        "bn.b": f(4),
        "bn.mean": f(4),
        "bn.var": np.abs(f(4)) + 0.5,
        "shape": np.array([2, -1], np.int64),
        "fc.w": f(5, 64),
        "fc.b": f(5),
    }
    graph = helper.make_graph(
        nodes,
        "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return from_onnx(model)


def test_parameters_buffers_and_names():
    m = to_torch(_conv_bn_model())
    params = dict(m.named_parameters())
    assert {"conv1_weight", "conv1_bias", "bn_g", "bn_b", "fc_w", "fc_b"} <= set(params)
    assert {"bn_mean", "bn_var"} <= set(m.state_dict()) - set(params)
    assert "shape" not in m.state_dict() and "shape" in dict(m.named_buffers())
    assert params["conv1_weight"].shape == (4, 3, 3, 3)


def test_gradients_flow_to_parameters():
    m = to_torch(_conv_bn_model()).train()
    x = torch.randn(2, 3, 4, 4)
    loss = m(x).square().mean()
    loss.backward()
    for name in ("conv1_weight", "conv1_bias", "bn_g", "bn_b", "fc_w"):
        p = getattr(m, name)
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # A step changes the output; the graph's own arrays stay untouched.
    g = _conv_bn_model()
    before = g.value_by_name("conv1.weight").const.copy()
    m2 = to_torch(g)
    with torch.no_grad():
        m2.conv1_weight.add_(1.0)
    np.testing.assert_array_equal(g.value_by_name("conv1.weight").const, before)


def test_trainable_after_inference_mode_run():
    """Helper tensors cached during a run_torch (inference mode) must not break backward."""
    g = Graph(opset=17)
    x = g.add_input("x", (1, 2, 6, 6))
    w = g.const(np.random.default_rng(0).standard_normal((2, 2, 3, 3)).astype(np.float32), "w")
    y = g.add_node("Conv", [x, w], attrs={"pads": [1, 1, 1, 1]}, name="conv").output
    y = g.add_node(
        "AveragePool",
        [y],
        attrs={"kernel_shape": [3, 3], "pads": [0, 1, 1, 0], "strides": [2, 2]},
        name="pool",
    ).output
    scales = g.const(np.array([1, 1, 1.5, 2.5], np.float32), "scales")
    y = g.add_node("Resize", [y, None, scales], attrs={"mode": "linear"}, name="up").output
    g.outputs = [y]
    m = to_torch(g)
    run_torch(g, {"x": np.ones((1, 2, 6, 6), np.float32)}, module=m)
    m.train()
    m(torch.randn(1, 2, 6, 6)).sum().backward()
    assert m.w.grad is not None and m.w.grad.abs().sum() > 0


def test_splat_constants_are_materialised():
    g = Graph(opset=17)
    x = g.add_input("x", (2, 3))
    w = g.const(np.broadcast_to(np.float32(0.5), (3, 3)), "w")
    g.outputs = [g.add_node("MatMul", [x, w], name="mm").output]
    m = to_torch(g)
    assert m.w.is_contiguous() and m.w.stride() == (3, 1) and isinstance(m.w, torch.nn.Parameter)
    (out,) = run_torch(g, {"x": np.ones((2, 3), np.float32)}, module=m)
    np.testing.assert_allclose(out, np.full((2, 3), 1.5))


def test_unique_sanitized_names_and_multiple_outputs():
    g = Graph(opset=17)
    x = g.add_input("x", (2, 4))
    a = g.const(np.ones((4,), np.float32), "a.b")
    b = g.const(np.full((4,), 2, np.float32), "a_b")
    c = g.const(np.full((4,), 3, np.float32), "0forward")
    y1 = g.add_node("Add", [x, a], name="n1").output
    y2 = g.add_node("Mul", [y1, b], name="n2").output
    y3 = g.add_node("Sub", [y2, c], name="n3").output
    g.outputs = [y1, y3]
    m = to_torch(g)
    assert {"a_b", "a_b_1", "c_0forward"} == {n for n, _ in m.named_parameters()}
    out = m(torch.zeros(2, 4))
    assert isinstance(out, tuple) and len(out) == 2
    assert out[1].tolist() == [[-1.0] * 4] * 2


def test_intermediates_are_freed():
    g = _conv_bn_model()
    m = to_torch(g)
    freed = {s for step in m._plan for s in step[4]}
    produced = {s for step in m._plan for s in step[3]}
    assert produced - set(m._out_slots) <= freed


def test_pickle_and_deepcopy_round_trip():
    import copy
    import io

    m = to_torch(_conv_bn_model()).eval()
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        ref = m(x)
        buf = io.BytesIO()
        torch.save(m, buf)
        buf.seek(0)
        for other in (torch.load(buf, weights_only=False), copy.deepcopy(m)):
            torch.testing.assert_close(other(x), ref, rtol=0, atol=0)


def test_constant_node_feeds_shape_input():
    g = Graph(opset=17)
    x = g.add_input("x", (2, 6))
    shape = g.add_node("Constant", [], attrs={"value": np.array([3, 4], np.int64)}, name="k")
    g.outputs = [g.add_node("Reshape", [x, shape.output], name="r").output]
    m = to_torch(g)
    name = shape.output.name
    assert dict(m.named_buffers())[name].tolist() == [3, 4] and name not in m.state_dict()
    assert m(torch.arange(12.0).reshape(2, 6)).shape == (3, 4)


def test_two_inputs_in_graph_order_and_missing_input():
    g = Graph(opset=17)
    a, b = g.add_input("a", (2,)), g.add_input("b", (2,))
    g.outputs = [g.add_node("Sub", [a, b], name="s").output]
    (out,) = run_torch(g, {"b": np.array([1.0, 2.0], np.float32), "a": np.array([5.0, 5.0], np.float32)})
    assert out.tolist() == [4.0, 3.0]
    with pytest.raises(FuserError, match="missing input"):
        run_torch(g, {"a": np.zeros(2, np.float32)})


def test_unhandled_attributes_are_refused_at_build():
    g = Graph(opset=17)
    x = g.add_input("x", (1, 1, 4, 4))
    pads = g.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
    g.outputs = [g.add_node("Pad", [x, pads], attrs={"mode": "mirror"}, name="p1").output]
    with pytest.raises(FuserError, match=r"p1.*Pad.*mirror"):
        to_torch(g)
    g.nodes[0].op, g.nodes[0].attrs = "Resize", {"mode": "area"}
    with pytest.raises(FuserError, match=r"p1.*Resize.*area"):
        to_torch(g)


def test_runtime_errors_name_the_node():
    g = Graph(opset=17)
    x = g.add_input("x", (2, 3))
    w = g.const(np.ones((4, 5), np.float32), "w")
    g.outputs = [g.add_node("MatMul", [x, w], name="mm7").output]
    with pytest.raises(RuntimeError) as info:
        to_torch(g)(torch.zeros(2, 3))
    assert "mm7" in "".join(getattr(info.value, "__notes__", [])) or "mm7" in str(info.value)


def test_unsupported_op_raises_fuser_error():
    g = Graph(opset=17)
    x = g.add_input("x", (2,))
    g.outputs = [g.add_node("NonMaxSuppression", [x], name="nms1").output]
    with pytest.raises(FuserError, match=r"nms1.*NonMaxSuppression"):
        to_torch(g)


def test_module_compiles_with_torch_compile():
    """torch.compile traces the module (constant inputs such as ReduceMean axes, Reshape
    shapes and Clip bounds are plain Python values to it) and gives eager's numbers."""
    import fuser

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, x):
            y = torch.nn.functional.relu6(self.conv(x)).mean((2, 3))
            return self.fc(y.reshape(y.shape[0], -1))

    x = torch.randn(2, 3, 16, 16)
    graph = fuser.optimize(Net().eval(), (x,)).graph
    assert {"ReduceMean", "Clip"} <= {n.op for n in graph.nodes}
    module = fuser.to_torch(graph).eval()
    with torch.no_grad():
        eager = module(x)
        compiled = torch.compile(module, fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


def test_a_training_mode_dropout_draws_a_mask_each_call_and_tvm_refuses_it():
    """ONNX Dropout with training_mode true: y = x · mask / (1 − ratio), a new mask per call
    (as ONNX Runtime does); the torch module did the identity. A TVM build refuses it by name."""
    nodes = [_node("Dropout", ["x", "r", "t"], ["y", "m"])]
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 64])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("m", TensorProto.BOOL, None),
        ],
        [
            numpy_helper.from_array(np.array(0.25, np.float32), "r"),
            numpy_helper.from_array(np.array(True), "t"),
        ],
    )
    g = from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    x = np.random.default_rng(0).uniform(1, 2, (64, 64)).astype(np.float32)
    (y1, m1), (y2, m2) = run_torch(g, {"x": x}), run_torch(g, {"x": x})
    for y, m in ((y1, m1), (y2, m2)):
        y, m = np.asarray(y), np.asarray(m)
        assert m.dtype == bool and 0.7 < m.mean() < 0.8  # kept with probability 0.75
        np.testing.assert_allclose(y, np.where(m, x / 0.75, 0), rtol=1e-6)
    assert not np.array_equal(m1, m2)
    pytest.importorskip("tvm")
    from fuser.backends import tvm as tb

    with pytest.raises(FuserError, match=r"\(Dropout\): training_mode is true"):
        tb.to_relax(g)


def test_inputs_of_other_shapes_than_captured_are_named_when_a_node_fails():
    """A Reshape to the captured batch fails on batch 2: the error names the input, both
    shapes and the node (torch's own error named neither); shapes that work still run."""

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4 * 6 * 6, 2)

        def forward(self, x):
            return self.fc(self.conv(x).reshape(1, -1))

    module = to_torch(from_torch(Flat().eval(), (torch.randn(1, 3, 8, 8),)))
    assert module(torch.randn(1, 3, 8, 8)).shape == (1, 2)
    with pytest.raises(FuserError, match=r"\(Reshape\) failed on input shapes other than the captured ones"):
        module(torch.randn(2, 3, 8, 8))
