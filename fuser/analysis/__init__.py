"""What a graph costs: static shapes (onnx shape inference), MACs, parameters and bytes, and
peak activation memory."""

from .costs import NodeCost, analyze, node_macs, node_weights, weight_role
from .memory import peak_activation_bytes

__all__ = ["NodeCost", "analyze", "node_macs", "node_weights", "peak_activation_bytes", "weight_role"]
