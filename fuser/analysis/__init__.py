"""What a graph costs: static shapes (onnx shape inference) and MACs, parameters and bytes."""

from .costs import NodeCost, analyze, node_macs, node_weights, weight_role

__all__ = ["NodeCost", "analyze", "node_macs", "node_weights", "weight_role"]
