"""Where a model's run time goes, per operator type: onnxruntime's session profiling summed over runs.

Runs MODEL (original or compressed; the custom-op library is registered either way) on a seeded random input of
the given shape, once to warm up and then ``--runs`` times with profiling on, and prints each operator type's
kernel time per run, its share and its node count per run (the operators onnxruntime actually ran after its
graph optimisations: e.g. ``Conv`` of domain com.microsoft.nchwc for NCHWc-converted convolutions).

    python bench/profile_ops.py MODEL 6,3,48,192 [--dtype float|int32] [--runs 10] [--threads 1]

With ``--zoo NAME --run RUN [--batch B]`` it profiles a real-model zoo model (bench/zoo.py) instead: the original
(~/.cache/onnxcomp-zoo/models/NAME) and its compressed output of zoo run RUN, one after the other, on the model's
own evaluation inputs at batch B (default 1), and prints both tables:

    python bench/profile_ops.py --zoo pplcnet-orientation --run defaults --runs 20 --threads 1
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


def zoo_feeds(name: str, batch: int) -> tuple[str, dict]:
    """(original model path, feeds at ``batch``) of a zoo model, from its prepared evaluation data."""
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import zoo  # bench/zoo/
    model = zoo.BY_NAME[name]
    with np.load(model.folder / "eval.npz", allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    return str(model.onnx_path), model.feeds(data, batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("shape", nargs="?", help="input shape, comma-separated")
    parser.add_argument("--dtype", default="float", choices=["float", "int32"])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="intra_op_num_threads (0: onnxruntime's default)")
    parser.add_argument("--zoo", help="a zoo model's name: profile its original and its output of --run")
    parser.add_argument("--run", help="the zoo run whose output to profile (with --zoo)")
    parser.add_argument("--batch", type=int, default=1, help="batch of the zoo model's evaluation inputs")
    args = parser.parse_args()
    if args.zoo:
        if not args.run:
            parser.error("--zoo needs --run")
        original, feeds = zoo_feeds(args.zoo, args.batch)
        compressed = os.path.expanduser(f"~/.cache/onnxcomp-zoo/runs/{args.run}/{args.zoo}.onnx")
        for path in (original, compressed):
            profile(path, feeds, args.runs, args.threads)
        return
    if not args.model or not args.shape:
        parser.error("give MODEL and SHAPE, or --zoo NAME --run RUN")
    shape = [int(s) for s in args.shape.split(",")]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, shape).astype(np.int32) if args.dtype == "int32" else rng.random(shape, dtype=np.float32)
    profile(args.model, x, args.runs, args.threads)


def profile(path: str, x, runs: int, threads: int) -> None:
    """Prints the kernel time per operator type of ``runs`` profiled runs of ``path`` on ``x`` (an array for the
    first input, or a feeds dict)."""
    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(folder, "profile")
        session = ort.InferenceSession(path, onnxcomp.runtime.session_options(options), providers=["CPUExecutionProvider"])
        feeds = x if isinstance(x, dict) else {session.get_inputs()[0].name: x}
        for _ in range(runs + 1):
            session.run(None, feeds)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    total: dict[str, float] = collections.defaultdict(float)
    nodes: collections.Counter = collections.Counter()
    runs += 1  # the profile holds the warm-up run too
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            total[event["args"]["op_name"]] += event["dur"]
            nodes[event["args"]["op_name"]] += 1
    overall = sum(total.values())
    shapes = {name: list(value.shape) for name, value in feeds.items()}
    print(f"{path}: kernel time {overall / runs / 1e3:.2f} ms per run ({threads} thread(s), inputs {shapes})")
    print("| operator | ms per run | share | nodes per run |")
    print("|---|---|---|---|")
    for op, micros in sorted(total.items(), key=lambda item: -item[1]):
        print(f"| {op} | {micros / runs / 1e3:.2f} | {100 * micros / overall:.1f} % | {nodes[op] // runs} |")


if __name__ == "__main__":
    main()
