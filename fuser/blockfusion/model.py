"""Analytic model of a block, unfused (one kernel per layer) and fused (one kernel).

Counting (e bytes per stored element: 2 for fp16 on a GPU, 4 for fp32 on the CPU):
  MACs      a Conv's numel(Y)·(C_in/groups)·k² (fuser.analysis's convention)
  ops       2·MACs, plus one per element of a residual addition
  unfused   one kernel per Conv with its bias and activation in the epilogue (what cuDNN
            and torch.compile run), one for the 1×1 projection shortcut, one for the residual
            Add (+ its activation). Each kernel reads its input and weights and writes its
            output once: DRAM bytes = e·(numel(in) + numel(out) + weights + bias); the Add
            reads two maps and writes one (3·e·numel(out)).
  fused     one kernel: DRAM bytes = e·(numel(x)·halo + numel(y) + all weights and biases), with
            halo = in-image input pixels all tiles load / pixels of x (fuser.blockfusion.schedule:
            overlapping halos are counted as DRAM reads, an upper bound: in practice they
            mostly hit L2). Intermediates stay in shared memory and registers.
  For a ConvFirst block with X = N·H·W·C and expansion E the unfused activation traffic is
  (2 + (1 + E) + (E + 1) + 3)·X = (7 + 2E)·X elements against (halo + 1)·X fused.

Per kernel with ops split by unit (dense convs on tensor cores at P_tensor; grouped/depthwise
convs and adds on CUDA cores at P_simt, both from fuser.blockfusion.devices; in the fused kernel
a grouped conv the schedule runs as mma counts as tensor-core work), bytes b and bandwidth B:
  intensity I         = ops / b
  ideal latency       = ops_tensor / P_tensor + ops_simt / P_simt          (= ops / peak)
  roofline latency    = max(ideal, b / B); attainable rate = ops / roofline = min(peak, B·I)
  efficiency          = ideal / measured = ops / (measured · peak)
Waterline of a kernel sequence: Σ_k max(ideal_k, b_k / B) (each kernel alone at its roof),
against Σ_k measured_k.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .devices import Device
from .schedule import BlockSchedule
from .spec import BlockSpec, ConvLayer


@dataclass
class KernelCost:
    name: str
    op: str  # "conv 3×3 /g8", "add", "fused convfirst", ...
    macs: int
    tensor_ops: int
    simt_ops: int
    activation_bytes: int
    weight_bytes: int

    @property
    def ops(self) -> int:
        return self.tensor_ops + self.simt_ops

    @property
    def dram_bytes(self) -> int:
        return self.activation_bytes + self.weight_bytes

    @property
    def intensity(self) -> float:
        return self.ops / self.dram_bytes if self.dram_bytes else 0.0

    def ideal_seconds(self, dev: Device) -> float:
        return self.tensor_ops / dev.peak("tensor") + self.simt_ops / dev.peak("simt")

    def memory_seconds(self, dev: Device) -> float:
        return self.dram_bytes / dev.bandwidth

    def roofline_seconds(self, dev: Device) -> float:
        return max(self.ideal_seconds(dev), self.memory_seconds(dev))

    def peak(self, dev: Device) -> float:
        """The kernel's compute roof: ops / ideal latency (its units' peaks, weighted by ops)."""
        ideal = self.ideal_seconds(dev)
        return self.ops / ideal if ideal else dev.peak("simt")

    def attainable(self, dev: Device) -> float:
        """min(peak, B·I) in flop/s."""
        return min(self.peak(dev), dev.bandwidth * self.intensity)

    def gap(self, dev: Device, measured: float | None = None) -> dict:
        """Efficiency-gap numbers; measured seconds optional."""
        out = {
            "ideal_s": self.ideal_seconds(dev),
            "roofline_s": self.roofline_seconds(dev),
            "attainable_flops": self.attainable(dev),
            "bound": "memory" if self.memory_seconds(dev) > self.ideal_seconds(dev) else "compute",
        }
        if measured:
            out.update(
                {
                    "measured_s": measured,
                    "achieved_flops": self.ops / measured,
                    "efficiency": self.ideal_seconds(dev) / measured,
                    "roofline_efficiency": self.roofline_seconds(dev) / measured,
                }
            )
        return out

    def to_dict(self, dev: Device, measured: float | None = None) -> dict:
        return {
            "name": self.name,
            "op": self.op,
            "macs": self.macs,
            "ops": self.ops,
            "dram_bytes": self.dram_bytes,
            "weight_bytes": self.weight_bytes,
            "intensity": round(self.intensity, 3),
            **self.gap(dev, measured),
        }


def _conv_label(layer: ConvLayer) -> str:
    g = "" if layer.groups == 1 else ("/dw" if layer.groups == layer.c_in else f"/g{layer.groups}")
    s = f"/s{layer.stride}" if layer.stride > 1 else ""
    return f"conv {layer.kernel}×{layer.kernel}{g}{s}" + (
        f"+{layer.activation}" if layer.activation != "none" else ""
    )


def conv_kernel(layer: ConvLayer, batch: int, elem_bytes: int) -> KernelCost:
    """One unfused Conv (+ bias + activation) kernel."""
    macs = layer.macs(batch)
    n_in = batch * layer.c_in * layer.in_hw[0] * layer.in_hw[1]
    n_out = batch * layer.c_out * layer.out_hw[0] * layer.out_hw[1]
    tensor, simt = (2 * macs, 0) if layer.is_dense else (0, 2 * macs)
    return KernelCost(
        layer.node,
        _conv_label(layer),
        macs,
        tensor,
        simt,
        (n_in + n_out) * elem_bytes,
        (layer.weight.size + layer.bias.size) * elem_bytes,
    )


@dataclass
class BlockCost:
    spec: BlockSpec = field(repr=False)
    schedule: BlockSchedule = field(repr=False)
    unfused: list[KernelCost]
    fused: KernelCost
    elem_bytes: int

    @property
    def activation_elements(self) -> dict:
        """Activation elements moved through DRAM, and X = numel(x), for the (7 + 2E)·X check."""
        x = self.spec.batch * self.spec.c_in * self.spec.in_hw[0] * self.spec.in_hw[1]
        return {
            "x": x,
            "unfused": sum(k.activation_bytes for k in self.unfused) // self.elem_bytes,
            "fused": self.fused.activation_bytes / self.elem_bytes,
        }


def block_cost(schedule: BlockSchedule, elem_bytes: int = 2) -> BlockCost:
    spec = schedule.spec
    kernels = [conv_kernel(layer, spec.batch, elem_bytes) for layer in spec.all_layers()]
    if spec.residual != "none":
        n_out = spec.batch * spec.c_out * spec.out_hw[0] * spec.out_hw[1]
        label = "add" + (f"+{spec.final_activation}" if spec.final_activation != "none" else "")
        kernels.append(
            KernelCost(spec.add_node or f"{spec.name}_add", label, 0, 0, n_out, 3 * n_out * elem_bytes, 0)
        )
    weights = sum(k.weight_bytes for k in kernels)
    # the fused kernel's units: its grouped conv may run on tensor cores (schedule.grouped_on_tensor_cores)
    moved = (
        sum(k.simt_ops for k, layer in zip(kernels, spec.all_layers()) if not layer.is_dense)
        if schedule.grouped_on_tensor_cores
        else 0
    )
    tensor, simt = sum(k.tensor_ops for k in kernels) + moved, sum(k.simt_ops for k in kernels) - moved
    fused = KernelCost(
        spec.name,
        f"fused {spec.kind}",
        sum(k.macs for k in kernels),
        tensor,
        simt,
        schedule.dram_bytes(elem_bytes) - weights,
        weights,
    )
    return BlockCost(spec, schedule, kernels, fused, elem_bytes)


def waterline(kernels: list[KernelCost], dev: Device, measured: list[float | None] | None = None) -> dict:
    """Σ max(ideal, bytes/B) over a kernel sequence (and Σ ideal), against Σ measured when every
    kernel was measured."""
    out = {
        "kernels": len(kernels),
        "ideal_s": sum(k.ideal_seconds(dev) for k in kernels),
        "waterline_s": sum(k.roofline_seconds(dev) for k in kernels),
        "measured_s": None,
    }
    if measured is not None and kernels and all(m for m in measured):
        out["measured_s"] = sum(measured)
        out["waterline_efficiency"] = out["waterline_s"] / out["measured_s"]
    return out
