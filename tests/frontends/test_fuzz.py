"""Seeded byte and protobuf mutations of small real models (benchmarks/onnx_fuzz.py) through
from_onnx -> optimize -> export: success or a FuserError, nothing else; and what fuser
accepts and ONNX Runtime loads, ONNX Runtime loads after export. CI runs a few hundred;
FUSER_HEAVY=1 runs 6,000."""

import collections

from onnx_fuzz import fuzz, mutants
from util import HEAVY

COUNT = 6000 if HEAVY else 300


def test_mutants_are_deterministic():
    a = [(m.steps, m.data) for m in mutants(20, seed=3)]
    b = [(m.steps, m.data) for m in mutants(20, seed=3)]
    assert a == b and len({d for _, d in a}) == 20


def test_mutants_give_success_or_a_fuser_error():
    results = fuzz(COUNT, seed=1, workers=2 if HEAVY else 1, ort=True)
    status = collections.Counter(r[3] for r in results)
    bad = [
        (name, index, steps, st, detail)
        for name, index, steps, st, detail in results
        if st not in ("ok", "refused")
    ]
    assert not bad, bad[:5]
    # the mutants exercise both ways out: some still import, most are refused
    assert status["ok"] >= COUNT // 50 and status["refused"] >= COUNT // 2, status
