"""`fuser sweep`: fusion plans over models x buffer sizes x styles x splits, as Ray tasks.

Each model is captured, optimized and indexed once, put in Ray's object store and
shared by all its tasks. Every finished plan is cached as one JSON file keyed by
(model hash, configuration), so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fuser.cli.common import SEED, emit_json, err, input_shape_option, json_option, load_graph, safe, show
from fuser.fusion.cost import STYLES
from fuser.fusion.search import SEARCHES
from fuser.fusion.split import SPLITS
from fuser.ir import FuserError
from fuser.units import format_size, parse_size

FIELDS = (
    "model",
    "model_hash",
    "style",
    "split",
    "search",
    "budget",
    "seed",
    "buffer_bytes",
    "dram_bytes",
    "no_fusion_dram_bytes",
    "dram_ratio",
    "groups",
    "peak_buffer_bytes",
    "bound_bytes",
    "bound_exact",
    "seconds",
)


def buffer_sizes(spec: str) -> list[int]:
    """``32KB:4MB:x2`` (from, to, factor) or a comma list ``64KB,128KB`` (at least one size,
    as `fuser fuse --buffer` wants)."""
    if ":" not in spec:
        sizes = [parse_size(s) for s in spec.split(",") if s.strip()]
        if not sizes:
            raise FuserError("--buffer: give at least one size, e.g. 256KB, or FROM:TO:xFACTOR")
        return sizes
    parts = spec.split(":")
    if len(parts) != 3 or not parts[2].startswith("x"):
        raise FuserError(f"--buffer {spec}: give FROM:TO:xFACTOR, e.g. 32KB:4MB:x2")
    lo, hi = parse_size(parts[0]), parse_size(parts[1])
    try:
        factor = float(parts[2][1:])
    except ValueError:
        raise FuserError(f"--buffer {spec}: the factor after 'x' must be a number, e.g. x2") from None
    if factor <= 1 or lo <= 0 or hi < lo:
        raise FuserError(f"--buffer {spec}: need 0 < FROM <= TO and a factor above 1")
    sizes, size = [], float(lo)
    while size <= hi * (1 + 1e-9):
        sizes.append(int(round(size)))
        size *= factor
    return sizes


def model_hash(fg) -> str:
    """What a plan depends on: ops, edges, tensor sizes, weights, row rules."""
    key = json.dumps(
        [fg.names, fg.ops, fg.edges, fg.tensor_numel, fg.tensor_height, fg.weight_numel, repr(fg.op_inputs)]
    )
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def plan_task(fg, model: str, digest: str, config: dict) -> dict:
    """One sweep point (runs in a Ray worker)."""
    from fuser.fusion import partition_fusion_graph

    plan, seconds = partition_fusion_graph(
        fg,
        buffer=config["buffer_bytes"],
        style=config["style"],
        search=config["search"],
        split=config["split"],
        budget=config["budget"],
        seed=config["seed"],
        gap=config["gap"],
    )
    optimum = plan.optimum or {}
    return {
        "model": model,
        "model_hash": digest,
        **{k: config[k] for k in ("style", "split", "search", "budget", "seed", "buffer_bytes")},
        "dram_bytes": plan.dram_bytes,
        "no_fusion_dram_bytes": plan.no_fusion_dram_bytes,
        "dram_ratio": round(plan.dram_ratio, 6),
        "groups": len(plan.groups),
        "peak_buffer_bytes": plan.peak_buffer_bytes,
        "bound_bytes": optimum.get("bytes"),
        "bound_exact": optimum.get("exact"),
        "seconds": round(seconds, 3),
    }


# Bump when the planner can return another plan for the same model and configuration (2: a
# proven optimum cheaper than the search's plan is adopted), so a cache from before is not reused.
PLANNER_REVISION = 2


def cache_key(digest: str, config: dict) -> str:
    key = [digest, config, PLANNER_REVISION]
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def _start_ray(address: str | None, workers: int | None):
    try:
        import ray
    except ImportError:
        raise FuserError(
            "fuser sweep runs on Ray, which is not installed: pip install 'fuser[ray]' "
            "(fuser fuse --buffer a,b,c sweeps one model without it)"
        ) from None
    if not ray.is_initialized():
        kw = {"address": address} if address else {"num_cpus": workers}
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR", **kw)
    return ray


def run_sweep(points, fgs, cache_dir: Path, address=None, workers=None, on_done=lambda r: None) -> list[dict]:
    """Plan every (model, config) of ``points`` not in ``cache_dir``; returns all rows in order."""
    from fuser.serde.files import atomic_write

    cache_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    todo = []
    for model, config in points:
        key = cache_key(fgs[model][1], config)
        path = cache_dir / f"{key}.json"
        if path.exists():
            results[key] = json.loads(path.read_text())
            on_done(results[key])
        else:
            todo.append((key, model, config))
    if todo:
        ray = _start_ray(address, workers)
        remote = ray.remote(num_cpus=1)(plan_task)
        shared = {m: ray.put(fg) for m, (fg, _) in fgs.items() if any(t[1] == m for t in todo)}
        pending = {remote.remote(shared[m], m, fgs[m][1], c): k for k, m, c in todo}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            key = pending.pop(done[0])
            row = results[key] = ray.get(done[0])
            atomic_write(cache_dir / f"{key}.json", json.dumps(row).encode())  # resumable
            on_done(row)
    return [results[cache_key(fgs[m][1], c)] for m, c in points]


def write_csv(path, rows) -> None:
    from fuser.serde.files import atomic_write

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, buf.getvalue().encode())


def plot_model(path, model: str, rows) -> None:
    """DRAM against buffer size, one line per style and split, with the optimum or lower bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fuser.serde.files import atomic_write

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for style in sorted({r["style"] for r in rows}):
        for split in sorted({r["split"] for r in rows}):
            line = sorted(
                (r for r in rows if r["style"] == style and r["split"] == split),
                key=lambda r: r["buffer_bytes"],
            )
            if not line:
                continue
            x = [r["buffer_bytes"] / 1024 for r in line]
            ax.plot(x, [r["dram_bytes"] / 1e6 for r in line], "o-", label=f"{style.upper()} {split}")
        bounds = sorted(
            {(r["buffer_bytes"], r["bound_bytes"]) for r in rows if r["style"] == style and r["bound_bytes"]}
        )
        if bounds:
            ax.plot(
                [b / 1024 for b, _ in bounds],
                [v / 1e6 for _, v in bounds],
                "k:",
                lw=1,
                label=f"{style.upper()} optimum / lower bound",
            )
    no_fusion = rows[0]["no_fusion_dram_bytes"] / 1e6
    ax.axhline(no_fusion, color="gray", ls="--", lw=1, label="no fusion")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("on-chip buffer (KB)")
    ax.set_ylabel("DRAM access (MB)")
    ax.set_title(f"{model}: DRAM against buffer size")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=120, metadata={"Software": None})
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def _check_outputs(models, out_prefix: str, plot_dir: str | None) -> tuple[list[str], dict[str, Path]]:
    """PREFIX.json and PREFIX.csv, and each model's PNG in --plot-dir, all checked before the
    sweep writes any (``check_outputs``: none a model or its data, no two the same file)."""
    from fuser.frontends.onnx import model_files
    from fuser.serde.files import check_outputs

    outputs = [f"{out_prefix}.json", f"{out_prefix}.csv"]
    plots: dict[str, Path] = {}
    for m in dict.fromkeys(models) if plot_dir else ():  # a model given twice is plotted once
        png = Path(plot_dir) / f"{m[4:] if m.startswith('zoo:') else Path(m).stem}.png"
        clash = next((other for other, p in plots.items() if p == png), None)
        if clash is not None:
            raise FuserError(
                f"--plot-dir: {m} and {clash} would both be plotted to {png}; "
                "rename one model or sweep them separately"
            )
        plots[m] = png
    reads = [f for m in models if not m.startswith("zoo:") for f in model_files(m)]
    check_outputs([*outputs, *plots.values()], protect=reads, new_folders=[plot_dir] if plot_dir else [])
    return outputs, plots


@click.command("sweep")
@click.argument("models", nargs=-1, required=True)
@input_shape_option
@click.option(
    "--buffer", "buffers", default="32KB:4MB:x2", show_default=True, help="FROM:TO:xFACTOR or a list."
)
@click.option(
    "--style", "styles", default="lbdf,brr", show_default=True, help=f"Comma list of {', '.join(STYLES)}."
)
@click.option("--search", type=click.Choice(SEARCHES), default="nsga2", show_default=True)
@click.option(
    "--split", "splits", default="explain", show_default=True, help="Comma list of explain, random."
)
@click.option(
    "--budget", type=click.IntRange(min=1), default=1000, show_default=True, help="Plans per point."
)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Same seed, same plans.")
@click.option(
    "--gap/--no-gap", default=False, show_default=True, help="Also prove each point's gap to optimal."
)
@click.option(
    "--address", default=None, help="Ray cluster address (ray://host:10001); local Ray when omitted."
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="CPUs of the local Ray (default: all)."
)
@click.option(
    "--cache",
    "cache_dir",
    default=".fuser-sweep",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Finished points, one JSON each: a rerun skips them.",
)
@click.option(
    "-o", "--out", "out_prefix", default="sweep", show_default=True, help="Writes PREFIX.json, PREFIX.csv."
)
@click.option("--plot-dir", type=click.Path(file_okay=False), default=None, help="One PNG per model here.")
@json_option
def command(
    models,
    input_shapes,
    buffers,
    styles,
    search,
    splits,
    budget,
    seed,
    gap,
    address,
    workers,
    cache_dir,
    out_prefix,
    plot_dir,
    as_json,
):
    """Plan fusion for every MODEL x buffer size x style x split, as Ray tasks.

    Each model is captured once and shared by its tasks; every finished point is
    cached (by model hash and configuration) in --cache, so rerunning an
    interrupted sweep plans only what is missing. Needs Ray: pip install 'fuser[ray]'.

    \b
    Examples:
      fuser sweep zoo:resnet18 zoo:mobilenet_v2 --buffer 32KB:4MB:x2 --style lbdf,brr
      fuser sweep det.onnx --input-shape x:1,3,640,640 --split explain,random --plot-dir plots/
      fuser sweep zoo:resnet50 --address ray://head:10001 --budget 5000 -o r50
    """
    from fuser.api import optimize
    from fuser.fusion.opgraph import build_fusion_graph

    sizes = buffer_sizes(buffers)
    style_list = [s for s in styles.split(",") if s]
    split_list = [s for s in splits.split(",") if s]
    for name, chosen, allowed in (("--style", style_list, STYLES), ("--split", split_list, SPLITS)):
        bad = [c for c in chosen if c not in allowed]
        if bad or not chosen:
            raise FuserError(
                f"{name}: choose from {', '.join(allowed)} (got {','.join(chosen) or 'nothing'})"
            )
    outputs, plots = _check_outputs(models, out_prefix, plot_dir)
    fgs = {}
    for model in models:
        fg = build_fusion_graph(optimize(load_graph(model, input_shapes)).graph)
        fgs[model] = (fg, model_hash(fg))
    points = [
        (
            m,
            {
                "style": st,
                "split": sp,
                "search": search,
                "budget": budget,
                "seed": seed,
                "buffer_bytes": b,
                "gap": gap,
            },
        )
        for m in models
        for st in style_list
        for sp in split_list
        for b in sizes
    ]
    with Progress(
        TextColumn("sweep"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as progress:
        task = progress.add_task("sweep", total=len(points))
        rows = run_sweep(points, fgs, Path(cache_dir), address, workers, lambda r: progress.advance(task))
    from fuser.serde.files import atomic_write

    json_path, csv_path = outputs
    atomic_write(json_path, (json.dumps(rows, indent=1) + "\n").encode())
    write_csv(csv_path, rows)
    if plot_dir:
        Path(plot_dir).mkdir(parents=True, exist_ok=True)
        for m, png in plots.items():
            plot_model(png, fgs[m][0].graph.name, [r for r in rows if r["model"] == m])
    if as_json:
        emit_json(rows)
        return
    show(
        f"{len(points)} points ({len(models)} models x {len(sizes)} buffers {format_size(sizes[0])}.."
        f"{format_size(sizes[-1])} x {len(style_list)} styles x {len(split_list)} splits): "
        + safe(f"wrote {json_path}, {csv_path}" + (f", plots in {plot_dir}" if plot_dir else ""))
    )
