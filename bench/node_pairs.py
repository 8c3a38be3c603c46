"""Two model files of one zoo model, node for node: per-node median kernel times in execution order, alternating.

``bench/profile_ops.py --nodes`` lists each graph's slowest nodes; this pairs the convolutions of two graphs that run
the same layers in the same order (e.g. a compressed output and its ``onnxcomp decompress`` copy, whose Conv nodes
onnxruntime converts to its NCHWc kernels) so a per-node difference shows up. Both sessions run on one thread,
alternating, on the model's evaluation inputs at the given batch; prints each session's median process CPU time per
run, then one row per convolution (Conv, FusedConv, CodebookConv; i-th of A against i-th of B): the two median kernel
times (microseconds, onnxruntime's session profiling, which adds a fixed cost per node to both) and B - A, then the
sums. A and B are paths, or ``orig`` for the zoo model's original.

    python bench/node_pairs.py --zoo pplcnet-orientation A.onnx B.onnx [--batch 1] [--runs 300]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time

import numpy as np
import onnxruntime as ort

import onnxcomp
from profile_ops import zoo_feeds

CONV_OPS = ("Conv", "FusedConv", "CodebookConv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", required=True, help="the zoo model whose evaluation inputs to run")
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    original, feeds = zoo_feeds(args.zoo, args.batch)
    paths = [original if p == "orig" else p for p in (args.a, args.b)]
    with tempfile.TemporaryDirectory() as folder:
        sessions = []
        for i, path in enumerate(paths):
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(folder, f"profile{i}")
            sessions.append(ort.InferenceSession(path, onnxcomp.runtime.session_options(options),
                                                 providers=["CPUExecutionProvider"]))
        for session in sessions:
            session.run(None, feeds)
        cpu: list[list[float]] = [[] for _ in sessions]
        for _ in range(args.runs):
            for times, session in zip(cpu, sessions):
                start = time.process_time()
                session.run(None, feeds)
                times.append(time.process_time() - start)
        tables = [_ordered_nodes(session.end_profiling()) for session in sessions]
    for path, times in zip(paths, cpu):
        print(f"{path}: CPU {np.median(times) * 1e3:.3f} ms per run (median of {args.runs})")
    convs = [[row for row in table if row[1] in CONV_OPS] for table in tables]
    if len(convs[0]) != len(convs[1]):
        print(f"note: {len(convs[0])} and {len(convs[1])} convolutions; pairing the first {min(map(len, convs))}")
    print("| A node | A us | B node | B us | B - A |")
    print("|---|---|---|---|---|")
    for (name_a, _, a), (name_b, _, b) in zip(*convs):
        print(f"| {name_a} | {a:.1f} | {name_b} | {b:.1f} | {b - a:+.1f} |")
    sums = [sum(row[2] for row in rows) for rows in convs]
    others = [sum(row[2] for row in table if row[1] not in CONV_OPS) for table in tables]
    print(f"convolutions: A {sums[0]:.1f} us, B {sums[1]:.1f} us; other nodes: A {others[0]:.1f} us, B {others[1]:.1f} us")


def _ordered_nodes(profile: str) -> list[tuple[str, str, float]]:
    """(node name, operator, median kernel microseconds over the runs after the first) in execution order."""
    with open(profile) as f:
        events = json.load(f)
    times: dict[str, list[float]] = collections.defaultdict(list)
    first: dict[str, float] = {}
    ops: dict[str, str] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            name = event["name"][: -len("_kernel_time")]
            times[name].append(event["dur"])
            first.setdefault(name, event["ts"])
            ops[name] = event["args"]["op_name"]
    return [(name, ops[name], float(np.median(times[name][1:] or times[name])))
            for name in sorted(times, key=first.__getitem__)]


if __name__ == "__main__":
    main()
