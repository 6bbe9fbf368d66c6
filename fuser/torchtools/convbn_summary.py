"""What ``fuser.convbn`` did, and what Tune mode saves for backward at a given batch.

Estimate (per combined pair, at batch B, in bytes of the conv's dtype):

    saved(B) = B * A  -  W  -  4 * C

  A  conv output elements per sample: Eval mode keeps the conv output alive for the
     BatchNorm's backward; Tune mode never materialises it as a separate tensor;
  W  elements of the folded weight W' = W * s, which Tune mode keeps for the conv's
     backward instead (the original W is a parameter, held anyway);
  C  output channels: the per-channel vectors of the fold (s, gamma * s, b', the reshaped
     scale) that autograd keeps.

Everything else (the conv input, activations after the BN) is kept by both modes alike.
The sum over pairs is what ``benchmarks/convbn_tune.py`` measures as the difference of
saved bytes between Eval and Tune mode; it is negative at small batches, where the
folded weights outweigh the activations (ResNet-50 at batch 8, 160x160: +3% saved bytes).
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import asdict, dataclass, field

log = logging.getLogger(__name__)


class TuneModeWarning(UserWarning):
    """Tune mode would not save memory at the batch it was shown."""


@dataclass
class PairInfo:
    """One conv+BN pair combined."""

    conv: str  # module path (or node name)
    bn: str
    kind: str  # "module", "functional" (F.batch_norm), "aten" (torch.export graph), "tuned"
    channels: int
    weight_elements: int  # of W' (the folded weight Tune mode keeps for backward)
    activation_elements: int | None  # conv output elements per sample; None: shapes unknown
    itemsize: int = 4

    def saved_bytes(self, batch: int) -> int | None:
        if self.activation_elements is None:
            return None
        return (batch * self.activation_elements - self.weight_elements - 4 * self.channels) * self.itemsize


@dataclass
class LeftPair:
    """A BatchNorm (and the conv before it, when there is one) left as it was, and why."""

    conv: str | None
    bn: str
    reason: str

    def __str__(self) -> str:
        return f"{self.conv} -> {self.bn}: {self.reason}" if self.conv else f"{self.bn}: {self.reason}"


@dataclass
class ConvBNSummary:
    mode: str
    pairs: list[PairInfo] = field(default_factory=list)
    left: list[LeftPair] = field(default_factory=list)
    batch: int | None = None  # the batch of the shapes shown (example_inputs or the export)

    @property
    def shapes_known(self) -> bool:
        return all(p.activation_elements is not None for p in self.pairs)

    def saved_bytes(self, batch: int | None = None) -> int | None:
        """Bytes Tune mode keeps less than Eval mode for backward at ``batch`` (default: the
        example batch); negative when it keeps more; None when shapes are unknown."""
        batch = batch or self.batch
        if batch is None or not self.shapes_known:
            return None
        return sum(p.saved_bytes(batch) for p in self.pairs)

    def break_even_batch(self) -> int | None:
        """The smallest batch at which Tune mode saves memory (None: shapes unknown or no pairs)."""
        if not self.pairs or not self.shapes_known:
            return None
        per_sample = sum(p.activation_elements * p.itemsize for p in self.pairs)
        fixed = sum((p.weight_elements + 4 * p.channels) * p.itemsize for p in self.pairs)
        return fixed // per_sample + 1 if per_sample else None

    def warning(self, batch: int | None = None) -> str | None:
        """The reason Tune mode would not save memory at ``batch``, or None when it would."""
        from fuser.units import human_bytes

        batch = batch or self.batch
        saved = self.saved_bytes(batch)
        if saved is None or saved > 0 or not self.pairs:
            return None
        weights = sum((p.weight_elements + 4 * p.channels) * p.itemsize for p in self.pairs)
        return (
            f"Tune mode would not save memory at batch {batch}: the folded weights it keeps for "
            f"backward ({human_bytes(weights)}) outweigh the conv outputs it no longer keeps "
            f"({human_bytes(weights + saved)}); it saves from batch {self.break_even_batch()} on, "
            "or use Eval mode (convbn(model, 'eval')) at this batch"
        )

    def to_dict(self, batch: int | None = None) -> dict:
        batch = batch or self.batch
        return {
            "mode": self.mode,
            "pairs": [asdict(p) for p in self.pairs],
            "left": [asdict(x) for x in self.left],
            "batch": batch,
            "saved_bytes": self.saved_bytes(batch),
            "break_even_batch": self.break_even_batch(),
            "warning": self.warning(batch),
        }

    def __str__(self) -> str:
        from fuser.units import human_bytes

        lines = [f"convbn({self.mode}): {len(self.pairs)} conv+BN pairs combined, {len(self.left)} left"]
        saved = self.saved_bytes()
        if saved is not None and self.mode == "tune":
            verb = "saves" if saved > 0 else "costs"
            lines.append(
                f"  at batch {self.batch}: {verb} {human_bytes(abs(saved))} of backward memory "
                f"(break-even batch {self.break_even_batch()})"
            )
        lines += [f"  left: {x}" for x in self.left]
        warning = self.warning() if self.mode == "tune" else None
        if warning:
            lines.append(f"  warning: {warning}")
        return "\n".join(lines)


def propagate_shapes(gm, inputs: tuple) -> bool:
    """Record each node's output shape in ``node.meta['tensor_meta']`` by running ``gm`` on
    fake tensors (no compute; the module itself is not run, so no statistic moves)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.shape_prop import ShapeProp

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    try:
        fake = [mode.from_tensor(t) for t in inputs]
        with contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints tracebacks itself
            ShapeProp(gm, fake_mode=mode).propagate(*fake)
        return True
    except Exception as e:  # shapes stay unknown; the estimate says so
        log.info("convbn: no shapes for the summary (%s: %s)", type(e).__name__, str(e).splitlines()[:1])
        return False


def batch_of(inputs: tuple, aten_convs) -> int | None:
    """The batch the summary's shapes are for: example_inputs', else the exported graph's."""
    if inputs:
        return int(inputs[0].shape[0]) if inputs[0].dim() else None
    for node in aten_convs:
        val = node.meta.get("val")
        if val is not None and val.dim():
            return int(val.shape[0])
    return None
