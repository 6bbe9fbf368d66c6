"""Shared test helpers: where the real models are, ORT runs, relative error."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
SHARED_MODELS = ROOT.parent / "shared" / "models"
LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = sorted(LIGHT_DIR.glob("*.onnx"))
# The two real PaddleOCR models and the input shapes their README gives.
PADDLE_MODELS = {
    "ch_PP-OCRv4_det_infer.onnx": (1, 3, 640, 640),
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": (1, 3, 48, 192),
}
HEAVY = os.environ.get("FUSER_HEAVY") == "1"


def paddle_model(name: str) -> Path:
    return SHARED_MODELS / name


def rel_err(a, b) -> float:
    """max |a - b| / max |b| (the issue's metric); b is the reference."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def ort_session(model, optimize: bool = True) -> ort.InferenceSession:
    """An ONNX Runtime CPU session on one thread (tests share two cores) for a path,
    bytes or ModelProto."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif isinstance(model, Path):
        model = str(model)
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def ort_run(model, feeds: dict, optimize: bool = True) -> list[np.ndarray]:
    """Run an ONNX model (path, bytes or ModelProto) in ONNX Runtime."""
    return ort_session(model, optimize).run(None, feeds)


def export_weights_as_inputs(graph, min_size: int = 1024):
    """to_onnx of ``graph`` with its large constants turned into graph inputs, plus the feeds
    for them: ORT then reads the weights in place instead of through protobuf copies."""
    from fuser.serde.onnx import to_onnx

    e = graph.copy()
    feeds = {}
    for v in e.constants():
        if v.const.size >= min_size:
            feeds[v.name] = np.asarray(v.const, order="C")
            v.const = None
            e.inputs.append(v)
    return to_onnx(e), feeds


def ort_run_graph(graph, feeds: dict) -> list[np.ndarray]:
    """Run a Graph in ONNX Runtime without serialising its weights (fast for VGG-sized models)."""
    model, weights = export_weights_as_inputs(graph)
    return ort_run(model, {**feeds, **weights})


def random_input(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def randomized_weights(graph, seed: int = 0):
    """A copy whose floating constants of more than one element are seeded random values of
    the same shape, scaled per role so activations stay finite (uniform, variance ~1/fan_in)."""
    g = graph.copy()
    rng = np.random.default_rng(seed)
    done: set[int] = set()
    for n in g.nodes:
        for i, v in enumerate(n.inputs):
            if v is None or not v.is_const or id(v) in done:
                continue
            done.add(id(v))
            a = v.const
            if a.dtype.kind != "f" or a.size <= 1:
                continue
            lo, hi = -0.17, 0.17  # biases, BN shift and mean: std 0.1
            if (n.op == "BatchNormalization" and i in (1, 4)) or n.op == "Mul":
                lo, hi = 0.5, 1.5
            elif a.ndim >= 2:
                fan_in = np.prod(a.shape[1:])
                if n.op == "Gemm" and i == 1 and not n.attr("transB", 0):
                    fan_in = a.shape[0]
                gain = 2.0 if n.op in ("Conv", "ConvTranspose") else 1.0  # ReLU nets
                hi = float(np.sqrt(3.0 * gain / fan_in))
                lo = -hi
            r = rng.random(a.shape, dtype=np.float32)
            r *= hi - lo
            r += lo
            v.const = r.astype(a.dtype, copy=False)
    return g


def ocr_like_input(shape, seed=0):
    """Text-like lines (light strokes on dark bars on a light ground) plus seeded noise: on
    pure noise the detector's sigmoid output is ~1e-5 everywhere, and ORT's approximate
    sigmoid (exactly 0 below about -16) makes relative errors meaningless there."""
    img = np.full(shape, 2.0, np.float32)
    h, w = shape[2], shape[3]
    for r in range(h // 16, h - h // 8, max(h // 8, 1)):
        img[:, :, r : r + h // 23, w // 10 : w - w // 10] = -1.8
        for c in range(w // 10, w - w // 10, max(w // 27, 1)):
            img[:, :, r + h // 160 : r + h // 27, c : c + max(w // 107, 1)] = 2.0
    return img + 0.1 * np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def real_model_input(path, shape, seed=0) -> np.ndarray:
    """A meaningful input for a real model: text-like for the OCR detector, noise otherwise."""
    return ocr_like_input(shape, seed) if "det_infer" in str(path) else random_input(shape, seed)
