"""Pruning real models: every zoo model (ViT-Ti, ShuffleNetV2, ConvNeXt-T, EfficientNet with
SE, DeepLabV3+, ...) and the two PaddleOCR models prune, run in ONNX Runtime and keep their
output shapes; ResNet-18/50 at 0.5 land on Torch-Pruning's architecture."""

import numpy as np
import pytest
from test_prune import assert_prunes_exactly, ort_out
from util import HEAVY, PADDLE_MODELS, paddle_model, real_model_input
from zoo_cache import zoo_case

import fuser
from fuser import prune
from fuser.analysis import analyze
from fuser.analysis.shapes import infer_shapes
from fuser.models import names

HEAVY_ZOO = {"resnet152", "vgg16", "efficientnet_b3", "convnext_tiny", "deeplabv3plus_mobilenet_v3"}


def _cases():
    """(model, ratio): both ratios for every model, the heavy ones' 0.3 with FUSER_HEAVY=1."""
    for name in names():
        for ratio in (0.3, 0.5):
            if name in HEAVY_ZOO:
                if ratio == 0.5 or HEAVY:
                    yield pytest.param(name, ratio, marks=pytest.mark.heavy, id=f"{name}-{ratio}")
            else:
                yield pytest.param(name, ratio, id=f"{name}-{ratio}")


@pytest.mark.parametrize("name,ratio", _cases())
def test_zoo_model_prunes_and_runs(name, ratio):
    _, x, graph = zoo_case(name)
    pruned = prune(graph, ratio)
    report = pruned.report
    assert report.channels_removed > 0 and not report.blocked
    assert report.macs_after < (1 - ratio / 2) * report.macs_before
    out = ort_out(pruned, x.numpy())
    assert out.shape == tuple(graph.outputs[0].shape) and np.isfinite(out).all()


def _at_224(graph):
    """The same graph at 224x224 (ResNets are fully convolutional up to the global pool)."""
    graph = graph.copy()
    graph.inputs[0].shape = (1, 3, 224, 224)
    return infer_shapes(graph)


@pytest.mark.parametrize(
    "name,macs,params", [("resnet18", 0.49e9, 3_055_880), ("resnet50", 1.07e9, 6_917_640)]
)
def test_resnet_at_half_matches_torch_pruning(name, macs, params):
    """Per-group ratio 0.5, the fc ignored: Torch-Pruning's ResNet-18 has 3,055,880 params and
    0.49 G MACs, ResNet-50 6,917,640 and 1.07 G, by its counter, which also counts BN, ReLU
    and pooling; by fuser's convention (Conv/Gemm only) the same nets are 0.483 G / 1.052 G."""
    _, _, graph = zoo_case(name)
    pruned = analyze(_at_224(prune(graph, 0.5).graph))
    assert pruned["params"] == params
    assert abs(pruned["macs"] - macs) <= 0.02 * macs


def _paddle_cases():
    for file, shape in PADDLE_MODELS.items():
        # CI's reduced form: the detector at 320x320 (the model takes any multiple of 32)
        reduced = shape if HEAVY or "det" not in file else (1, 3, 320, 320)
        yield pytest.param(file, reduced, marks=pytest.mark.heavy, id=file.split("_infer")[0])


@pytest.mark.parametrize("file,shape", _paddle_cases())
def test_paddle_models_prune(file, shape):
    path = paddle_model(file)
    graph = fuser.from_onnx(path, {"x": shape})
    x = real_model_input(path, shape)
    for ratio in (0.3, 0.5):
        pruned = prune(graph, ratio)
        assert pruned.report.channels_removed > 0 and not pruned.report.blocked
        out = ort_out(pruned, x)
        assert out.shape == tuple(graph.outputs[0].shape) and np.isfinite(out).all()
    # the detector ends in a sigmoid, which ONNX Runtime approximates: compare absolutely
    assert_prunes_exactly(graph, 0.5, x, tol=1e-4 if "det" in file else 1e-5)
