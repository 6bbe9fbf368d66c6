"""Backends: ONNX, torch."""
