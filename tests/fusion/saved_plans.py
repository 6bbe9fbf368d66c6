"""Plans saved from the planner before its speed-up (commit d07e614), and the cases they came from.

The planner's speed-up must not change any plan: ``test_saved_plans.py`` plans every case
again and compares. Cases use graphs that do not depend on torch capture (the onnx
package's ``light`` models, seeded synthetic graphs). Record again only on purpose:

    PYTHONPATH=. python tests/fusion/saved_plans.py --record tests/fusion/data/saved_plans.json
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SAVED = Path(__file__).resolve().parent / "data" / "saved_plans.json"
LIGHT = ("light_squeezenet", "light_shufflenet", "light_inception_v2", "light_densenet121")
SYNTHETIC = ("random_dag_0", "random_dag_1", "random_dag_2", "residual", "se", "conv_relu_chain_300")
SEARCHES = ("greedy", "local", "random", "nsga2")


def cases():
    """(graph name, style, buffer, search, split, budget, seed) of every saved plan."""
    out = []
    for name in LIGHT:
        for style in ("lbdf", "brr"):
            for buffer in ("64KB", "256KB"):
                for search in SEARCHES:
                    for split in ("explain", "random"):
                        out.append((name, style, buffer, search, split, 1 if search == "greedy" else 60, 0))
    for k, name in enumerate(SYNTHETIC):
        buffer = "64KB" if name.startswith("conv_relu") else ("2KB", "4KB", "8KB")[k % 3]
        for style in ("lbdf", "brr"):
            for search in SEARCHES:
                for split in ("explain", "random"):
                    for seed in (0, 1):
                        budget = 1 if search == "greedy" else 80
                        out.append((name, style, buffer, search, split, budget, seed))
    return out


@functools.cache
def fusion_graph(name: str):
    import fuser
    from fuser.fusion import build_fusion_graph

    if name.startswith("light_"):
        from util import LIGHT_DIR

        return build_fusion_graph(fuser.optimize(str(LIGHT_DIR / f"{name}.onnx")).graph)
    import test_fusion_graphs as graphs

    if name.startswith("random_dag_"):
        return build_fusion_graph(graphs.random_dag(int(name.rsplit("_", 1)[1]), n_ops=40))
    if name.startswith("conv_relu_chain_"):
        return build_fusion_graph(graphs.conv_relu_chain(int(name.rsplit("_", 1)[1])))
    return build_fusion_graph({"residual": graphs.residual_block, "se": graphs.se_block}[name]())


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def graph_fingerprint(fg) -> str:
    return digest([fg.names, fg.ops, [list(e) for e in fg.edges], fg.tensor_numel])


def summary(plan) -> dict:
    """What must stay the same: costs, the groups, the splits' explanations, the Pareto front."""
    d = plan.to_dict()
    return {
        "dram_bytes": d["dram_bytes"],
        "peak_buffer_bytes": d["peak_buffer_bytes"],
        "groups": len(d["groups"]),
        "groups_digest": digest([g["ops"] for g in d["groups"]]),
        "splits": len(d["splits"]),
        "splits_digest": digest(d["splits"]),
        "pareto": [[p["dram_bytes"], p["peak_buffer_bytes"], p["groups"]] for p in d["pareto"]],
    }


def key(case) -> str:
    return "|".join(str(x) for x in case)


def plan_case(case):
    from fuser.fusion import partition_fusion_graph

    name, style, buffer, search, split, budget, seed = case
    plan, _ = partition_fusion_graph(
        fusion_graph(name), buffer=buffer, style=style, search=search, split=split, budget=budget, seed=seed
    )
    return plan


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", required=True)
    args = parser.parse_args(argv)
    saved = {"graphs": {}, "plans": {}}
    for case in cases():
        fg = fusion_graph(case[0])
        saved["graphs"][case[0]] = graph_fingerprint(fg)
        t = time.perf_counter()
        saved["plans"][key(case)] = summary(plan_case(case))
        print(key(case), f"{time.perf_counter() - t:.1f} s", flush=True)
    Path(args.record).write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
