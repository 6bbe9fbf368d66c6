"""Running a compiled build: the Relax VM behind a numpy-in, numpy-out call."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fuser.ir import FuserError, Value

from .common import relax, require_tvm, tvm

ALIGNMENT = 64  # bytes: TVM's kernels assume it, and from_dlpack refuses less


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data is ALIGNMENT-aligned: TVMModel reads
    such an input in place, without a copy."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(n + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start : start + n].view(dtype).reshape(shape)


class TVMModel:
    """A compiled graph: call it with numpy arrays (by position or input name) to get the
    outputs as a list of numpy arrays.

    On CPU an input that is C-contiguous, of the right dtype and 64-byte aligned (see
    ``aligned_empty``) is handed to the VM in place (DLPack); any other is copied into a
    buffer the model keeps, so no call allocates. Outputs are copied out: the caller owns
    them."""

    def __init__(self, executable, inputs: list[dict], outputs: list[dict], device: str = "cpu"):
        require_tvm()
        self.device = tvm.cuda(0) if device == "cuda" else tvm.cpu(0)
        self.executable, self.device_kind = executable, device
        self.vm = relax.VirtualMachine(executable, self.device)
        self.inputs, self.outputs = inputs, outputs
        self._staging: dict[int, object] = {}  # input index -> tvm tensor copies go into

    @property
    def _cpu(self) -> bool:
        return self.device_kind != "cuda"

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.inputs]

    def _args(self, args, kwargs) -> list:
        if args and kwargs:
            raise FuserError("pass inputs either by position or by name, not both")
        if kwargs:
            missing = [n for n in self.input_names if n not in kwargs]
            extra = [k for k in kwargs if k not in self.input_names]
            if missing or extra:
                raise FuserError(f"inputs {self.input_names} expected; missing {missing}, unknown {extra}")
            args = [kwargs[n] for n in self.input_names]
        if len(args) != len(self.inputs):
            raise FuserError(f"{len(self.inputs)} inputs expected ({self.input_names}), got {len(args)}")
        out = []
        for spec, a in zip(self.inputs, args):
            a = np.asarray(a)
            if list(a.shape) != list(spec["shape"]) or str(a.dtype) != spec["dtype"]:
                raise FuserError(
                    f"input {spec['name']}: expected {spec['dtype']}{spec['shape']}, "
                    f"got {a.dtype}{list(a.shape)}"
                )
            out.append(self._bind(len(out), a))
        return out

    def _bind(self, i: int, a: np.ndarray):
        """Input ``i`` as a TVM tensor: ``a`` itself when the VM can read it in place."""
        if self._cpu and a.flags.c_contiguous and a.ctypes.data % ALIGNMENT == 0:
            return tvm.runtime.from_dlpack(a)
        staged = self._staging.get(i)
        if staged is None:
            staged = self._staging[i] = tvm.runtime.empty(a.shape, str(a.dtype), self.device)
        staged.copyfrom(np.ascontiguousarray(a).reshape(a.shape))  # ascontiguousarray makes 0-d 1-d
        return staged

    def __call__(self, *args, **kwargs) -> list[np.ndarray]:
        res = self.vm["main"](*self._args(args, kwargs))
        if self._cpu:  # DLPack and a numpy copy: a third of Tensor.numpy()'s time (0.05 ms a call, cold)
            return [np.from_dlpack(res[i]).copy() for i in range(len(self.outputs))]
        return [res[i].numpy() for i in range(len(self.outputs))]

    def time_main(self, *args, number: int = 10, repeat: int = 3, **kwargs):
        """tvm time_evaluator over main: a ProfileResult (seconds)."""
        f = self.vm.time_evaluator("main", self.device, number=number, repeat=repeat)
        return f(*self._args(args, kwargs))


def null_kernels(fused):
    """``fused`` with every kernel's body emptied: built and run, it times what a call costs
    besides the kernels (the Relax VM, allocation, binding the inputs)."""
    empty = tvm.tirx.Evaluate(tvm.tirx.const(0, "int32"))
    funcs = {
        gv: f.with_body(empty) if isinstance(f, tvm.tirx.PrimFunc) else f for gv, f in fused.functions.items()
    }
    return tvm.IRModule(funcs, attrs=fused.attrs, global_infos=fused.global_infos)


def value_specs(values: Sequence[Value]) -> list[dict]:
    return [{"name": v.name, "shape": [int(d) for d in v.shape], "dtype": str(v.dtype)} for v in values]


def time_calls_in_run(
    model: TVMModel, args: Sequence, kernels: set[str], runs: int, clock=None, emptied: TVMModel | None = None
) -> list[tuple[str, float]]:
    """Each kernel call of one inference, timed as the model runs it: its inputs where the
    kernel before left them in the caches. Timed alone (the kernel called again and again), a
    kernel finds its own inputs and weights in cache from its previous call, which flatters
    kernels that move more data: MobileNetV2 at 224, 1 thread, Zen 5, its plan groups split
    per conv looked 4-14% faster alone than fused and ran slower in the model.

    [(kernel, median milliseconds)] per call of ``kernels``, in call order, over ``runs``
    inferences after one untimed; the VM's builtins (allocation, shape checks) are not
    kernels (``clock``: seconds, default wall clock). The hook around each call (the kernel's
    arguments handed to Python) adds about 5 us to each time; ``emptied``, the same build
    with every kernel emptied (``null_kernels``), times that cost on the same calls, and it
    is subtracted."""
    if model.device_kind == "cuda":
        raise FuserError(
            "kernels are timed in the run on CPU builds only: a GPU kernel runs after its launch returns"
        )
    if isinstance(kernels, str) or not all(isinstance(k, str) for k in kernels):
        raise FuserError(f"kernels: a set of kernel names (tb.kernel_names(fused)), got {kernels!r:.60}")
    if runs < 1:
        raise FuserError(f"runs: at least 1 timed inference, got {runs}")
    kernels = set(kernels)
    calls = _hooked_calls(model, args, kernels, runs, clock)
    if emptied is None:
        return calls
    hook = iter(_hooked_calls(emptied, args, kernels, runs, clock))
    out = []
    for kernel, ms in calls:  # the emptied build may call more: a reshape kernel, emptied, is no view
        cost = next((c for k, c in hook if k == kernel), None)
        if cost is None:
            raise FuserError("emptied: not this build with its kernels emptied (its kernel calls differ)")
        out.append((kernel, max(ms - cost, 0.0)))
    return out


def _hooked_calls(
    model: TVMModel, args: Sequence, kernels: set[str], runs: int, clock
) -> list[tuple[str, float]]:
    import time

    clock = clock or time.perf_counter
    # a VM of its own: a hook cannot be taken off a VM once set
    vm = TVMModel(model.executable, model.inputs, model.outputs, model.device_kind)
    calls: list[tuple[str, float]] = []
    started = [0.0]

    def hook(func, symbol, before, ret, *rest):
        if symbol in kernels:
            now = clock()
            if before:
                started[0] = now
            else:
                calls.append((symbol, now - started[0]))
        return 0

    vm.vm.set_instrument(hook)
    times: list[list[float]] = []
    names: list[str] = []
    for run in range(runs + 1):
        calls.clear()
        vm(*args)
        if run == 0:
            names = [name for name, _ in calls]
            times = [[] for _ in calls]
            continue
        for slot, (_, seconds) in zip(times, calls):
            slot.append(seconds)
    return [(name, float(np.median(t)) * 1e3) for name, t in zip(names, times)]
