"""ONNX conformance: onnx's own backend test models through fuser, against their expected outputs.

The cases: every ``node`` case regenerated with ``onnx.backend.test.case.node.collect_testcases``
(the code behind ``backend-test-tools generate-data``; the wheel does not ship ``node/``), plus
the ``simple``, ``pytorch-converted``, ``pytorch-operator`` and ``light`` data folders of the
installed onnx package. A case counts only when ONNX Runtime itself reproduces its expected
outputs (the case's rtol/atol, as onnx's backend runner compares); for those, fuser must

  import (input shapes from the case's inputs) -> optimize (default pipeline) -> export,

and ONNX Runtime on the exported model must reproduce the expected outputs too. Each case ends
as one of:

  pass     the exported model matches
  refused  a FuserError, one line (its reason: control flow, sequences, value-dependent shapes,
           an op of another domain such as ai.onnx.ml, or something else: a defect to look at)
  wrong    the exported model runs and differs (a defect)
  crash    any other exception (a defect)
  hang     over the per-case time limit (a defect)

``--torch`` also runs ``to_torch`` on every passing case: pass, refused (a named refusal),
wrong or crash.

    python benchmarks/onnx_conformance.py                  # all cases, 2 workers (~10 min on 2 cores)
    python benchmarks/onnx_conformance.py --torch --out benchmarks/results/onnx_conformance.txt
    python benchmarks/onnx_conformance.py --sample 60      # a seeded sample
    python benchmarks/onnx_conformance.py -k gridsample -v # cases whose name holds a word, each shown
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import os
import random
import re
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

DATA_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data"
SOURCES = ("node", "simple", "pytorch-converted", "pytorch-operator", "light")
RESULTS = Path(__file__).resolve().parent / "results" / "onnx_conformance.txt"
# The light models' test inputs, as onnx's backend runner makes them (generate_dummy_data).
LIGHT_TOLERANCE = {"densenet121": 2e-3}
REFUSAL_KINDS = ("control flow", "sequences", "value-dependent", "another domain")


@dataclass
class Case:
    name: str
    source: str
    model: bytes
    inputs: list  # numpy arrays (or lists/None for sequence and optional inputs), in graph-input order
    expected: list
    rtol: float = 1e-3
    atol: float = 1e-7


@dataclass
class Outcome:
    name: str
    source: str
    status: str  # not-reproducible | pass | refused | wrong | crash | hang
    detail: str = ""
    refusal: str = ""  # for refused: one of REFUSAL_KINDS or "other"
    torch: str = ""  # with --torch, for passing cases: pass | refused | wrong | crash
    torch_detail: str = ""
    tvm: str = ""  # with --tvm, likewise for an llvm build of the optimized graph
    tvm_detail: str = ""
    seconds: float = 0.0
    ops: list = field(default_factory=list)
    fixed: list = field(default_factory=list)  # graph inputs whose values were fixed (--input-value)


# ---- collecting cases --------------------------------------------------------------------
def _read_proto(path: Path, type_proto: onnx.TypeProto):
    data = path.read_bytes()
    if type_proto.HasField("sequence_type"):
        seq = onnx.SequenceProto()
        seq.ParseFromString(data)
        return numpy_helper.to_list(seq)
    if type_proto.HasField("optional_type"):
        opt = onnx.OptionalProto()
        opt.ParseFromString(data)
        return numpy_helper.to_optional(opt)
    t = onnx.TensorProto()
    t.ParseFromString(data)
    return numpy_helper.to_array(t)


def _folder_cases(source: str) -> list[Case]:
    cases = []
    for case_dir in sorted((DATA_DIR / source).iterdir()):
        if not (case_dir / "model.onnx").is_file():
            continue
        model = onnx.load(str(case_dir / "model.onnx"))
        inits = {t.name for t in model.graph.initializer}
        ins = [vi for vi in model.graph.input if vi.name not in inits]
        for ds in sorted(case_dir.glob("test_data_set_*")):
            inputs = [_read_proto(ds / f"input_{i}.pb", vi.type) for i, vi in enumerate(ins)]
            expected = [
                _read_proto(ds / f"output_{i}.pb", vi.type) for i, vi in enumerate(model.graph.output)
            ]
            suffix = "" if ds.name.endswith("_0") else f"[{ds.name}]"
            cases.append(Case(case_dir.name + suffix, source, model.SerializeToString(), inputs, expected))
    return cases


def _light_cases() -> list[Case]:
    cases = []
    for path in sorted((DATA_DIR / "light").glob("light_*.onnx")):
        name = path.stem[len("light_") :]
        model = onnx.load(str(path))
        inits = {t.name for t in model.graph.initializer}
        inputs = []
        for vi in model.graph.input:
            if vi.name in inits:
                continue
            shape = tuple(
                d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim
            )
            n = int(np.prod(shape))
            inputs.append((np.arange(n).reshape(shape) / n).astype(np.float32))
        expected = [
            _read_proto(path.with_name(f"{path.stem}_output_{i}.pb"), vi.type)
            for i, vi in enumerate(model.graph.output)
        ]
        rtol = LIGHT_TOLERANCE.get(name, 1e-3)
        cases.append(Case(f"test_{name}", "light", model.SerializeToString(), inputs, expected, rtol))
    return cases


def _as_value(t):
    """A test value as the runtimes take it: TensorProtos decoded, numpy scalars as 0-d arrays."""
    if isinstance(t, onnx.TensorProto):
        return numpy_helper.to_array(t)
    return np.asarray(t) if isinstance(t, np.generic) else t


def _node_cases() -> list[Case]:
    from onnx.backend.test.case import node

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        tcs = node.collect_testcases(None)
    cases = []
    for tc in tcs:
        for k, (inputs, outputs) in enumerate(tc.data_sets):
            suffix = "" if k == 0 else f"[{k}]"
            norm, outs = [_as_value(t) for t in inputs], [_as_value(t) for t in outputs]
            cases.append(
                Case(tc.name + suffix, "node", tc.model.SerializeToString(), norm, outs, tc.rtol, tc.atol)
            )
    return cases


def collect(sources=SOURCES) -> list[Case]:
    cases: list[Case] = []
    for s in sources:
        if s == "node":
            cases += _node_cases()
        elif s == "light":
            cases += _light_cases()
        else:
            cases += _folder_cases(s)
    return cases


# ---- running one case ---------------------------------------------------------------------
def _session(model_bytes: bytes):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def similar(expected: list, got: list, rtol: float, atol: float) -> str:
    """'' when ``got`` matches ``expected`` as onnx's backend runner compares, else why not."""
    if len(got) != len(expected):
        return f"{len(got)} outputs, expected {len(expected)}"
    for i, (ref, out) in enumerate(zip(expected, got)):
        if isinstance(ref, (list, tuple)) or isinstance(out, (list, tuple)):
            if (
                not isinstance(ref, (list, tuple))
                or not isinstance(out, (list, tuple))
                or len(ref) != len(out)
            ):
                return f"output {i}: sequence mismatch"
            why = similar(list(ref), list(out), rtol, atol)
            if why:
                return f"output {i}: {why}"
            continue
        if ref is None or out is None:
            if ref is not out:
                return f"output {i}: optional mismatch"
            continue
        ref, out = np.asarray(ref), np.asarray(out)
        if ref.shape != out.shape:
            return f"output {i}: shape {out.shape}, expected {ref.shape}"
        if ref.dtype == object or ref.dtype.kind in "US":
            if not np.array_equal(ref.astype(str), out.astype(str)):
                return f"output {i}: strings differ"
            continue
        if ref.dtype != out.dtype:
            return f"output {i}: dtype {out.dtype}, expected {ref.dtype}"
        if ref.size == 0:
            continue
        if ref.dtype.kind in "biu":
            if not np.array_equal(ref, out):
                return f"output {i}: {int((ref != out).sum())} of {ref.size} elements differ"
            continue
        r, o = ref.astype(np.float64), out.astype(np.float64)
        close = np.isclose(o, r, rtol=rtol, atol=atol, equal_nan=True)
        if not close.all():
            # NaN against a number (or inf against another) has no finite error: count those apart
            unbounded = ~close & ~np.isfinite(o - r)
            err = np.max(np.abs(np.where(close | unbounded, 0, o - r)))
            extra = f", {int(unbounded.sum())} NaN/inf where the other is not" if unbounded.any() else ""
            differ = f"{int((~close).sum())} of {ref.size} elements differ"
            return f"output {i}: {differ} (max abs err {err:.3g}{extra})"
    return ""


def _feeds(names: list[str], values: list) -> dict:
    return {n: v for n, v in zip(names, values)}


def _ort_run(model_bytes: bytes, feeds: dict) -> list:
    sess = _session(model_bytes)
    wanted = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in wanted})


def _import_and_optimize(model: onnx.ModelProto, tensors: dict):
    """fuser.optimize with the case's input shapes; when a shape depends on the values of graph
    inputs (ValueDependentShape names them), again with those values fixed, as
    ``--input-value`` would. Returns (Result, names of the inputs fixed)."""
    import fuser
    from fuser.frontends.normalize import ValueDependentShape

    fixed: dict = {}
    while True:
        shapes = {n: v.shape for n, v in tensors.items() if n not in fixed}
        try:
            graph = fuser.from_onnx(model, shapes or None, input_values=fixed or None)
        except ValueDependentShape as e:
            if not e.inputs or any(n in fixed or n not in tensors for n in e.inputs):
                raise
            fixed.update({n: tensors[n] for n in e.inputs})
            continue
        return fuser.optimize(graph), sorted(fixed)


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def refusal_kind(message: str) -> str:
    low = message.lower()
    for kind in REFUSAL_KINDS:
        if kind in low:
            return kind
    if "sequence" in low or "optional" in low:
        return "sequences"
    if "custom-domain op" in low:  # ai.onnx.ml and vendors: fuser admits the default domain
        return "another domain"
    return "other"


def run_case(case: Case, *, torch: bool = False, tvm: bool = False, timeout: float = 120.0) -> Outcome:
    """ORT reference check, then fuser's import -> optimize -> export (and ``to_torch``)."""
    from fuser.ir import FuserError

    model = onnx.load_from_string(case.model)
    inits = {t.name for t in model.graph.initializer}
    names = [vi.name for vi in model.graph.input if vi.name not in inits]
    feeds = _feeds(names, case.inputs)
    ops = sorted({n.op_type for n in model.graph.node})
    out = Outcome(case.name, case.source, "not-reproducible", ops=ops)
    t0 = time.perf_counter()
    old = signal.signal(signal.SIGALRM, _alarm) if timeout else None
    if timeout:
        signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        try:
            ref = _ort_run(case.model, feeds)
        except _Timeout:
            raise
        except Exception as e:
            out.detail = f"ORT: {type(e).__name__}: {str(e)[:200]}"
            return out
        why = similar(case.expected, ref, case.rtol, case.atol)
        if why:
            out.detail = f"ORT differs from expected: {why}"
            return out
        tensors = {
            n: v for n, v in feeds.items() if isinstance(v, np.ndarray) and not isinstance(v, (list, tuple))
        }
        try:
            result, out.fixed = _import_and_optimize(model, tensors)
            exported = result.to_onnx().SerializeToString()
        except FuserError as e:
            msg = str(e)
            out.status, out.detail, out.refusal = "refused", msg, refusal_kind(msg)
            if "\n" in msg:
                out.status, out.detail = "crash", "multi-line FuserError: " + msg
            return out
        try:
            got = _ort_run(exported, feeds)
        except _Timeout:
            raise
        except Exception as e:
            out.status, out.detail = (
                "wrong",
                f"exported model fails in ORT: {type(e).__name__}: {str(e)[:300]}",
            )
            return out
        why = similar(case.expected, got, case.rtol, case.atol)
        if why:
            out.status, out.detail = "wrong", why
            return out
        out.status = "pass"
        runtime = {n: v for n, v in tensors.items() if n not in out.fixed}
        if torch:
            out.torch, out.torch_detail = _backend_check(_run_torch, result.graph, runtime, case)
        if tvm:
            out.tvm, out.tvm_detail = _backend_check(_run_tvm, result.graph, runtime, case)
        return out
    except _Timeout:
        out.status, out.detail = "hang", f"over {timeout:.0f} s"
        return out
    except Exception as e:  # a crash: fuser raised something other than FuserError
        import traceback

        tb = traceback.extract_tb(e.__traceback__)
        where = next(
            (f"{Path(f.filename).name}:{f.lineno}" for f in reversed(tb) if "fuser" in f.filename), ""
        )
        out.status, out.detail = "crash", f"{type(e).__name__}: {str(e)[:200]} [{where}]"
        return out
    finally:
        if timeout:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        out.seconds = round(time.perf_counter() - t0, 3)


def _run_torch(graph, feeds: dict) -> list:
    from fuser.backends.torch import run_torch

    return run_torch(graph, feeds)


def _run_tvm(graph, feeds: dict) -> list:
    from fuser.backends.tvm import compile_graph

    return compile_graph(graph, "llvm")(**{v.name: feeds[v.name] for v in graph.inputs})


def _backend_check(run, graph, feeds: dict, case: Case) -> tuple[str, str]:
    from fuser.ir import FuserError

    try:
        got = run(graph, feeds)
    except FuserError as e:
        return "refused", str(e)
    except _Timeout:
        raise
    except Exception as e:
        return "crash", f"{type(e).__name__}: {str(e)[:200]}"
    half = any(getattr(e, "dtype", None) in (np.float16, "bfloat16") for e in case.expected)
    # torch computes half precision in another order than ONNX Runtime: a unit in the last place
    rtol, atol = (4e-3, 1e-3) if half else (1e-3, 1e-5)
    why = similar(case.expected, got, max(case.rtol, rtol), max(case.atol, atol))
    return ("wrong", why) if why else ("pass", "")


# ---- running many -------------------------------------------------------------------------
def _worker(args):
    case, torch, tvm, timeout = args
    return run_case(case, torch=torch, tvm=tvm, timeout=timeout)


def run_all(
    cases: list[Case],
    *,
    workers: int = 2,
    torch: bool = False,
    tvm: bool = False,
    timeout: float = 120.0,
    progress=None,
):
    """Outcomes of ``cases``, in order (one process per worker; a crash of a worker is a crash)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    jobs = [(c, torch, tvm, timeout) for c in cases]
    if workers <= 1:
        outcomes = []
        for j in jobs:
            outcomes.append(_worker(j))
            if progress:
                progress(outcomes[-1])
        return outcomes
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, maxtasksperchild=200) as pool:
        outcomes = []
        for o in pool.imap(_worker, jobs, chunksize=4):
            outcomes.append(o)
            if progress:
                progress(o)
    return outcomes


def summarize(outcomes: list[Outcome]) -> dict:
    counted = [o for o in outcomes if o.status != "not-reproducible"]
    status = collections.Counter(o.status for o in counted)
    refusals = collections.Counter(o.refusal for o in counted if o.status == "refused")
    torch = collections.Counter(o.torch for o in counted if o.status == "pass" and o.torch)
    tvm = collections.Counter(o.tvm for o in counted if o.status == "pass" and o.tvm)
    return {
        "cases": len(outcomes),
        "ort_reproducible": len(counted),
        "pass_with_input_values": sum(1 for o in counted if o.status == "pass" and o.fixed),
        **{k: status.get(k, 0) for k in ("pass", "refused", "wrong", "crash", "hang")},
        "refused_by_reason": dict(sorted(refusals.items())),
        "torch": dict(sorted(torch.items())),
        "tvm": dict(sorted(tvm.items())),
    }


def report(outcomes: list[Outcome], verbose: bool = False) -> str:
    s = summarize(outcomes)
    lines = [
        f"# fuser ONNX conformance (onnx {onnx.__version__}, "
        f"onnxruntime {__import__('onnxruntime').__version__})",
        f"cases {s['cases']}, ONNX Runtime reproduces {s['ort_reproducible']}",
        f"import -> optimize -> export: pass {s['pass']}, refused {s['refused']}, wrong {s['wrong']}, "
        f"crash {s['crash']}, hang {s['hang']}",
        f"  of the passes, {s['pass_with_input_values']} with the values of shape-setting inputs fixed "
        "(--input-value; the shape depends on them)",
        "refused by reason: " + ", ".join(f"{k} {v}" for k, v in s["refused_by_reason"].items()),
    ]
    if s["torch"]:
        lines.append("to_torch on the passing cases: " + ", ".join(f"{k} {v}" for k, v in s["torch"].items()))
    for status in ("wrong", "crash", "hang"):
        for o in outcomes:
            if o.status == status:
                lines.append(f"  {status:8} {o.name}: {o.detail}")
    for o in outcomes:
        if o.status == "refused":
            lines.append(f"  refused  {o.name} [{o.refusal}]: {o.detail}")
    for backend in ("torch", "tvm"):
        ops = collections.Counter(
            m.group(1)
            for o in outcomes
            if getattr(o, backend) == "refused"
            for m in [re.search(r"\((\w+)\): ", getattr(o, f"{backend}_detail"))]
            if m
        )
        if ops:
            counts = ", ".join(f"{op} {n}" for op, n in ops.most_common())
            lines.append(f"{backend} refusals by op: {counts}")
    if s["tvm"]:
        lines.append("TVM (llvm) on the passing cases: " + ", ".join(f"{k} {v}" for k, v in s["tvm"].items()))
    for o in outcomes:
        if o.torch in ("wrong", "crash") or (verbose and o.torch == "refused"):
            lines.append(f"  torch {o.torch:8} {o.name}: {o.torch_detail}")
        if o.tvm in ("wrong", "crash") or (verbose and o.tvm == "refused"):
            lines.append(f"  tvm {o.tvm:8} {o.name}: {o.tvm_detail}")
    if verbose:
        for o in outcomes:
            if o.status == "pass":
                fixed = f", values fixed: {', '.join(o.fixed)}" if o.fixed else ""
                lines.append(f"  pass     {o.name} ({o.seconds:.2f} s{fixed})")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sources", default=",".join(SOURCES))
    ap.add_argument("-k", dest="keyword", help="only cases whose name contains this (case-insensitive)")
    ap.add_argument("--sample", type=int, help="a seeded random sample of this many cases")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    ap.add_argument("--torch", action="store_true", help="also run to_torch on the passing cases")
    ap.add_argument("--tvm", action="store_true", help="also build and run the passing cases with TVM (llvm)")
    ap.add_argument(
        "--ops",
        help="only cases using one of these ops (comma list; 'tvm-fallback': those TVM's converters lower)",
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="list every refusal and pass")
    ap.add_argument("--out", help="also write the report here")
    args = ap.parse_args(argv)
    cases = collect(tuple(s.strip() for s in args.sources.split(",") if s.strip()))
    if args.keyword:
        cases = [c for c in cases if args.keyword.lower() in c.name.lower()]
    if args.ops:
        ops = set(args.ops.split(","))
        if "tvm-fallback" in ops:
            from fuser.backends.tvm.converters.onnx_fallback import FALLBACK_OPS

            ops |= set(FALLBACK_OPS)
        cases = [c for c in cases if ops & {n.op_type for n in onnx.load_from_string(c.model).graph.node}]
    if args.sample and args.sample < len(cases):
        cases = random.Random(args.seed).sample(cases, args.sample)
    t0 = time.perf_counter()
    done = [0]

    def progress(o):
        done[0] += 1
        if done[0] % 100 == 0:
            print(f"  {done[0]}/{len(cases)} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    outcomes = run_all(
        cases, workers=args.workers, torch=args.torch, tvm=args.tvm, timeout=args.timeout, progress=progress
    )
    text = report(outcomes, args.verbose) + f"\n# {time.perf_counter() - t0:.0f} s, {args.workers} workers"
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    s = summarize(outcomes)
    return 1 if s["wrong"] or s["crash"] or s["hang"] else 0


if __name__ == "__main__":
    sys.exit(main())
