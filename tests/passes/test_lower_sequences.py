"""lower_sequences: SplitToSequence + SequenceAt(constant) becomes Split; anything else is refused."""

import numpy as np
import pytest
from util import ort_run_graph

from fuser.ir import FuserError, Graph, check_graph
from fuser.passes import lower_sequences


def _chunks(split, uses=(0, 1, 2), opset=17):
    g = Graph("seq", opset=opset)
    x = g.add_input("x", (1, 6, 2))
    seq = g.add_node("SplitToSequence", [x, None if split is None else g.const(split)], attrs={"axis": 1})
    seq.output.shape, seq.output.dtype = None, None
    for i in uses:
        at = g.add_node("SequenceAt", [seq.output, g.const(np.int64(i))])
        at.output.shape, at.output.dtype = None, np.dtype(np.float32)
        g.outputs.append(g.add_node("Relu", [at.output]).output)
    return g


@pytest.mark.parametrize("opset", [11, 17])
def test_chunks_become_one_split(opset):
    g = _chunks(np.array([1, 2, 3], np.int64), opset=opset)
    result = lower_sequences.run(g)
    check_graph(g)
    assert result.changed and result.stats == {"lowered": 1}
    assert [n.op for n in g.nodes] == ["Split", "Relu", "Relu", "Relu"]
    from fuser.analysis.shapes import infer_shapes

    infer_shapes(g)
    x = np.arange(12, dtype=np.float32).reshape(1, 6, 2) - 5
    got = ort_run_graph(g, {"x": x})
    for part, (lo, hi) in zip(got, [(0, 1), (1, 3), (3, 6)]):
        assert np.array_equal(part, np.maximum(x[:, lo:hi], 0))


def test_scalar_split_gives_equal_chunks():
    g = _chunks(np.int64(2))
    lower_sequences.run(g)
    split = g.nodes[0]
    assert split.inputs[1].const.tolist() == [2, 2, 2]


def test_a_sequence_used_otherwise_is_refused_by_name():
    g = _chunks(np.array([3, 3], np.int64), uses=(0,))
    seq = g.nodes[0].output
    g.outputs.append(seq)
    with pytest.raises(FuserError, match="SplitToSequence.*used other than by SequenceAt"):
        lower_sequences.run(g)
