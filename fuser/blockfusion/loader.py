"""Run generated block kernels on a GPU from PyTorch.

Binding: ``torch.utils.cpp_extension.load_inline`` (nvcc + ninja). Why this one and
not CuPy or cuda-python:
  - it ships with torch, the project's one GPU dependency: nothing to add to
    pyproject, nothing to install on a GPU machine that has torch and the CUDA toolkit;
  - the launcher is typed C++ that launches on torch's current stream
    (``c10::cuda::getCurrentCUDAStream``) into torch-allocated tensors, so fused kernels,
    cuDNN (eager) and torch.compile are timed on the same stream with the same
    allocator and events;
  - the kernels are compiled by nvcc, the compiler the test suite checks every emitted
    kernel with (``nvcc -arch=sm_90``), so "compiles in CI" means "compiles here";
  - torch caches the built extension by name; the name carries a hash of the sources,
    so a model's kernels build once (one extension for all its distinct kernels).
The cost: the first build of a model takes tens of seconds (torch headers).

``load_blocks(schedules)`` → one ``FusedBlock`` per schedule; ``FusedBlock(x)`` takes
an NCHW fp16 CUDA tensor (made channels_last, i.e. NHWC, as the kernel wants) and
returns the block's output, channels_last fp16.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .cuda import CudaKernel, emit_kernel
from .schedule import BlockSchedule

LAUNCHER = r"""
torch::Tensor launch_{name}(torch::Tensor x, std::vector<torch::Tensor> weights) {{
  TORCH_CHECK(x.is_cuda() && x.scalar_type() == torch::kHalf, "{name}: x must be a CUDA fp16 tensor");
  TORCH_CHECK(x.dim() == 4 && x.size(0) == {N} && x.size(1) == {C_IN} && x.size(2) == {H} && x.size(3) == {W},
              "{name}: x must be [{N}, {C_IN}, {H}, {W}]");
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), "{name}: x must be channels_last (NHWC)");
  TORCH_CHECK(weights.size() == {n_weights}, "{name}: expected {n_weights} weight tensors");
  auto y = torch::empty({{{N}, {C_OUT}, {HO}, {WO}}}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  static bool smem_configured = false;  // > 48 KB of dynamic shared memory needs the opt-in
  if (!smem_configured) {{
    C10_CUDA_CHECK(cudaFuncSetAttribute({name}, cudaFuncAttributeMaxDynamicSharedMemorySize, {smem}));
    smem_configured = true;
  }}
  {name}<<<{grid}, {threads}, {smem}, c10::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const __half*>(x.data_ptr<at::Half>()), reinterpret_cast<__half*>(y.data_ptr<at::Half>()),
      {weight_args});
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}}
"""


def _launcher(s: BlockSchedule, k: CudaKernel) -> str:
    args = []
    for i, name in enumerate(k.arg_names):
        if name.startswith("w_"):
            args.append(f"reinterpret_cast<const __half*>(weights[{i}].data_ptr<at::Half>())")
        else:
            args.append(f"weights[{i}].data_ptr<float>()")
    spec = s.spec
    return LAUNCHER.format(
        name=k.name,
        N=spec.batch,
        C_IN=spec.c_in,
        H=spec.in_hw[0],
        W=spec.in_hw[1],
        C_OUT=spec.c_out,
        HO=spec.out_hw[0],
        WO=spec.out_hw[1],
        n_weights=len(k.arg_names),
        smem=k.smem_bytes,
        grid=k.grid,
        threads=k.threads,
        weight_args=",\n      ".join(args),
    )


def extension_sources(schedules: list[BlockSchedule]) -> tuple[str, str, list[str]]:
    """(C++ declarations, CUDA source, function names) of one extension holding every distinct kernel."""
    kernels: dict[str, tuple[BlockSchedule, CudaKernel]] = {}
    for s in schedules:
        k = emit_kernel(s)
        kernels.setdefault(k.name, (s, k))
    cuda = [
        "#include <torch/extension.h>\n#include <c10/cuda/CUDAStream.h>\n#include <c10/cuda/CUDAException.h>"
    ]
    decls, names = [], []
    for name, (s, k) in kernels.items():
        cuda += [k.source, _launcher(s, k)]
        decls.append(f"torch::Tensor launch_{name}(torch::Tensor x, std::vector<torch::Tensor> weights);")
        names.append(f"launch_{name}")
    return "\n".join(decls), "\n".join(cuda), names


class FusedBlock:
    """One block's kernel with its packed fp16 weights on the GPU."""

    def __init__(self, schedule: BlockSchedule, launch, device: str = "cuda"):
        import torch

        self.schedule = schedule
        self.kernel_name = emit_kernel(schedule).name
        self._launch = launch
        self.weights = [
            torch.from_numpy(np.ascontiguousarray(a)).to(device)
            for _, a in schedule.packed_weights(np.float16)
        ]

    def __call__(self, x):
        import torch

        return self._launch(x.to(dtype=torch.float16, memory_format=torch.channels_last), self.weights)


def load_blocks(schedules: list[BlockSchedule], verbose: bool = False) -> list[FusedBlock]:
    """Build (or load from torch's extension cache) the kernels of ``schedules`` for this GPU."""
    import torch
    from torch.utils.cpp_extension import load_inline

    if not torch.cuda.is_available():
        raise RuntimeError("fused block kernels need a CUDA GPU (torch.cuda.is_available() is False)")
    decls, cuda, names = extension_sources(schedules)
    major, minor = torch.cuda.get_device_capability()
    arch = f"{major}{minor}"
    digest = hashlib.sha1((cuda + arch).encode()).hexdigest()[:12]
    ext = load_inline(
        name=f"fuser_blockfusion_{digest}",
        cpp_sources=decls,
        cuda_sources=cuda,
        functions=names,
        verbose=verbose,
        extra_cuda_cflags=["-O3", f"-gencode=arch=compute_{arch},code=sm_{arch}"],
    )
    return [FusedBlock(s, getattr(ext, f"launch_{emit_kernel(s).name}")) for s in schedules]
