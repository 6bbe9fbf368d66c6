"""Run a TVM build folder once on saved inputs: the process ``fuser.backends.tvm.cachesim``
starts under valgrind. Run by path (``python cachesim_run.py BUILD INPUTS.npz RUNS``), so it
imports only TVM's runtime and numpy, not fuser; ``cachesim`` sets TVM_USE_RUNTIME_LIB=1, so
TVM loads libtvm_runtime.so alone, not its compiler (what valgrind must translate and run at
start-up: a ReLU's simulation took 41 s with the compiler, of which the kernel is nothing).
"""

import sys

# TVM's FFI imports torch only to speed up DLPack exchange; under valgrind that import costs
# minutes, and nothing here exchanges tensors with torch.
sys.modules["torch"] = None

import numpy as np  # noqa: E402
import tvm  # noqa: E402
from tvm.runtime.vm import VirtualMachine  # noqa: E402


def main(build_dir: str, inputs_path: str, runs: int) -> None:
    lib = tvm.runtime.load_module(f"{build_dir}/model.so")
    vm = VirtualMachine(lib, tvm.cpu(0))
    with np.load(inputs_path) as data:
        args = [tvm.runtime.tensor(data[k]) for k in sorted(data.files, key=lambda k: int(k.split("_")[1]))]
    for _ in range(runs):
        vm["main"](*args)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
