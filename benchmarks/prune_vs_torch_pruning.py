"""fuser's structured pruning vs Torch-Pruning (DepGraph, ``pip install torch-pruning``).

Same models, ratios and criterion (L2 magnitude, group mean, mean-normalized, per-group
ratio, the classifier ignored) on both sides.

1. Zoo models (and the ONNX-only PaddleOCR models, which Torch-Pruning cannot read):
     ok       the pruner finished, the pruned model runs (fuser: in ONNX Runtime; TP: torch
              eager) and keeps its output shape;
     exact    the coupled-consistency check: the channels a per-group ratio removes (groups
              from fuser's analysis, chosen at random) get every weight slice zeroed, so
              they contribute nothing and any correct L2 pruner must remove exactly them
              and leave the outputs unchanged: max |Δy| / max(1, max |y|) <= 1e-4 (absolute
              below 1: the OCR detector's sigmoid outputs are ~1e-3 on noise). Models with
              LayerNorm over channels (ViT, ConvNeXt) cannot be checked so ("-"): removing
              a zero channel changes the LayerNorm statistics;
     MACs / params of the pruned model, both counted by fuser.analysis (torchvision's
              convention) on the ONNX graph of the result; prune time excludes capture.
2. Accuracy on a real small task: a CNN trained on scikit-learn's bundled digits (8x8,
   10 classes, 1437 train / 360 test), pruned 50%, test accuracy with no fine-tuning and
   after one epoch of SGD (BatchNorm statistics frozen on both sides), for fuser (l2, the
   data-free obs, taylor on 256 training samples) and Torch-Pruning (l2, taylor on the same).
3. ONNX Runtime latency of ResNet-50 (224x224, BN folded) pruned at 0.5 vs the original.

    python benchmarks/prune_vs_torch_pruning.py --quick      # ~2 min subset
    python benchmarks/prune_vs_torch_pruning.py > benchmarks/results/prune_vs_torch_pruning.txt
                                                             # everything (tens of minutes)
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

import fuser
from fuser import prune

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "models"
PADDLE = {
    "ch_PP-OCRv4_det_infer.onnx": (1, 3, 640, 640),
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": (1, 3, 48, 192),
}
console = Console(width=150)  # the tables (stdout: redirect it to keep the results)
progress = Console(stderr=True)  # per-model progress lines


def ort_session(model_proto, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return ort.InferenceSession(model_proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run_ort(graph, x: np.ndarray) -> np.ndarray:
    graph = fuser.to_graph(graph)
    return ort_session(fuser.to_onnx(graph)).run(None, {graph.inputs[0].name: x})[0]


def exact_verdict(got, want) -> str:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return "shape"
    err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1.0))
    return "yes" if err <= 1e-4 else f"NO ({err:.1e})"


def normalizes_channels(graph) -> bool:
    """LayerNorm over channels: zero channels change its statistics (no exact check)."""
    return "LayerNormalization" in graph.op_counts()


FAILURES: list[str] = []  # full messages, printed under the table


def failed(where: str, e: BaseException) -> str:
    """Record a failure; the table cell names the exception and points to the note."""
    FAILURES.append(f"[{len(FAILURES) + 1}] {where}: {type(e).__name__}: " + " ".join(str(e).split())[:160])
    return f"fails [{len(FAILURES)}] {type(e).__name__}"


# ---- coupled-consistency check -----------------------------------------------------------
def zero_plan(graph, ratio: float, seed: int = 0):
    """The analysis of ``graph`` and, per member constant name, the zero mask per axis."""
    from fuser.pruning import analyze_dependencies
    from fuser.pruning.pruner import materialize_weight_views, random_channels

    graph = graph.copy()
    materialize_weight_views(graph)
    analysis = analyze_dependencies(graph)
    zero = random_channels(analysis, ratio, seed)
    plan = []
    for m in analysis.members:
        if m.role != "stat":
            plan.append((m.value, m.axis, np.isin(analysis.root_of[m.ids], list(zero))))
    return graph, plan


def zero_arrays(plan) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for v, axis, hit in plan:
        a = arrays.setdefault(v.name, v.const.copy())
        index = [slice(None)] * a.ndim
        index[axis] = hit
        a[tuple(index)] = 0
    return arrays


def fuser_exact(graph, ratio: float) -> str:
    if normalizes_channels(graph):
        return "-"
    graph, plan = zero_plan(graph, ratio)
    arrays = zero_arrays(plan)
    for v, _, _ in plan:
        v.const = arrays[v.name]
    x = np.random.default_rng(0).standard_normal(graph.inputs[0].shape).astype(np.float32)
    want = run_ort(graph, x)
    return exact_verdict(run_ort(prune(graph, ratio, "l2"), x), want)


def tp_exact(name: str, graph, ratio: float, shape) -> str:
    """Zero the same channels in the torch module (weights matched by name), prune with TP."""
    from fuser import models

    if normalizes_channels(graph):
        return "-"
    _, plan = zero_plan(graph, ratio)
    arrays = zero_arrays(plan)
    module = models.create(name, seed=0)
    state = module.state_dict()
    if not set(arrays) <= set(state):
        return "-"  # weights the exporter renamed (MatMul): cannot map
    with torch.no_grad():
        for k, a in arrays.items():
            state[k].copy_(torch.from_numpy(a))
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    with torch.no_grad():
        want = module(x).numpy()
    try:
        tp_prune(module, shape, ratio)
        with torch.no_grad():
            got = module(x).numpy()
    except Exception as e:
        return failed(f"Torch-Pruning on {name} (zeroed) at {ratio}", e)
    return exact_verdict(got, want)


def torch_cost(module, shape) -> tuple[int, int]:
    """(MACs, params) of a torch module by forward hooks on Conv/Linear, with fuser.analysis's
    convention (numel(Y)·C_in/group·k for convs, in·out per row for linears; fuser also
    counts attention MatMuls, which hooks cannot see)."""
    macs = 0

    def hook(m, inputs, output):
        nonlocal macs
        if isinstance(m, torch.nn.modules.conv._ConvNd):
            macs += output.numel() * (m.in_channels // m.groups) * int(np.prod(m.kernel_size))
        else:
            macs += output.numel() * m.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in module.modules()
        if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear))
    ]
    with torch.no_grad():
        module(torch.zeros(shape))
    for h in handles:
        h.remove()
    return macs, sum(p.numel() for p in module.parameters())


# ---- the two pruners ----------------------------------------------------------------------
def classifier_of(module):
    """The layer producing the model's output (what both sides leave unpruned)."""
    last = None
    for m in module.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            last = m
    return last


def tp_prune(module, shape, ratio: float, importance=None, data=None):
    import torch_pruning as tp

    x = torch.zeros(shape)
    kw = {}
    if hasattr(module, "blocks") and hasattr(module.blocks[0], "attn"):  # the documented ViT recipe
        kw["num_heads"] = {b.attn.qkv: b.attn.num_heads for b in module.blocks}
    importance = importance or tp.importance.MagnitudeImportance(
        p=2, group_reduction="mean", normalizer="mean"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MagnitudePruner(
            module,
            x,
            importance=importance,
            pruning_ratio=ratio,
            ignored_layers=[classifier_of(module)],
            **kw,
        )
        if data is not None:  # Taylor: gradients first
            data(module)
        pruner.step()
    return module


CAPTURED: dict = {}  # zoo name -> graph at its default input shape


def compare_zoo(names, ratios, console_table: Table) -> None:
    import fuser
    from fuser import models
    from fuser.analysis import analyze

    for name in names:
        shape = tuple(models.input_shape(name))
        module = models.create(name, seed=0)
        t0 = time.perf_counter()
        graph = CAPTURED[name] = fuser.from_torch(module, (torch.zeros(shape),))
        capture = time.perf_counter() - t0
        base = analyze(graph)
        for ratio in ratios:
            row = [name, f"{ratio:g}", f"{base['macs'] / 1e9:.3f} / {base['params'] / 1e6:.2f}"]
            # fuser
            try:
                t0 = time.perf_counter()
                pruned = prune(graph, ratio, "l2")
                t_prune = time.perf_counter() - t0
                x = np.zeros(shape, np.float32)
                ok = run_ort(pruned, x).shape == tuple(graph.outputs[0].shape)
                row += [
                    "ok" if ok else "shape",
                    fuser_exact(graph, ratio),
                    f"{pruned.report.macs_after / 1e9:.3f} / {pruned.report.params_after / 1e6:.2f}",
                    f"{t_prune:.1f}",
                ]
            except Exception as e:
                row += [failed(f"fuser on {name} at {ratio}", e), "-", "-", "-"]
            # Torch-Pruning
            tp_model = models.create(name, seed=0)
            try:
                t0 = time.perf_counter()
                tp_prune(tp_model, shape, ratio)
                t_tp = time.perf_counter() - t0
                with torch.no_grad():
                    y = tp_model(torch.zeros(shape))
                want = tuple(graph.outputs[0].shape)
                ok = tuple(y.shape) == want
                macs, params = torch_cost(tp_model, shape)
                row += [
                    "ok" if ok else "shape",
                    tp_exact(name, graph, ratio, shape),
                    f"{macs / 1e9:.3f} / {params / 1e6:.2f}",
                    f"{t_tp:.1f}",
                ]
            except Exception as e:
                row += [failed(f"Torch-Pruning on {name} at {ratio}", e), "-", "-", "-"]
            console_table.add_row(*row)
            progress.print(f"  {name} {ratio}: done (capture {capture:.0f} s)", style="dim")


def compare_onnx(table: Table, ratios) -> None:
    import fuser

    for file, shape in PADDLE.items():
        path = SHARED / file
        if not path.exists():
            continue
        graph = fuser.from_onnx(path, {"x": shape})
        for ratio in ratios:
            t0 = time.perf_counter()
            pruned = prune(graph, ratio, "l2")
            dt = time.perf_counter() - t0
            x = np.zeros(shape, np.float32)
            ok = run_ort(pruned, x).shape == tuple(graph.outputs[0].shape)
            r = pruned.report
            table.add_row(
                Path(file).stem,
                f"{ratio:g}",
                f"{r.macs_before / 1e9:.3f} / {r.params_before / 1e6:.2f}",
                "ok" if ok else "shape",
                fuser_exact(graph, ratio),
                f"{r.macs_after / 1e9:.3f} / {r.params_after / 1e6:.2f}",
                f"{dt:.1f}",
                "n/a (ONNX)",
                "-",
                "-",
                "-",
            )


# ---- digits -------------------------------------------------------------------------------
class DigitsNet(torch.nn.Module):
    def __init__(self):
        super().__init__()

        def block(c_in, c_out):
            return [
                torch.nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                torch.nn.BatchNorm2d(c_out),
                torch.nn.ReLU(),
            ]

        self.features = torch.nn.Sequential(
            *block(1, 32), *block(32, 64), torch.nn.MaxPool2d(2), *block(64, 64), *block(64, 64)
        )
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x).mean((2, 3), keepdim=True), 1))


BATCH = 32
# Fine-tuning: SGD, momentum 0.9, one epoch. 0.01 (the training rate) makes the first steps
# on a freshly pruned net diverge (compensated or Taylor-pruned nets most); 0.003 does not.
FINETUNE_LR = 0.003


def digits_data():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0 - 0.5).astype(np.float32)[:, None]
    return train_test_split(x, d.target, test_size=360, random_state=0, stratify=d.target)


def train(module, x, y, epochs: int, lr: float = 0.05, seed: int = 0, freeze_bn: bool = False):
    """SGD with momentum, batches of BATCH (the last partial batch dropped: fuser's graphs
    have a static batch). ``freeze_bn``: BatchNorm stays in eval mode, as in fuser's
    module (its BN runs on the running statistics), so that fine-tuning compares alike."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(module.parameters(), lr=lr, momentum=0.9)
    module.train()
    for m in module.modules():
        if freeze_bn and isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g).numpy()
        for s in range(0, len(x) - BATCH + 1, BATCH):
            idx = order[s : s + BATCH]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(
                module(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]).long()
            )
            loss.backward()
            opt.step()
    module.eval()
    return module


def accuracy_torch(module, x, y) -> float:
    with torch.no_grad():
        pred = np.concatenate(
            [module(torch.from_numpy(x[s : s + BATCH])).argmax(1).numpy() for s in range(0, len(x), BATCH)]
        )
    return float((pred == y).mean())


def accuracy_graph(graph, x, y) -> float:
    """ONNX Runtime on the graph's static batch (the tail padded, then dropped)."""
    graph = fuser.to_graph(graph)
    sess = ort_session(fuser.to_onnx(graph))
    preds = []
    for s in range(0, len(x), BATCH):
        xb = x[s : s + BATCH]
        pad = BATCH - len(xb)
        if pad:
            xb = np.concatenate([xb, np.repeat(xb[-1:], pad, 0)])
        preds.append(sess.run(None, {graph.inputs[0].name: xb})[0].argmax(1)[: BATCH - pad])
    return float((np.concatenate(preds) == y).mean())


def finetune_graph(graph, x, y):
    """One epoch on the pruned graph's torch module; the weights go back into a copy."""
    from fuser.pruning import load_weights

    graph = fuser.to_graph(graph)
    module = train(fuser.to_torch(graph), x, y, epochs=1, lr=FINETUNE_LR)
    tuned = graph.copy()
    load_weights(tuned, module)
    return tuned


def digits(epochs: int, table: Table) -> None:
    import torch_pruning as tp

    import fuser

    x_tr, x_te, y_tr, y_te = digits_data()
    torch.manual_seed(0)
    base = train(DigitsNet(), x_tr, y_tr, epochs=epochs)
    acc0 = accuracy_torch(base, x_te, y_te)
    graph = fuser.from_torch(base, (torch.from_numpy(x_tr[:BATCH]),))
    macs0 = fuser.info(graph)["macs"]

    def fuser_row(label, criterion, **kw):
        t0 = time.perf_counter()
        pruned = prune(graph, 0.5, criterion, **kw)
        dt = time.perf_counter() - t0
        no_ft = accuracy_graph(pruned, x_te, y_te)
        tuned = finetune_graph(pruned, x_tr, y_tr)
        table.add_row(
            label,
            f"{acc0:.3f}",
            f"{no_ft:.3f}",
            f"{accuracy_graph(tuned, x_te, y_te):.3f}",
            f"{macs0 / 1e6:.2f} -> {pruned.report.macs_after / 1e6:.2f}",
            f"{pruned.report.params_after:,}",
            f"{dt:.2f}",
        )

    fuser_row("fuser l2", "l2")
    fuser_row("fuser obs (data-free)", "obs")
    fuser_row("fuser taylor (train data)", "taylor", data=(x_tr[:256], y_tr[:256]))

    def tp_row(label, importance, with_grad=False):
        module = copy.deepcopy(base)

        def gradients(m):  # TP's Taylor reads .grad: the same 256 samples as fuser's
            m.zero_grad()
            for s in range(0, 256, BATCH):
                loss = torch.nn.functional.cross_entropy(
                    m(torch.from_numpy(x_tr[s : s + BATCH])), torch.from_numpy(y_tr[s : s + BATCH]).long()
                )
                loss.backward()

        t0 = time.perf_counter()
        tp_prune(module, (BATCH, 1, 8, 8), 0.5, importance, gradients if with_grad else None)
        dt = time.perf_counter() - t0
        no_ft = accuracy_torch(module, x_te, y_te)
        macs, params = torch_cost(module, (BATCH, 1, 8, 8))
        train(module, x_tr, y_tr, epochs=1, lr=FINETUNE_LR, freeze_bn=True)
        table.add_row(
            label,
            f"{acc0:.3f}",
            f"{no_ft:.3f}",
            f"{accuracy_torch(module, x_te, y_te):.3f}",
            f"{macs0 / 1e6:.2f} -> {macs / 1e6:.2f}",
            f"{params:,}",
            f"{dt:.2f}",
        )

    tp_row(
        "Torch-Pruning l2", tp.importance.MagnitudeImportance(p=2, group_reduction="mean", normalizer="mean")
    )
    tp_row("Torch-Pruning taylor", tp.importance.TaylorImportance(), with_grad=True)


# ---- latency -----------------------------------------------------------------------------
def latency(name: str, runs: int, table: Table) -> None:
    import fuser

    graph = fuser.optimize(CAPTURED.get(name) or f"zoo:{name}").graph
    pruned = prune(graph, 0.5, "l2").graph
    x = np.random.default_rng(0).standard_normal(graph.inputs[0].shape).astype(np.float32)
    sessions = {
        "original": ort_session(fuser.to_onnx(graph), threads=2),
        "pruned 0.5": ort_session(fuser.to_onnx(pruned), threads=2),
    }
    feeds = {graph.inputs[0].name: x}
    times = {k: [] for k in sessions}
    for s in sessions.values():
        s.run(None, feeds)
    for _ in range(runs):  # interleaved, so background load hits both alike
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feeds)
            times[k].append(time.perf_counter() - t0)
    base = np.median(times["original"])
    for k, g in (("original", graph), ("pruned 0.5", pruned)):
        med = np.median(times[k])
        table.add_row(name, k, f"{fuser.info(g)['macs'] / 1e9:.2f}", f"{med * 1e3:.1f}", f"{base / med:.2f}x")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two models at 0.5, ResNet-18 latency")
    ap.add_argument("--skip", default="", help="comma-separated sections to leave out: zoo,digits,latency")
    ap.add_argument("--models", help="comma-separated zoo names (default: all, or the quick set)")
    args = ap.parse_args(argv)

    from fuser import models

    torch.set_num_threads(2)
    ratios = [0.5] if args.quick else [0.3, 0.5]
    names = (
        args.models.split(",")
        if args.models
        else ["resnet18", "shufflenet_v2_x1_0"]
        if args.quick
        else models.names()
    )
    from importlib.metadata import version  # the package's own __version__ lags (1.6.0 in 1.6.1)

    console.print(
        f"fuser vs Torch-Pruning {version('torch-pruning')} "
        f"(torch {torch.__version__}); criterion l2, per-group ratio, classifier ignored"
    )
    skip = set(filter(None, args.skip.split(",")))
    t0 = time.perf_counter()
    if "zoo" not in skip:
        t = Table(
            title="1. which models each prunes (GMACs / M params; fuser: fuser.analysis, "
            "TP: Conv/Linear hooks, same convention)",
            title_justify="left",
        )
        for col in (
            "model",
            "ratio",
            "original",
            "fuser",
            "exact",
            "pruned",
            "s",
            "Torch-Pruning",
            "exact",
            "pruned",
            "s",
        ):
            t.add_column(col)
        compare_zoo(names, ratios, t)
        if not args.quick:
            compare_onnx(t, ratios)
        console.print(t)
        for line in FAILURES:
            console.print(line, highlight=False)
    if "digits" not in skip:
        d = Table(title="2. digits (sklearn), CNN pruned 50%: test accuracy", title_justify="left")
        for col in ("method", "trained", "pruned", "+1 epoch", "MACs M", "params", "prune s"):
            d.add_column(col)
        digits(epochs=4 if args.quick else 8, table=d)
        console.print(d)
    if "latency" not in skip:
        lat = Table(title="3. ONNX Runtime latency (2 threads, batch 1, BN folded)", title_justify="left")
        for col in ("model", "variant", "GMACs", "median ms", "speed-up"):
            lat.add_column(col)
        latency("resnet18" if args.quick else "resnet50", 10 if args.quick else 40, lat)
        console.print(lat)
    console.print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
