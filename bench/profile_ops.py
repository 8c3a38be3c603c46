"""Where a model's run time goes, per operator type: onnxruntime's session profiling summed over runs.

Runs MODEL (original or compressed; the custom-op library is registered either way) on a seeded random input of
the given shape, once to warm up and then ``--runs`` times with profiling on, and prints each operator type's
kernel time per run, its share and its node count per run (the operators onnxruntime actually ran after its
graph optimisations: e.g. ``Conv`` of domain com.microsoft.nchwc for NCHWc-converted convolutions).

    python bench/profile_ops.py MODEL 6,3,48,192 [--dtype float|int32] [--runs 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile

import numpy as np
import onnxruntime as ort

import onnxcomp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("shape", help="input shape, comma-separated")
    parser.add_argument("--dtype", default="float", choices=["float", "int32"])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="intra_op_num_threads (0: onnxruntime's default)")
    args = parser.parse_args()
    shape = [int(s) for s in args.shape.split(",")]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, shape).astype(np.int32) if args.dtype == "int32" else rng.random(shape, dtype=np.float32)
    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(folder, "profile")
        session = ort.InferenceSession(args.model, onnxcomp.runtime.session_options(options), providers=["CPUExecutionProvider"])
        feeds = {session.get_inputs()[0].name: x}
        for _ in range(args.runs + 1):
            session.run(None, feeds)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    total: dict[str, float] = collections.defaultdict(float)
    nodes: collections.Counter = collections.Counter()
    runs = args.runs + 1  # the profile holds the warm-up run too
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            total[event["args"]["op_name"]] += event["dur"]
            nodes[event["args"]["op_name"]] += 1
    overall = sum(total.values())
    print(f"{args.model}: kernel time {overall / runs / 1e3:.2f} ms per run ({args.threads} thread(s), input {shape})")
    print("| operator | ms per run | share | nodes per run |")
    print("|---|---|---|---|")
    for op, micros in sorted(total.items(), key=lambda item: -item[1]):
        print(f"| {op} | {micros / runs / 1e3:.2f} | {100 * micros / overall:.1f} % | {nodes[op] // runs} |")


if __name__ == "__main__":
    main()
