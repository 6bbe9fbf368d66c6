"""Backends: ``torch`` (a trainable nn.Module) and ``tvm`` (Apache TVM llvm/cuda builds).
ONNX export is ``fuser.serde.onnx``."""
