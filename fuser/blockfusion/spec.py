"""What one fusable block is, independent of the graph it came from.

A ``BlockSpec`` holds the block's convolutions in order (weights with BN already
folded, fp32 numpy arrays in ONNX layout [C_out, C_in/groups, k, k]), their
activations, the residual (identity, 1×1 projection, or none) and the
activation after the residual add. The pass ``fuse_blocks`` builds specs from
the IR; the schedule, the CUDA generator, the CPU reference and the analytic
model all read only this object.

Kinds (Lavin 2024, arXiv 2404.03617, and the papers of the zoo models):
  convfirst     k×k grouped conv → 1×1 expand + act → 1×1 project (+ x)
  mbconv        [1×1 expand + act] → k×k depthwise (stride s) + act → 1×1 project (+ x)
  resnet_basic  k×k conv (stride s) + act → k×k conv, + x or + 1×1 projection(x), act
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

KINDS = ("convfirst", "mbconv", "resnet_basic")
# Activation codes shared with the CUDA templates (fbf::Act) and the reference.
ACTIVATIONS = {"none": 0, "relu": 1, "relu6": 2, "silu": 3, "hardswish": 4}


def activate(v: np.ndarray, name: str) -> np.ndarray:
    """The activation ``name`` applied elementwise (fp32), as the kernel computes it."""
    if name == "none":
        return v
    if name == "relu":
        return np.maximum(v, 0)
    if name == "relu6":
        return np.clip(v, 0, 6)
    if name == "silu":  # v·sigmoid(v) = v / (1 + e^−v); e^−v overflows to inf for v ≪ 0, giving −0
        with np.errstate(over="ignore"):
            return v / (1 + np.exp(-v))
    if name == "hardswish":
        return v * np.clip(v + 3, 0, 6) / 6
    raise ValueError(f"unknown activation {name!r}")


@dataclass(eq=False)
class ConvLayer:
    """One Conv of a block (with the activation that follows it, if any)."""

    node: str  # the Conv's IR node name
    role: str  # spatial / expand / depthwise / project / conv1 / conv2 / shortcut
    c_in: int
    c_out: int
    kernel: int  # square kernels only
    stride: int  # same on both axes
    pad_top: int
    pad_left: int
    groups: int
    activation: str
    weight: np.ndarray = field(repr=False)  # [c_out, c_in / groups, k, k] float32, BN folded
    bias: np.ndarray = field(repr=False)  # [c_out] float32 (zeros when the Conv had none)
    in_hw: tuple[int, int] = (0, 0)
    out_hw: tuple[int, int] = (0, 0)
    act_nodes: tuple[str, ...] = ()  # IR nodes of the activation

    @property
    def group_width_in(self) -> int:
        return self.c_in // self.groups

    @property
    def group_width_out(self) -> int:
        return self.c_out // self.groups

    @property
    def is_dense(self) -> bool:
        """Runs on tensor cores in the kernel (groups == 1); grouped/depthwise run as FMAs."""
        return self.groups == 1

    def macs(self, batch: int) -> int:
        """numel(Y)·(C_in/groups)·k² (fuser.analysis's convention)."""
        return batch * self.out_hw[0] * self.out_hw[1] * self.c_out * self.group_width_in * self.kernel**2

    def shape_key(self) -> tuple:
        return (
            self.role,
            self.c_in,
            self.c_out,
            self.kernel,
            self.stride,
            self.pad_top,
            self.pad_left,
            self.groups,
            self.activation,
            self.in_hw,
            self.out_hw,
        )


@dataclass(eq=False)
class BlockSpec:
    """A residual block (or its strided, residual-free variant) that one kernel computes."""

    kind: str
    name: str  # a stable name: kind + index in the graph
    batch: int
    layers: list[ConvLayer]  # the main path, in order
    residual: str  # "identity", "projection" or "none"
    final_activation: str = "none"  # after the residual add
    shortcut: ConvLayer | None = None  # the 1×1 projection when residual == "projection"
    nodes: tuple[str, ...] = ()  # every IR node of the block
    input_name: str = ""
    output_name: str = ""
    add_node: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown block kind {self.kind!r}")

    @property
    def c_in(self) -> int:
        return self.layers[0].c_in

    @property
    def c_out(self) -> int:
        return self.layers[-1].c_out

    @property
    def in_hw(self) -> tuple[int, int]:
        return self.layers[0].in_hw

    @property
    def out_hw(self) -> tuple[int, int]:
        return self.layers[-1].out_hw

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.c_in, *self.in_hw)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.c_out, *self.out_hw)

    def layer(self, role: str) -> ConvLayer | None:
        return next((layer for layer in self.layers if layer.role == role), None)

    @property
    def spatial_layer(self) -> ConvLayer:
        """The k×k layer that sets the block's kernel size and stride."""
        return next(layer for layer in self.layers if layer.kernel > 1)

    @property
    def kernel(self) -> int:
        return self.spatial_layer.kernel

    @property
    def stride(self) -> int:
        return max(layer.stride for layer in self.layers)

    @property
    def hidden(self) -> int:
        """Channels of the widest intermediate: E·C for convfirst/mbconv, the mid width for resnet."""
        if self.kind == "resnet_basic":
            return self.layers[0].c_out
        expand = self.layer("expand")
        return expand.c_out if expand is not None else self.c_in

    @property
    def expansion(self) -> float:
        if self.kind == "resnet_basic":
            return 1.0
        return (self.layer("expand").c_out if self.layer("expand") else self.c_in) / self.c_in

    def all_layers(self) -> list[ConvLayer]:
        return self.layers + ([self.shortcut] if self.shortcut is not None else [])

    def macs(self) -> int:
        return sum(layer.macs(self.batch) for layer in self.all_layers())

    def signature(self) -> str:
        """Hash of everything that shapes the kernel (not the weights): equal blocks share a kernel."""
        key = (
            self.kind,
            self.batch,
            self.residual,
            self.final_activation,
            tuple(layer.shape_key() for layer in self.all_layers()),
        )
        return hashlib.sha1(repr(key).encode()).hexdigest()[:10]

    def describe(self) -> str:
        """'mbconv k3 s2 24→32 E6 16×16→8×8' (one line for tables)."""
        e = f" E{self.expansion:g}" if self.kind != "resnet_basic" else ""
        res = {"identity": " +x", "projection": " +proj(x)", "none": ""}[self.residual]
        return (
            f"k{self.kernel} s{self.stride} {self.c_in}→{self.c_out}{e} "
            f"{self.in_hw[0]}×{self.in_hw[1]}→{self.out_hw[0]}×{self.out_hw[1]}{res}"
        )


@dataclass(frozen=True)
class Rejected:
    """A block-shaped group of nodes that is not fused, and why."""

    nodes: tuple[str, ...]
    reason: str
    pattern: str = ""
