#!/usr/bin/env bash
# CI step: compile and link the CUDA variant of the custom-op library (needs nvcc; no GPU needed or used),
# then check the library still loads into the CPU-only onnxruntime and passes the kernel tests there
# (the CPU kernels are registered next to the CUDA ones). Nothing here runs a CUDA kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvcc >/dev/null || { echo "cuda-build: nvcc not found" >&2; exit 1; }
build="${BUILD_DIR:-build/cuda}"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DONNXCOMP_CUDA=ON
cmake --build "$build" -j"$(nproc)"
nm -D --defined-only "$build/libonnxcomp_ops.so" | grep -q ' T RegisterCustomOps$'
if ldd "$build/libonnxcomp_ops.so" | grep -q cudart; then echo "cuda-build: libcudart must be linked statically" >&2; exit 1; fi
python="${PYTHON:-python3}"
ONNXCOMP_LIBRARY="$PWD/$build/libonnxcomp_ops.so" "$python" -m pytest -q tests/test_kernels.py
