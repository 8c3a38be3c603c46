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

With ``--nodes N`` (and ``--zoo``) the two sessions run alternately in one process instead, so both see the same
load, and it prints their median process CPU time per run, each operator type's sum of per-node medians, and the N
slowest nodes of each (node names are the original's where the compressed node kept them):

    python bench/profile_ops.py --zoo magika --run defaults --runs 200 --threads 1 --nodes 20
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
    parser.add_argument("--nodes", type=int, default=0,
                        help="with --zoo: alternate the two sessions and list this many slowest nodes of each")
    args = parser.parse_args()
    if args.zoo:
        if not args.run:
            parser.error("--zoo needs --run")
        original, feeds = zoo_feeds(args.zoo, args.batch)
        compressed = os.path.expanduser(f"~/.cache/onnxcomp-zoo/runs/{args.run}/{args.zoo}.onnx")
        if args.nodes:
            profile_nodes([original, compressed], feeds, args.runs, args.threads, args.nodes)
            return
        for path in (original, compressed):
            profile(path, feeds, args.runs, args.threads)
        return
    if not args.model or not args.shape:
        parser.error("give MODEL and SHAPE, or --zoo NAME --run RUN")
    shape = [int(s) for s in args.shape.split(",")]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, shape).astype(np.int32) if args.dtype == "int32" else rng.random(shape, dtype=np.float32)
    profile(args.model, x, args.runs, args.threads)


def _session(path: str, threads: int, prefix: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = prefix
    return ort.InferenceSession(path, onnxcomp.runtime.session_options(options), providers=["CPUExecutionProvider"])


def _node_times(session: ort.InferenceSession) -> dict[str, tuple[str, float]]:
    """{node name: (operator type, median kernel microseconds over the profiled runs after the first)}."""
    with open(session.end_profiling()) as f:
        events = json.load(f)
    times: dict[str, list[float]] = collections.defaultdict(list)
    ops: dict[str, str] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            name = event["name"][: -len("_kernel_time")]
            times[name].append(event["dur"])
            ops[name] = event["args"]["op_name"]
    return {name: (ops[name], float(np.median(t[1:] if len(t) > 1 else t))) for name, t in times.items()}


def profile_nodes(paths: list[str], feeds: dict, runs: int, threads: int, top: int) -> None:
    """Runs the sessions of ``paths`` in turn ``runs`` times (after a warm-up) with profiling on; prints each one's
    median process CPU time per run, per operator type the sum of its nodes' median kernel times, and the ``top``
    slowest nodes. Profiling adds a fixed cost per node to both, so the sums exceed the CPU times."""
    with tempfile.TemporaryDirectory() as folder:
        sessions = [_session(path, threads, os.path.join(folder, f"profile{i}")) for i, path in enumerate(paths)]
        for session in sessions:
            session.run(None, feeds)
        cpu: list[list[float]] = [[] for _ in sessions]
        for _ in range(runs):
            for times, session in zip(cpu, sessions):
                start = time.process_time()
                session.run(None, feeds)
                times.append(time.process_time() - start)
        tables = [_node_times(session) for session in sessions]
    for path, times, table in zip(paths, cpu, tables):
        by_op: dict[str, float] = collections.defaultdict(float)
        count: collections.Counter = collections.Counter()
        for op, micros in table.values():
            by_op[op] += micros
            count[op] += 1
        print(f"{path}: CPU {np.median(times) * 1e3:.3f} ms per run (median of {runs}, {threads} thread(s)), "
              f"sum of node medians {sum(by_op.values()) / 1e3:.3f} ms")
        print("| operator | ms per run (sum of node medians) | nodes |")
        print("|---|---|---|")
        for op, micros in sorted(by_op.items(), key=lambda item: -item[1]):
            print(f"| {op} | {micros / 1e3:.3f} | {count[op]} |")
        print("| node | operator | us per run (median) |")
        print("|---|---|---|")
        for name, (op, micros) in sorted(table.items(), key=lambda item: -item[1][1])[:top]:
            print(f"| {name} | {op} | {micros:.1f} |")


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
