"""Fuzzing fuser's ONNX import: seeded mutations of small real models through
``from_onnx`` -> ``optimize`` -> export, where the only acceptable outcomes are success and
a FuserError (one line). Anything else is a crash, reported by its signature (exception type
and the innermost fuser frame).

Seeds: the small ONNX-zoo graphs shipped with onnx (``light``: AlexNet, ZFNet-512, VGG-19,
SqueezeNet, Inception-v1) and the PaddleOCR direction classifier. Mutations, a few per mutant:
  bytes     flip bits, overwrite or insert random bytes, cut the file, repeat a chunk;
  protobuf  op types (standard, unknown, control flow), node inputs/outputs (dangling,
            swapped, emptied), attributes (type, value, name, removed), initializers (dims,
            data type, raw data cut or grown, external location), graph input types and dims
            (zero, negative, huge, symbolic), opset and IR versions, names (control
            characters, very long, duplicates), nodes removed, duplicated or reordered.

    python benchmarks/onnx_fuzz.py --count 6000             # the issue's measure (~10 min on 2 cores)
    python benchmarks/onnx_fuzz.py --count 300 --seed 1 -v   # show every crash
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import random
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
PADDLE_CLS = Path(__file__).resolve().parents[2] / "shared" / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
SEEDS = {
    "alexnet": (LIGHT / "light_bvlc_alexnet.onnx", None),
    "zfnet512": (LIGHT / "light_zfnet512.onnx", None),
    "vgg19": (LIGHT / "light_vgg19.onnx", None),
    "squeezenet": (LIGHT / "light_squeezenet.onnx", None),
    "inception_v1": (LIGHT / "light_inception_v1.onnx", None),
    "paddle_cls": (PADDLE_CLS, (1, 3, 48, 192)),
}
OP_CHOICES = ["Relu", "Conv", "Add", "Reshape", "Gemm", "TopK", "NonZero", "If", "Loop", "FancyOp",
              "SequenceEmpty", "Resize", "Concat", "Slice", "Einsum", "", "Constant", "MaxPool"]  # fmt: skip
WEIRD_NAMES = ["", "\x1b[31mred", "a\nb", "[bold]x", "x[", "n" * 5000, "\u202eevil", "dup", "0"]
ATTR_VALUES = [0, -1, 1, 7, 2**40, -(2**62), 0.5, float("nan"), float("inf"), "s", "CRD", [], [0], [1, 2, 3],
               [-5, 99], [1.5, 2.5], ["a", "b"]]  # fmt: skip


@dataclass
class Mutant:
    seed_name: str
    index: int
    steps: list
    data: bytes
    input_shapes: tuple | None


# ---- protobuf mutations ------------------------------------------------------------------
def _pick(rng: random.Random, seq):
    return seq[rng.randrange(len(seq))] if len(seq) else None


def _mutate_node(rng, m: onnx.ModelProto) -> str:
    g = m.graph
    n = _pick(rng, g.node)
    if n is None:
        return "no node"
    kind = rng.randrange(9)
    if kind == 0:
        n.op_type = rng.choice(OP_CHOICES)
        return f"op_type {n.op_type!r}"
    if kind == 1 and len(n.input):
        i = rng.randrange(len(n.input))
        n.input[i] = rng.choice(["", "missing_value", n.output[0] if n.output else "x", g.input[0].name])
        return f"input {i} -> {n.input[i]!r}"
    if kind == 2:
        n.input.append(rng.choice(["", g.input[0].name, "extra"]))
        return "extra input"
    if kind == 3 and len(n.output):
        n.output[0] = rng.choice(["", g.input[0].name, g.output[0].name, "fresh"])
        return f"output -> {n.output[0]!r}"
    if kind == 4:
        g.node.remove(n)
        return "node removed"
    if kind == 5:
        g.node.append(onnx.NodeProto(**{}))
        g.node[-1].CopyFrom(n)
        return "node duplicated"
    if kind == 6:
        nodes = list(g.node)
        rng.shuffle(nodes)
        del g.node[:]
        g.node.extend(nodes)
        return "nodes shuffled"
    if kind == 7:
        n.name = rng.choice(WEIRD_NAMES)
        return f"node name {n.name[:20]!r}"
    n.domain = rng.choice(["", "ai.onnx", "com.vendor", "ai.onnx.ml"])
    return f"domain {n.domain!r}"


def _mutate_attribute(rng, m: onnx.ModelProto) -> str:
    nodes = [n for n in m.graph.node if len(n.attribute)] or list(m.graph.node)
    n = _pick(rng, nodes)
    if n is None:
        return "no node"
    kind = rng.randrange(4)
    if kind == 0 or not len(n.attribute):
        name = rng.choice(["group", "kernel_shape", "pads", "axis", "mode", "bogus", "strides", "perm"])
        value = rng.choice(ATTR_VALUES)
        try:
            n.attribute.append(helper.make_attribute(name, value, attr_type=onnx.AttributeProto.INTS)
                               if value == [] else helper.make_attribute(name, value))  # fmt: skip
        except (TypeError, ValueError):
            return "attribute not made"
        return f"attribute {name}={value!r}"[:60]
    a = _pick(rng, n.attribute)
    if kind == 1:
        n.attribute.remove(a)
        return f"attribute {a.name} removed"
    if kind == 2:
        a.type = rng.randrange(0, 15)
        return f"attribute {a.name} type -> {a.type}"
    value = rng.choice(ATTR_VALUES)
    try:
        new = helper.make_attribute(a.name, value) if value != [] else None
    except (TypeError, ValueError):
        new = None
    if new is None:
        a.ClearField("ints")
        return f"attribute {a.name} emptied"
    a.CopyFrom(new)
    return f"attribute {a.name}={value!r}"[:60]


def _mutate_initializer(rng, m: onnx.ModelProto) -> str:
    t = _pick(rng, m.graph.initializer)
    if t is None:
        return "no initializer"
    kind = rng.randrange(7)
    if kind == 0 and len(t.dims):
        i = rng.randrange(len(t.dims))
        t.dims[i] = rng.choice([0, 1, t.dims[i] + 1, -3, 2**40])
        return f"initializer {t.name} dim {i} -> {t.dims[i]}"
    if kind == 1:
        t.data_type = rng.choice([0, 2, 7, 8, 11, 16, 17, 23, 99])
        return f"initializer {t.name} data_type -> {t.data_type}"
    if kind == 2 and t.raw_data:
        t.raw_data = t.raw_data[: rng.randrange(len(t.raw_data))]
        return f"initializer {t.name} raw_data cut"
    if kind == 3:
        t.raw_data = t.raw_data + bytes(rng.randrange(1, 9))
        return f"initializer {t.name} raw_data grown"
    if kind == 4:
        t.data_location = TensorProto.EXTERNAL
        t.external_data.add(key="location", value=rng.choice(["w.bin", "../../etc/passwd", "", "/dev/zero"]))
        return f"initializer {t.name} external"
    if kind == 5:
        t.name = rng.choice(WEIRD_NAMES + [m.graph.input[0].name])
        return f"initializer renamed {t.name[:20]!r}"
    del t.dims[:]
    t.dims.extend(rng.choice([[], [1], [2**31, 2**31], [3, 0, 5]]))
    return f"initializer {t.name} dims -> {list(t.dims)}"


def _mutate_graph_io(rng, m: onnx.ModelProto) -> str:
    g = m.graph
    vi = _pick(rng, list(g.input) + list(g.output))
    kind = rng.randrange(6)
    tt = vi.type.tensor_type
    if kind == 0:
        tt.elem_type = rng.choice([0, 2, 6, 7, 8, 9, 10, 11, 16, 99])
        return f"{vi.name} elem_type -> {tt.elem_type}"
    if kind == 1 and len(tt.shape.dim):
        d = _pick(rng, tt.shape.dim)
        choice = rng.choice([0, -1, 2**40, "N", None])
        if choice is None:
            d.Clear()
        elif isinstance(choice, str):
            d.dim_param = choice
        else:
            d.dim_value = choice
        return f"{vi.name} dim -> {choice}"
    if kind == 2:
        tt.ClearField("shape")
        return f"{vi.name} shape removed"
    if kind == 3:
        vi.name = rng.choice(WEIRD_NAMES + ["nonexistent"])
        return f"io renamed {vi.name[:20]!r}"
    if kind == 4:
        vi.type.Clear()
        vi.type.sequence_type.elem_type.tensor_type.elem_type = 1
        return f"{vi.name} made a sequence"
    g.output.append(onnx.ValueInfoProto())
    g.output[-1].CopyFrom(g.input[0])
    return "input listed as output"


def _mutate_model(rng, m: onnx.ModelProto) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        m.opset_import[0].version = rng.choice([0, 1, 6, 9, 13, 21, 25, 99, 2**40])
        return f"opset -> {m.opset_import[0].version}"
    if kind == 1:
        m.ir_version = rng.choice([0, 1, 3, 7, 11, 99])
        return f"ir_version -> {m.ir_version}"
    m.opset_import.add(domain="com.vendor", version=1)
    return "extra opset import"


PROTO_MUTATIONS = [_mutate_node, _mutate_attribute, _mutate_initializer, _mutate_graph_io, _mutate_model]


# ---- byte mutations ------------------------------------------------------------------------
def _mutate_bytes(rng, data: bytearray) -> str:
    kind = rng.randrange(5)
    if not data:
        return "empty"
    if kind == 0:
        for _ in range(rng.randrange(1, 8)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        return "bits flipped"
    if kind == 1:
        i = rng.randrange(len(data))
        data[i : i + 4] = bytes(rng.randrange(256) for _ in range(4))
        return f"bytes overwritten at {i}"
    if kind == 2:
        i = rng.randrange(len(data))
        data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        return f"bytes inserted at {i}"
    if kind == 3:
        cut = rng.randrange(len(data))
        del data[cut:]
        return f"cut at {cut}"
    i = rng.randrange(len(data))
    chunk = data[i : i + rng.randrange(1, 64)]
    data[i:i] = chunk
    return f"chunk repeated at {i}"


def mutants(count: int, seed: int = 0, seeds=None):
    """``count`` mutants, the same ones for the same arguments."""
    rng = random.Random(seed)
    names = sorted(seeds or SEEDS)
    originals = {name: SEEDS[name][0].read_bytes() for name in names if SEEDS[name][0].is_file()}
    names = [n for n in names if n in originals]
    for index in range(count):
        name = names[index % len(names)]
        steps = []
        if rng.random() < 0.3:
            data = bytearray(originals[name])
            for _ in range(rng.randrange(1, 4)):
                steps.append(_mutate_bytes(rng, data))
            data = bytes(data)
        else:
            m = onnx.load_model_from_string(originals[name])
            for _ in range(rng.randrange(1, 4)):
                steps.append(rng.choice(PROTO_MUTATIONS)(rng, m))
            data = m.SerializeToString()
        yield Mutant(name, index, steps, data, SEEDS[name][1])


# ---- running -------------------------------------------------------------------------------
class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def signature(e: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "/fuser/" in f.filename]
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "outside fuser"
    return f"{type(e).__name__} at {where}"


def run_one(mutant: Mutant, folder: Path, timeout: float = 60.0, ort: bool = False) -> tuple[str, str]:
    """('ok' | 'refused' | 'crash' | 'hang', detail) for one mutant; with ``ort``, an accepted
    mutant that ONNX Runtime loads but whose export it refuses is 'ort-rejects' (a mutant that
    ONNX Runtime refuses itself, e.g. an LRN with a negative alpha, which ONNX allows and ORT's
    kernel does not, may stay refused)."""
    import fuser
    from fuser.ir import FuserError
    from fuser.serde.onnx import to_onnx

    path = folder / f"{mutant.seed_name}_{mutant.index}.onnx"
    path.write_bytes(mutant.data)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with np.errstate(all="ignore"):
            graph = fuser.from_onnx(path, mutant.input_shapes)
            result = fuser.optimize(graph)
            exported = to_onnx(result.graph).SerializeToString()
        if ort:
            import onnxruntime

            def loads(data: bytes) -> str:
                try:
                    onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
                except Exception as e:
                    return str(e).splitlines()[0][:200] or type(e).__name__
                return ""

            why = loads(exported)
            if why and not loads(mutant.data):  # the mutant itself loads: fuser broke it
                return "ort-rejects", why
        return "ok", ""
    except FuserError as e:  # a name with a newline may span lines here; the CLI shows it escaped
        return "refused", str(e)
    except _Timeout:
        return "hang", f"over {timeout:.0f} s"
    except Exception as e:
        return "crash", signature(e) + f": {str(e)[:120]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        path.unlink(missing_ok=True)


def _worker(args):
    mutant, timeout, ort = args
    with tempfile.TemporaryDirectory() as d:
        status, detail = run_one(mutant, Path(d), timeout, ort)
    return mutant.seed_name, mutant.index, mutant.steps, status, detail


def fuzz(count: int, seed: int = 0, workers: int = 2, timeout: float = 60.0, seeds=None, ort: bool = False):
    jobs = [(m, timeout, ort) for m in mutants(count, seed, seeds)]
    if workers <= 1:
        return [_worker(j) for j in jobs]
    with mp.get_context("spawn").Pool(workers, maxtasksperchild=500) as pool:
        return list(pool.imap(_worker, jobs, chunksize=8))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--ort", action="store_true", help="also load each accepted export in ONNX Runtime")
    ap.add_argument("-v", "--verbose", action="store_true", help="list every crash and hang")
    ap.add_argument("--out", help="also write the report here")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    results = fuzz(args.count, args.seed, args.workers, args.timeout, ort=args.ort)
    status = collections.Counter(r[3] for r in results)
    crashes = collections.Counter(r[4].split(": ")[0] for r in results if r[3] == "crash")
    kinds = ("ok", "refused", "crash", "hang") + (("ort-rejects",) if args.ort else ())
    lines = [
        f"# fuser ONNX fuzz: {args.count} mutants of {', '.join(sorted(SEEDS))}, seed {args.seed}, "
        f"{time.perf_counter() - t0:.0f} s",
        ", ".join(f"{k} {status.get(k, 0)}" for k in kinds),
        f"crash signatures: {len(crashes)}",
    ]
    lines += [f"  {n:5d}  {sig}" for sig, n in crashes.most_common()]
    if args.verbose:
        lines += [
            f"  {st} {name}#{index} {steps}: {detail}"
            for name, index, steps, st, detail in results
            if st in ("crash", "hang", "ort-rejects")
        ]
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 1 if status.get("crash") or status.get("hang") or status.get("ort-rejects") else 0


if __name__ == "__main__":
    sys.exit(main())
