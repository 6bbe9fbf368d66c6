"""The IR as ONNX protos and files on disk."""
