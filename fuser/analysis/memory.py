"""Peak activation memory: the most bytes of activations alive at once when the nodes run one
after another in the graph's order.

Rules: a graph input is alive from the start until its last use; a node's output from that
node until its last consumer (to the end when it is a graph output); constants (weights) are
not activations. At each node the live set holds its inputs and outputs together; the peak is
the largest such sum.
"""

from __future__ import annotations

from fuser.ir import Graph


def peak_activation_bytes(graph: Graph) -> int:
    last_use: dict[int, int] = {}
    for i, n in enumerate(graph.nodes):
        for v in n.inputs:
            if v is not None and not v.is_const:
                last_use[id(v)] = i
    end = len(graph.nodes)
    for v in graph.outputs:
        last_use[id(v)] = end
    live = {id(v): v.nbytes for v in graph.inputs if id(v) in last_use}
    peak = sum(live.values())
    for i, n in enumerate(graph.nodes):
        for v in n.outputs:
            live[id(v)] = v.nbytes
        peak = max(peak, sum(live.values()))
        for v in {id(x): x for x in n.inputs if x is not None and not x.is_const}.values():
            if last_use.get(id(v)) == i:
                live.pop(id(v), None)
        for v in n.outputs:
            if id(v) not in last_use:  # never used: freed at once
                live.pop(id(v), None)
    return int(peak)
