"""Measured kernel times as a Chrome trace (the JSON that chrome://tracing and Perfetto open,
the format of ONNX Runtime's own profiler).

Process 1, "ONNX Runtime": one call of the model (the median of the profiled calls), every
op a slice on the thread that ran it, with its fusion group in ``args``; one more track,
"fusion groups", spans each group from its first op's start to its last op's end.
Process 2, "TVM" (after ``--compile``): each kernel of the plan-following build, timed in the
run (the median of its calls) and laid end to end in plan order.
"""

from __future__ import annotations

import json

from fuser.ir import FuserError

GROUPS_TID = 0  # the "fusion groups" track of process 1


def _meta(pid: int, name: str, tid: int | None = None, thread: str | None = None) -> dict:
    if tid is None:
        return {"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": name}}
    return {"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": thread}}


def chrome_trace(data: dict) -> dict:
    """The trace of a measured report (``fuser.reports.model_report`` data)."""
    profile = data.get("profile")
    kernels = data.get("tvm_kernels")
    if not profile and not kernels:
        raise FuserError("a trace needs measured times: add --measure (or --compile)")
    owner = {op: g["index"] for g in data["groups"] for op in g["ops"]}
    groups = {g["index"]: g for g in data["groups"]}
    labels = {op: label for g in data["groups"] for op, label in zip(g["ops"], g["labels"])}
    events: list[dict] = []
    if profile:
        events.append(_meta(1, "ONNX Runtime (one kernel per op, basic optimisations)"))
        events.append(_meta(1, "", GROUPS_TID, "fusion groups"))
        threads = {tid: k + 1 for k, tid in enumerate(dict.fromkeys(e["tid"] for e in profile["run"]))}
        for k in threads.values():
            events.append(_meta(1, "", k, f"thread {k}"))
        spans: dict[int, list[float]] = {}
        for e in profile["run"]:
            k = owner.get(e["node"])
            events.append(
                {
                    "name": labels.get(e["node"], e["node"]),
                    "cat": e["op"],
                    "ph": "X",
                    "pid": 1,
                    "tid": threads[e["tid"]],
                    "ts": e["ts_us"],
                    "dur": e["dur_us"],
                    "args": {"node": e["node"], "op": e["op"], "fusion_group": k},
                }
            )
            if k is not None:
                span = spans.setdefault(k, [e["ts_us"], e["ts_us"] + e["dur_us"]])
                span[0], span[1] = min(span[0], e["ts_us"]), max(span[1], e["ts_us"] + e["dur_us"])
        for k, (start, end) in sorted(spans.items(), key=lambda kv: kv[1][0]):
            g = groups[k]
            events.append(
                {
                    "name": f"G{k}",
                    "cat": "fusion group",
                    "ph": "X",
                    "pid": 1,
                    "tid": GROUPS_TID,
                    "ts": start,
                    "dur": end - start,
                    "args": {
                        "ops": len(g["ops"]),
                        "rank_by_dram": g["rank"],
                        "predicted_dram_bytes": g["dram_bytes"],
                        "buffer_bytes": g["buffer_bytes"],
                        "fits": g["fits"],
                        "ops_time_ms": g["measured_ms"],
                    },
                }
            )
    if kernels:
        events.append(_meta(2, "TVM (each kernel timed in the run, laid end to end in plan order)"))
        events.append(_meta(2, "", 1, "kernels"))
        order = sorted(kernels, key=lambda k: (k["group"] is None, k["group"] or 0, k["kernel"]))
        ts = 0.0
        for k in order:
            dur = k["median_ms"] * 1e3
            events.append(
                {
                    "name": k["kernel"],
                    "cat": "tvm kernel",
                    "ph": "X",
                    "pid": 2,
                    "tid": 1,
                    "ts": round(ts, 3),
                    "dur": round(dur, 3),
                    "args": {"fusion_group": k["group"], "predicted_dram_bytes": k["dram_bytes"]},
                }
            )
            ts += dur
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {"model": data["model"]["name"], "fuser": data["environment"]["versions"].get("fuser")},
    }


def trace_json(data: dict) -> str:
    return json.dumps(chrome_trace(data), indent=1)


def save_trace(data: dict, path, *, protect=()) -> None:
    from fuser.serde.files import atomic_write

    atomic_write(path, (trace_json(data) + "\n").encode(), protect=protect)
