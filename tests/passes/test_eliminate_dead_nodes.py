"""eliminate_dead_nodes: nodes that reach no output go, chains of them too; live ones stay."""

import numpy as np

from fuser.analysis.shapes import infer_shapes
from fuser.ir import Graph, check_graph
from fuser.passes import eliminate_dead_nodes


def test_dead_chains_go_and_live_nodes_stay():
    g = Graph("dead", opset=17)
    x = g.add_input("x", (2, 2))
    live = g.add_node("Relu", [x], name="live").output
    dead1 = g.add_node("Exp", [x], name="dead1").output
    g.add_node("Neg", [dead1], name="dead2")
    split = g.add_node("Split", [live, g.const(np.array([1, 1], np.int64))], outputs=2, name="split")
    g.outputs.append(split.outputs[0])  # the second output is unused, the node still lives
    infer_shapes(g)
    result = eliminate_dead_nodes.run(g)
    check_graph(g)
    assert result.changed and result.stats == {"removed": 2}
    assert [n.name for n in g.nodes] == ["live", "split"]
    assert not eliminate_dead_nodes.run(g).changed
