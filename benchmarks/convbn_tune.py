"""ConvBN Tune mode vs Eval / Deploy mode / torch.compile: one fine-tuning step on CPU.

For each model a fresh subprocess builds one copy of the zoo model per configuration
(``fuser.models.create``, same seed), puts it in training mode with every BatchNorm in
eval mode (transfer learning: frozen statistics, all parameters trainable), converts it,
and runs SGD steps (forward, cross-entropy, backward, SGD step with momentum) on the same
random fp32 batch.

Configurations
  eval     the model as is
  tune     fuser.convbn.tune_mode(model)
  deploy   fuser.convbn.convbn(model, "deploy") (BN folded once; BN parameters gone)
  compile  torch.compile(model) with torch._inductor.config.efficient_conv_bn_eval_fx_passes
           (pairs = Inductor's efficient_conv_bn_eval counter; compile caches are turned
           off, so warm-up includes the full compile)

Measurements, after one warm-up step per configuration
  step     median wall time of --steps steps per configuration (and their median process
           CPU time). The configurations' steps are interleaved round-robin, rotating the
           order each round, so that load from other processes hits them alike.
  saved    bytes autograd saves for backward during one forward pass, counted with
           torch.autograd.graph.saved_tensors_hooks: each packed tensor's storage is
           counted once (deduplicated by storage pointer, at its full storage size);
           storages of the model's parameters and buffers are not counted. That is the
           activation memory held from forward to backward, including small derived
           tensors (e.g. tune mode's folded weights W', one per conv).
  saving   for tune: the ConvBNSummary estimate of eval's saved bytes minus tune's (from the
           shapes at this batch) beside the measured difference; the TuneModeWarning it gives
           at batches where tune mode saves nothing is printed under the table
  peak     peak resident memory of one more step above the resident memory just before
           it: VmHWM (reset by writing 5 to /proc/self/clear_refs) minus VmRSS, with all
           gradients freed first, so the baseline is models + optimizer state + batch.
           Before these steps glibc is switched (mallopt M_MMAP_THRESHOLD = 64 KiB, then
           malloc_trim) to mmap every block >= 64 KiB, so freed tensors go back to the
           OS at once and RSS follows the live tensors. Timing runs before that switch.
           (Without a writable clear_refs: ru_maxrss, an upper bound.)

    python benchmarks/convbn_tune.py                       # resnet50 mobilenet_v2 efficientnet_b0
    python benchmarks/convbn_tune.py --quick               # CI smoke: batch 2, 1 step, no compile
    python benchmarks/convbn_tune.py --models resnet50 --configs eval,tune --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings

MODELS = ["resnet50", "mobilenet_v2", "efficientnet_b0"]
CONFIGS = ["eval", "tune", "deploy", "compile"]
TARGET_MODEL, TARGET_SAVED_REDUCTION = "resnet50", 0.40
MiB = 2**20


# ---- worker: all configurations of one model, in this process --------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _mmap_big_blocks() -> bool:
    """glibc: serve allocations >= 64 KiB with mmap (returned to the OS on free)."""
    try:
        return ctypes.CDLL("libc.so.6").mallopt(-3, 65536) == 1  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def _trim_heap() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class Run:
    """One configuration: the converted model, its optimizer and its measurements."""

    def __init__(self, name: str, config: str, x, target):
        import torch
        from torch import nn

        from fuser import models
        from fuser.torchtools.convbn import TuneModeWarning, convbn

        self.config, self.x, self.target, self.info = config, x, target, {}
        model = models.create(name, seed=0)
        if config == "compile":
            import torch._functorch.config as functorch_config
            import torch._inductor.config as inductor_config

            inductor_config.efficient_conv_bn_eval_fx_passes = True
            # no compile caches: a cache hit skips the passes (pairs would read 0) and the compile time
            inductor_config.fx_graph_cache = False
            functorch_config.enable_autograd_cache = False
            self.net = torch.compile(model)
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", TuneModeWarning)
                self.net = convbn(model, config, example_inputs=x if config == "tune" else None)
            self.info["pairs"] = self.net.fuser_convbn_pairs
            if config == "tune":  # the summary's estimate of eval's saved bytes minus tune's
                self.info["estimated_saving"] = self.net.fuser_convbn_summary.saved_bytes()
                self.info["warning"] = " ".join(
                    str(w.message) for w in caught if w.category is TuneModeWarning
                )
        self.net.train()
        for m in self.net.modules():  # fine-tuning: BN statistics frozen, all else training
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        params = [p for p in self.net.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def loss(self):
        import torch.nn.functional as F

        return F.cross_entropy(self.net(self.x), self.target)

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.loss().backward()
        self.opt.step()

    def timed_step(self) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        self.step()
        self.wall.append(time.perf_counter() - t0)
        self.cpu.append(time.process_time() - c0)

    def saved_bytes(self) -> tuple[int, int]:
        import torch

        state = {
            t.untyped_storage().data_ptr() for t in itertools.chain(self.net.parameters(), self.net.buffers())
        }
        saved: dict = {}

        def pack(t):
            try:
                storage = t.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
            except (RuntimeError, NotImplementedError):  # opaque tensors without a storage
                key, nbytes = ("id", id(t)), t.numel() * t.element_size()
            if key not in state:
                saved[key] = max(saved.get(key, 0), nbytes)
            return t

        self.opt.zero_grad(set_to_none=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = self.loss()
        loss.backward()
        self.opt.step()
        return sum(saved.values()), len(saved)

    def peak_bytes(self) -> tuple[int, str]:
        before = _status_kib("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.step()
            return (_status_kib("VmHWM") - before) * 1024, "VmHWM-VmRSS"
        except OSError:
            self.step()
            return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024, "ru_maxrss-VmRSS"


def worker(name: str, configs: list[str], batch: int, size: int, steps: int, threads: int = 0) -> list[dict]:
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    x, target = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
    runs = []
    for config in configs:
        run = Run(name, config, x, target)
        t0 = time.perf_counter()
        run.step()  # warm-up (compiles for "compile")
        run.info["warmup_s"] = time.perf_counter() - t0
        if config == "compile":
            from torch._dynamo.utils import counters

            run.info["pairs"] = counters["inductor"]["efficient_conv_bn_eval"]
        runs.append(run)
    for r in range(steps):  # interleaved, rotating order
        for run in runs[r % len(runs) :] + runs[: r % len(runs)]:
            run.timed_step()
    for run in runs:
        run.info["saved_bytes"], run.info["saved_tensors"] = run.saved_bytes()
    tuned = _mmap_big_blocks()
    for run in runs:
        for other in runs:
            other.opt.zero_grad(set_to_none=True)
        _trim_heap()
        run.info["peak_bytes"], method = run.peak_bytes()
        run.info["peak_method"] = method + (", mmap >= 64 KiB" if tuned else ", allocator not tuned")
    return [
        {
            "model": name,
            "config": run.config,
            **run.info,
            "step_s": statistics.median(run.wall),
            "step_cpu_s": statistics.median(run.cpu),
            "step_all_s": run.wall,
        }
        for run in runs
    ]


# ---- driver ------------------------------------------------------------------------------------


def run_model(name: str, configs: list[str], args) -> list[dict]:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        name,
        "--configs",
        ",".join(configs),
        "--batch",
        str(args.batch),
        "--size",
        str(args.size),
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
    ]
    failed = lambda why: [{"model": name, "config": c, "error": why} for c in configs]  # noqa: E731
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return failed(f"timed out after {args.timeout}s")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return failed((tail[-1] if tail else f"exit code {proc.returncode}")[:300])
    return json.loads(lines[-1][len("RESULT ") :])


def _ratio(row: dict, ref: dict | None, key: str) -> str:
    if ref is None or key not in row or not ref.get(key):
        return "-"
    return f"{row[key] / ref[key]:.2f}x"


def _saving(row: dict, ref: dict | None) -> str:
    """Tune mode's estimated saving (ConvBNSummary) beside the measured one (eval - tune saved)."""
    if row.get("estimated_saving") is None or ref is None:
        return "-"
    return f"{row['estimated_saving'] / MiB:.1f} / {(ref['saved_bytes'] - row['saved_bytes']) / MiB:.1f}"


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'model':<16} {'mode':<8} {'pairs':>5} {'saved MiB':>10} {'vs eval':>8} {'peak MiB':>9} "
        f"{'vs eval':>8} {'step s':>7} {'vs eval':>8} {'cpu s':>7} {'warm-up s':>9} "
        f"{'saving MiB est/meas':>20}"
    )
    print(head)
    print("-" * len(head))
    for row in rows:
        if "error" in row:
            print(f"{row['model']:<16} {row['config']:<8} failed: {row['error']}")
            continue
        ref = next(
            (r for r in rows if r["model"] == row["model"] and r["config"] == "eval" and "error" not in r),
            None,
        )
        print(
            f"{row['model']:<16} {row['config']:<8} {row.get('pairs', '-'):>5} "
            f"{row['saved_bytes'] / MiB:>10.1f} {_ratio(row, ref, 'saved_bytes'):>8} "
            f"{row['peak_bytes'] / MiB:>9.1f} {_ratio(row, ref, 'peak_bytes'):>8} "
            f"{row['step_s']:>7.3f} {_ratio(row, ref, 'step_s'):>8} {row['step_cpu_s']:>7.3f} "
            f"{row['warmup_s']:>9.1f} {_saving(row, ref):>20}"
        )
    for row in rows:
        if row.get("warning"):
            print(f"warning ({row['model']}): {row['warning']}")


def check_targets(rows: list[dict]) -> list[dict]:
    get = {(r["model"], r["config"]): r for r in rows if "error" not in r}
    ev, tu = get.get((TARGET_MODEL, "eval")), get.get((TARGET_MODEL, "tune"))
    if ev is None or tu is None:
        return [{"target": f"{TARGET_MODEL}: tune vs eval", "met": None, "detail": "not measured"}]
    reduction = 1 - tu["saved_bytes"] / ev["saved_bytes"]
    return [
        {
            "target": f"{TARGET_MODEL}: tune saves >= {TARGET_SAVED_REDUCTION:.0%} of eval's "
            "saved-activation bytes",
            "met": reduction >= TARGET_SAVED_REDUCTION,
            "detail": f"saves {reduction:.1%}",
        },
        {
            "target": f"{TARGET_MODEL}: tune step time <= eval step time",
            "met": tu["step_s"] <= ev["step_s"],
            "detail": (
                f"median {tu['step_s']:.3f}s vs {ev['step_s']:.3f}s ({tu['step_s'] / ev['step_s']:.2f}x)"
            ),
        },
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated zoo names")
    p.add_argument(
        "--configs",
        default=None,
        help=f"comma-separated, from {','.join(CONFIGS)} (default: all; --quick leaves compile out)",
    )
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration (median reported)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="CI smoke: batch 2, 1 step, no compile")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per model")
    p.add_argument("--json", nargs="?", const="-", metavar="PATH", help="write results as JSON (- = stdout)")
    p.add_argument("--worker", metavar="MODEL", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.quick:
        args.batch, args.steps = 2, 1
    configs = (
        args.configs.split(",")
        if args.configs
        else [c for c in CONFIGS if not (args.quick and c == "compile")]
    )
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        p.error(f"unknown configs {sorted(unknown)}; choose from {','.join(CONFIGS)}")
    if args.worker:
        print(
            "RESULT "
            + json.dumps(worker(args.worker, configs, args.batch, args.size, args.steps, args.threads)),
            flush=True,
        )
        return 0

    import torch

    threads = args.threads or torch.get_num_threads()
    print(
        f"# fp32 CPU, batch {args.batch}, {args.size}x{args.size}, {args.steps} timed step(s) per mode, "
        f"torch {torch.__version__}, {threads} threads, {os.cpu_count()} CPUs, load average at start "
        f"{os.getloadavg()[0]:.1f}",
        flush=True,
    )
    rows = []
    for name in args.models.split(","):
        t0 = time.perf_counter()
        rows += run_model(name, configs, args)
        print(
            f"#   {name}: {time.perf_counter() - t0:.0f}s, load average {os.getloadavg()[0]:.1f}",
            file=sys.stderr,
            flush=True,
        )
    print_table(rows)
    targets = check_targets(rows)
    for t in targets:
        verdict = {True: "MET", False: "NOT MET", None: "n/a"}[t["met"]]
        print(f"target {verdict}: {t['target']} ({t['detail']})")
    if args.json:
        doc = {
            "batch": args.batch,
            "size": args.size,
            "steps": args.steps,
            "torch": torch.__version__,
            "threads": threads,
            "cpus": os.cpu_count(),
            "results": rows,
            "targets": targets,
        }
        if args.json == "-":
            print(json.dumps(doc, indent=1))
        else:
            with open(args.json, "w") as f:
                json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
