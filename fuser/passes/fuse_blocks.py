"""fuse_blocks: mark each residual block that one generated CUDA kernel can compute.

Runs after fold_conv_bn (BN must already be inside the convs' weights and biases).
It annotates and does not rewrite (so ``changed`` is False): every node of a fused
block gets ``node.meta["block"] = {"id", "kind", "role"}`` (role: the layer it belongs
to, ``<layer>_act`` for its activation, ``residual`` for the Add); nodes of a
block-shaped group that cannot be fused get ``node.meta["block_not_fused"] = reason``.
Stats count blocks per kind and groups not fused. Which blocks match, and why others
do not, is the matcher's rule set: ``fuser.blockfusion.matcher``.
"""

from __future__ import annotations

from fuser.blockfusion.matcher import find_blocks
from fuser.ir import Graph

from .base import PassResult

KINDS = ("convfirst", "mbconv", "resnet_basic")


def run(graph: Graph, device: str | None = "h100") -> PassResult:
    blocks, rejected = find_blocks(graph, device)
    by_name = {n.name: n for n in graph.nodes}
    for spec in blocks:
        roles = {layer.node: layer.role for layer in spec.all_layers()}
        for layer in spec.all_layers():
            roles.update({a: layer.role + "_act" for a in layer.act_nodes})
        for name in spec.nodes:
            by_name[name].meta["block"] = {
                "id": spec.name,
                "kind": spec.kind,
                "role": roles.get(name, "residual"),
            }
    for r in rejected:
        for name in r.nodes:
            by_name[name].meta["block_not_fused"] = r.reason
    stats = {"blocks": len(blocks), "not_fused": len(rejected)}
    for kind in KINDS:
        stats[kind] = sum(b.kind == kind for b in blocks)
    # Annotation only: the graph's ops and values are unchanged.
    return PassResult(graph, False, stats)
