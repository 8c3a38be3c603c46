"""Session creation time and outputs of two zoo runs' outputs of the same model, alternating in one process.

For a change to the graph only (the records unchanged, e.g. value_info left out): creates a session of run A's
output and of run B's in turn (``--repeats`` times each, one thread, the library registered), prints the median
wall time of each creation and B / A, and checks that both give byte-identical outputs on the model's evaluation
inputs (every output, every batch of ``--batch`` samples; a difference exits with status 1).

    python bench/session_ab.py --runs defaults,ratio3-vi --models yolov8n-nudenet,ddddocr-det [--repeats 20]

A change to the custom-op library alone: ``--libraries A.so,B.so`` registers library A for run A's sessions and
library B for run B's (an empty name: the installed one), so ``--runs s12-defaults,s12-defaults`` times two
libraries' kernel creation on the same output. ``--cpu`` times process CPU time instead of wall time (on a
shared machine, the queue for a core is not the code's).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

import onnxcomp
from profile_ops import zoo_feeds

RUNS = os.path.expanduser("~/.cache/onnxcomp-zoo/runs")


def session(path: str, library: str = "") -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.register_custom_ops_library(library or onnxcomp.runtime.library_path())
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="two zoo run names, A,B")
    parser.add_argument("--models", required=True, help="comma-separated zoo model names")
    parser.add_argument("--repeats", type=int, default=20, help="session creations of each output")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--libraries", help="two custom-op library paths, A,B, for the sessions of runs A and B "
                                            "(empty: the installed library)")
    parser.add_argument("--cpu", action="store_true", help="process CPU time instead of wall time")
    args = parser.parse_args()
    runs = args.runs.split(",")
    if len(runs) != 2:
        parser.error("--runs takes two names, A,B")
    libraries = [os.path.abspath(p) if p else "" for p in (args.libraries or ",").split(",")]
    if len(libraries) != 2:
        parser.error("--libraries takes two paths (either may be empty)")
    clock = time.process_time if args.cpu else time.perf_counter
    different = False
    print("| model | create A ms | create B ms | B / A | outputs |\n|---|---|---|---|---|")
    for name in args.models.split(","):
        paths = [os.path.join(RUNS, run, name + ".onnx") for run in runs]
        times: list[list[float]] = [[], []]
        for _ in range(args.repeats):
            for i, (path, library) in enumerate(zip(paths, libraries)):
                start = clock()
                session(path, library)
                times[i].append(clock() - start)
        _, feeds = zoo_feeds(name, args.batch)
        sessions = [session(path, library) for path, library in zip(paths, libraries)]
        same = True
        for feed in feeds if isinstance(feeds, list) else [feeds]:
            a, b = (s.run(None, feed) for s in sessions)
            same &= all(x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y, equal_nan=True)
                        and x.tobytes() == y.tobytes() for x, y in zip(a, b))
        different |= not same
        ma, mb = (1000 * statistics.median(t) for t in times)
        print(f"| {name} | {ma:.1f} | {mb:.1f} | {mb / ma:.3f} | {'byte-identical' if same else '**differ**'} |")
    sys.exit(1 if different else 0)


if __name__ == "__main__":
    main()
