"""The real graphs (ONNX zoo models shipped in the onnx package, PaddleOCR models in
../shared/models): import, optimize, export, and compare with ONNX Runtime on the original."""

import pytest
from util import LIGHT_MODELS, PADDLE_MODELS, ort_run, paddle_model, real_model_input, rel_err

import fuser
from fuser.frontends.onnx import from_onnx
from fuser.serde.onnx import to_onnx

REAL = [(p, None) for p in LIGHT_MODELS] + [(paddle_model(n), s) for n, s in PADDLE_MODELS.items()]
IDS = [p.stem for p, _ in REAL]


@pytest.mark.parametrize("path,shape", REAL, ids=IDS)
def test_optimize_matches_ort_on_original(path, shape):
    result = fuser.optimize(str(path), input_shapes=shape)
    graph = result.graph
    assert result.report.steps
    x = real_model_input(path, graph.inputs[0].shape)
    feeds = {graph.inputs[0].name: x}
    (want,) = ort_run(path, feeds)[:1]
    (got,) = ort_run(to_onnx(graph), feeds)[:1]
    assert got.shape == want.shape
    assert rel_err(got, want) <= 1e-5


@pytest.mark.parametrize("path,shape", REAL, ids=IDS)
def test_every_value_static_after_import(path, shape):
    g = from_onnx(path, shape)
    live = [v for v in g.values() if v.uses or g.is_output(v)]
    assert all(v.is_static and v.dtype is not None for v in live)
    # shape subgraphs are gone once shapes are fixed
    assert not {"Shape", "Constant", "ConstantOfShape", "CastLike"} & set(g.op_counts())


def test_paddle_classifier_shape_subgraph_folded():
    """The classifier computes its Reshape target with Shape/Slice/Concat: all folded."""
    path = paddle_model("ch_ppocr_mobile_v2.0_cls_infer.onnx")
    import onnx

    raw = onnx.load(str(path))
    assert {"Shape", "Slice", "Concat"} <= {n.op_type for n in raw.graph.node}
    g = from_onnx(path, {"x": (1, 3, 48, 192)})
    assert "Shape" not in g.op_counts() and "Slice" not in g.op_counts()
    reshapes = [n for n in g.nodes if n.op == "Reshape"]
    assert all(n.inputs[1].is_const for n in reshapes)


def test_other_input_shapes_follow_through():
    path = paddle_model("ch_PP-OCRv4_det_infer.onnx")
    g = from_onnx(path, (1, 3, 320, 256))
    assert g.outputs[0].shape == (1, 1, 320, 256)


def test_same_input_same_bytes():
    path = LIGHT_MODELS[0]
    a = to_onnx(fuser.optimize(str(path)).graph).SerializeToString(deterministic=True)
    b = to_onnx(fuser.optimize(str(path)).graph).SerializeToString(deterministic=True)
    assert a == b


def test_splat_weights_stay_small():
    """Light models fill weights with ConstantOfShape; export keeps them as fills."""
    vgg = next(p for p in LIGHT_MODELS if "vgg19" in p.name)
    model = to_onnx(from_onnx(vgg))
    assert len(model.SerializeToString()) < 1 << 20
    assert any(n.op_type == "ConstantOfShape" for n in model.graph.node)
