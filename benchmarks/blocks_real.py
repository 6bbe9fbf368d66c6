"""Residual blocks found by structure in real models, each fused block built as one depth-first
TVM kernel and checked against ONNX Runtime on its subgraph (``fuser blocks --verify``).

Models: the two PaddleOCR files of ../shared/models, the onnx package's light ONNX-zoo graphs,
and the zoo models with residuals (YOLOv8n, ResNet-18, MobileNetV2, ConvFirst, ConvNeXt-T,
EfficientNet-B0, MobileNetV3-S, ShuffleNetV2). Per model: blocks found, fused (one tile loop),
split (two tile loops at a global pool), inside an enclosing fused block, refused (with the
reasons), the kinds found, and the largest relative error of a fused block against ORT.

    python benchmarks/blocks_real.py                     # all (~10 min on 2 loaded cores)
    python benchmarks/blocks_real.py --models yolov8n,ch_ppocr_mobile_v2.0_cls_infer.onnx
    python benchmarks/blocks_real.py --no-verify         # structure only (seconds)

Writes benchmarks/results/blocks_real.txt.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "blocks_real.txt"
SHARED = ROOT.parent.parent / "shared" / "models"
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
PADDLE = {
    "ch_PP-OCRv4_det_infer.onnx": (1, 3, 160, 160),
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": (1, 3, 48, 192),
}
ZOO = (
    "yolov8n",
    "resnet18",
    "mobilenet_v2",
    "convfirst",
    "convnext_tiny",
    "efficientnet_b0",
    "mobilenet_v3_small",
    "shufflenet_v2_x1_0",
)
ZOO_SIZE = 64
TOL = 1e-4


def load(name: str):
    import torch

    import fuser
    from fuser.models import create, input_shape

    if name in PADDLE:
        path = SHARED if SHARED.is_dir() else Path("../shared/models")
        model = onnx.load(str(path / name), load_external_data=False)
        shapes = {model.graph.input[0].name: PADDLE[name]}
        return fuser.optimize(str(path / name), input_shapes=shapes).graph
    if name.endswith(".onnx"):
        return fuser.optimize(str(LIGHT / name)).graph
    shape = list(input_shape(name))
    shape[2:] = [ZOO_SIZE, ZOO_SIZE]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    return fuser.optimize(create(name, seed=0).eval(), (x,)).graph


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = [*PADDLE, *sorted(p.name for p in LIGHT.glob("*.onnx")), *ZOO]
    ap.add_argument("--models", default=",".join(default))
    ap.add_argument("--no-verify", action="store_true", help="find blocks only, build nothing")
    ap.add_argument("--output", default=str(RESULTS))
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from fuser.blockfusion.structure import find_residual_blocks
    from fuser.blockfusion.verify import verify_blocks

    out = Console(record=True, width=200)
    out.print(
        f"fuser blocks on real models: structure-found residual blocks, fused ones built as one "
        f"depth-first TVM kernel (llvm) vs ORT on the block's subgraph; zoo at {ZOO_SIZE}x{ZOO_SIZE}, "
        f"PaddleOCR det at 160x160, cls at 48x192"
    )
    t = Table(title="per model", title_justify="left")
    for col in ("model", "found", "fused", "split", "inside", "refused", "kinds", "max err vs ORT", "s"):
        t.add_column(col, justify="left" if col in ("model", "kinds") else "right", overflow="fold")
    refusals = collections.Counter()
    worst = 0.0
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        start = time.perf_counter()
        graph = load(name)
        blocks = find_residual_blocks(graph)
        top = [b for b in blocks if b.inside is None]
        fused = [b for b in top if b.fused]
        refused = [b for b in top if not b.fused]
        for b in refused:
            refusals[b.reason] += 1
        err = None
        if not args.no_verify and fused:
            checks = verify_blocks(graph, fused)
            err = max(c.rel_err for c in checks)
            worst = max(worst, err)
        kinds = collections.Counter(b.kind for b in fused)
        t.add_row(
            escape(name),
            str(len(blocks)),
            str(len(fused)),
            str(sum(b.stages > 1 for b in fused)),
            str(sum(b.inside is not None for b in blocks)),
            str(len(refused)),
            escape(", ".join(f"{k} x{n}" for k, n in kinds.most_common())),
            "-" if err is None else f"{err:.1e}",
            f"{time.perf_counter() - start:.0f}",
        )
    out.print(t)
    if refusals:
        rt = Table(title="refusals (outermost blocks not fused)", title_justify="left")
        rt.add_column("blocks", justify="right")
        rt.add_column("reason", overflow="fold")
        for reason, n in refusals.most_common():
            rt.add_row(str(n), escape(reason))
        out.print(rt)
    if not args.no_verify:
        out.print(
            f"every fused block vs ORT: max rel err {worst:.1e} "
            f"({'met' if worst <= TOL else 'MISSED'} <= {TOL})"
        )
    Path(args.output).write_text(out.export_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
