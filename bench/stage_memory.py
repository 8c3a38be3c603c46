"""Where the default compression's peak resident set comes from (issue #16, per-weight working memory).

Compresses MODEL with the defaults (``onnxcomp.compress(MODEL, OUT)``) in this process while a thread samples
the resident set (/proc/self/statm) every 5 ms, and prints the peak, the step it happened in (the innermost of:
each compression round, the allocation and sharing passes, writing, the per-weight gain runs and their record
decoding, the budget's candidate fits, the output-load check, the fidelity comparison) and the resident set at
each step's start. The baseline is the resident set after the imports; the peak minus it over ``--largest``
bytes (the largest weight's float32 bytes) is the issue's per-weight working memory figure. Linux only.

Usage:
    python bench/stage_memory.py MODEL.onnx OUT.onnx --largest BYTES
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import threading
import time


def resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("output")
    parser.add_argument("--largest", type=int, required=True, help="the largest weight's float32 bytes")
    args = parser.parse_args()
    import onnxcomp
    from onnxcomp.passes import allocate_weights, share_weights
    from onnxcomp.pipeline import inspection
    peak, stage, starts = [0, "start"], ["start"], []

    def sample():
        while True:
            now = resident()
            if now > peak[0]:
                peak[0], peak[1] = now, stage[0]
            time.sleep(0.005)

    def step(owner, attribute, label):
        function = getattr(owner, attribute)

        @functools.wraps(function)
        def wrapper(*a, **k):
            previous, stage[0] = stage[0], label
            starts.append((label, resident()))
            try:
                return function(*a, **k)
            finally:
                stage[0] = previous
        setattr(owner, attribute, wrapper)

    compression = importlib.import_module("onnxcomp.pipeline.compression")
    fidelity = importlib.import_module("onnxcomp.pipeline.fidelity")
    model_io = importlib.import_module("onnxcomp.passes.model_io")
    for name in ("_compress_once", "_gains", "_budget_limits", "check_output_loads"):
        step(compression, name, name)
    step(fidelity, "compare_runs", "compare_runs")
    step(model_io, "write_compressed", "write")
    step(allocate_weights.AllocateWeightsPass, "run", "allocate")
    step(share_weights.ShareWeightsPass, "run", "share")
    step(inspection.StoredWeight, "dense", "gain run: decode")
    baseline = resident()
    threading.Thread(target=sample, daemon=True).start()
    onnxcomp.compress(args.model, args.output)
    print(f"baseline (after imports) {baseline / 2**20:.0f} MiB; peak {peak[0] / 2**20:.0f} MiB in {peak[1]}; "
          f"(peak - baseline) / largest weight = {(peak[0] - baseline) / args.largest:.1f}x")
    for label, size in starts:
        print(f"  {label:20s} starts at {size / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
