"""Apache TVM backend: IR -> Relax, llvm/cuda builds, artifacts, tuning, latency."""
