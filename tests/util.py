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


def ort_run(model, feeds: dict, optimize: bool = True) -> list[np.ndarray]:
    """Run an ONNX model (path, bytes or ModelProto) in ONNX Runtime on one thread group."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif isinstance(model, Path):
        model = str(model)
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"]).run(None, feeds)


def random_input(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def randomize_weights(graph, seed: int = 0):
    """Replace every floating constant of more than one element by seeded values with
    N(0, 1/fan_in)-like scale, so outputs depend on real op semantics, not on fills."""
    from fuser.analysis import BUFFER_SLOTS

    rng = np.random.default_rng(seed)
    variances = {id(n.inputs[i]) for n in graph.nodes for i in BUFFER_SLOTS.get(n.op, ())
                 if i < len(n.inputs) and n.inputs[i] is not None and i == 4}
    for v in graph.constants():
        if v.const.dtype.kind != "f" or v.const.size <= 1:
            continue
        if id(v) in variances:
            v.const = rng.uniform(0.5, 1.5, v.const.shape).astype(v.const.dtype)
            continue
        fan_in = int(np.prod(v.const.shape[1:])) if v.const.ndim > 1 else 1
        v.const = (rng.standard_normal(v.const.shape) / np.sqrt(max(fan_in, 1))).astype(v.const.dtype)
    return graph


def ocr_like_input(shape, seed=0):
    """Text-like lines (light strokes on dark bars on a light ground) plus seeded noise: on
    pure noise the detector's sigmoid output is ~1e-5 everywhere, and ORT's approximate
    sigmoid (exactly 0 below about -16) makes relative errors meaningless there."""
    img = np.full(shape, 2.0, np.float32)
    h, w = shape[2], shape[3]
    for r in range(h // 16, h - h // 8, max(h // 8, 1)):
        img[:, :, r:r + h // 23, w // 10:w - w // 10] = -1.8
        for c in range(w // 10, w - w // 10, max(w // 27, 1)):
            img[:, :, r + h // 160:r + h // 27, c:c + max(w // 107, 1)] = 2.0
    return img + 0.1 * np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def real_model_input(path, shape, seed=0) -> np.ndarray:
    """A meaningful input for a real model: text-like for the OCR detector, noise otherwise."""
    return ocr_like_input(shape, seed) if "det_infer" in str(path) else random_input(shape, seed)
