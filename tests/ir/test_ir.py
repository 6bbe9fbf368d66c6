"""Graph / Node / Value bookkeeping on small hand-built graphs."""

import numpy as np
import pytest

from fuser.ir import Graph, check_graph


def small_graph():
    """x -> Conv -> Relu -> Add(., x_conv) -> y : a residual-shaped toy."""
    g = Graph("toy")
    x = g.add_input("x", (1, 2, 4, 4))
    w = g.const(np.ones((2, 2, 1, 1), np.float32), "w")
    conv = g.add_node("Conv", [x, w], name="conv", attrs={"kernel_shape": [1, 1]})
    relu = g.add_node("Relu", [conv.output], name="relu")
    add = g.add_node("Add", [relu.output, conv.output], name="add")
    g.outputs.append(add.output)
    return g, x, w, conv, relu, add


def test_users_producers_and_uses():
    g, x, w, conv, relu, add = small_graph()
    assert conv.output.users == [relu, add]
    assert conv.output.producer is conv
    assert g.producers(add) == [relu, conv]
    assert g.consumers(conv) == [relu, add]
    assert w.is_const and w.producer is None
    check_graph(g)


def test_replace_all_uses_with_and_erase():
    g, x, w, conv, relu, add = small_graph()
    count = g.replace_all_uses_with(relu.output, conv.output)
    assert count == 1
    assert add.inputs[0] is conv.output and relu.output.uses == []
    g.erase_node(relu)
    assert [n.op for n in g.nodes] == ["Conv", "Add"]
    check_graph(g)


def test_erase_refuses_used_node():
    g, x, w, conv, relu, add = small_graph()
    with pytest.raises(ValueError, match="still used"):
        g.erase_node(conv)


def test_replace_graph_output():
    g, x, w, conv, relu, add = small_graph()
    g.replace_all_uses_with(add.output, relu.output)
    assert g.outputs == [relu.output]


def test_toposort_restores_order():
    g, x, w, conv, relu, add = small_graph()
    g.nodes.reverse()
    with pytest.raises(AssertionError):
        check_graph(g)
    g.toposort()
    assert [n.name for n in g.nodes] == ["conv", "relu", "add"]
    check_graph(g)


def test_insert_before_and_unique_names():
    g, x, w, conv, relu, add = small_graph()
    n = g.add_node("Sigmoid", [conv.output], name="relu", before=relu)
    assert n.name != "relu" and g.nodes.index(n) == 1
    assert len({v.name for v in g.values()}) == len(g.values())


def test_extract_subgraph():
    g, x, w, conv, relu, add = small_graph()
    sub = g.extract([relu, add])
    assert [v.name for v in sub.inputs] == [conv.output.name]
    assert [v.name for v in sub.outputs] == [add.output.name]
    assert [n.op for n in sub.nodes] == ["Relu", "Add"]
    check_graph(sub)
    # the original is untouched
    assert relu.graph is g and len(g.nodes) == 3
    # a cut in the middle exposes the intermediate as an output
    sub2 = g.extract([conv, relu])
    assert {v.name for v in sub2.outputs} == {conv.output.name, relu.output.name}


def test_copy_is_independent():
    g, *_ = small_graph()
    c = g.copy()
    c.replace_all_uses_with(c.nodes[1].output, c.nodes[0].output)
    c.erase_node(c.nodes[1])
    assert len(g.nodes) == 3 and len(c.nodes) == 2
    assert g.nodes[2].inputs[0] is g.nodes[1].output  # the original's Add still reads its Relu
    check_graph(g)
    check_graph(c)


def test_networkx_view():
    g, *_ = small_graph()
    nxg = g.to_networkx()
    assert set(nxg.nodes) == {"conv", "relu", "add"}
    assert nxg.number_of_edges() == 3  # conv->relu, conv->add, relu->add
    import networkx as nx

    assert list(nx.topological_sort(nxg)) == ["conv", "relu", "add"]


def test_text_dump_reads():
    g, *_ = small_graph()
    text = str(g)
    assert "graph toy(%x: float32[1,2,4,4])" in text
    assert "= Conv(%x, $w) {kernel_shape=[1, 1]}" in text
    assert text.count("\n") == 4


def test_a_deep_graph_pickles_flat_and_comes_back_the_same():
    """A chain of 5,000 Relu (each op links to the next through its Values) pickles within
    Python's recursion limit and comes back with the same nodes, names, constants, producers
    and uses; the residual toy keeps its shared Value (one object read twice)."""
    import pickle

    g = Graph("chain")
    v = g.add_input("x", (1, 8))
    for i in range(5000):
        v = g.add_node(
            "Relu" if i % 2 else "Add", [v] if i % 2 else [v, g.const(np.full((1, 8), i, np.float32))]
        ).output
    g.outputs.append(v)
    back = pickle.loads(pickle.dumps(g))
    assert [n.name for n in back.nodes] == [n.name for n in g.nodes] and len(back.nodes) == 5000
    assert [(n.op, [i.name for i in n.inputs], [o.name for o in n.outputs]) for n in back.nodes] == [
        (n.op, [i.name for i in n.inputs], [o.name for o in n.outputs]) for n in g.nodes
    ]
    assert back.nodes[-1].inputs[0].producer is back.nodes[-2] and back.outputs[0].producer is back.nodes[-1]
    assert np.array_equal(back.nodes[4998].inputs[1].const, np.full((1, 8), 4998, np.float32))
    assert all(n.graph is back for n in back.nodes) and back.unique_name("x") != "x"
    check_graph(back)

    toy, *_ = small_graph()
    toy.nodes[0].meta["group"] = 3
    back = pickle.loads(pickle.dumps(toy))
    conv, relu, add = back.nodes
    assert add.inputs[1] is conv.output and conv.output.uses == [(relu, 0), (add, 1)]
    assert (
        back.inputs[0].users == [conv]
        and conv.meta == {"group": 3}
        and conv.attrs == {"kernel_shape": [1, 1]}
    )
    check_graph(back)
