"""Two compressed outputs of one zoo model against each other and the original: CPU time per run, alternating.

``bench/zoo.py speed`` times each run's output against the original in its own process, so two runs' ratios
differ by the machine's load drift between them (on a shared machine, several per cent). This script creates the
original and the outputs of zoo runs A and B in one process and runs them in turn (original, A, B, original, ...)
on the model's evaluation inputs at the given batch, so B / A compares the two outputs under the same load.
Prints the median process CPU time per run of each, A / original, B / original and B / A, and whether A's and B's
outputs on the evaluation inputs are bit for bit the same (else their largest absolute difference).

    python bench/speed_ab.py --runs defaults,conv-4 --models ppocr-cls,yolov8n-nudenet [--batch 1] [--repeats 60]

A change to the custom-op library alone leaves the outputs as they are: ``--libraries A.so,B.so`` registers library
A for run A's session and library B for run B's (an empty name: the installed one), so the same run twice
(``--runs defaults,defaults``) compares two libraries in one process.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import onnxruntime as ort

import onnxcomp
from profile_ops import zoo_feeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="two zoo run names, A,B")
    parser.add_argument("--models", required=True, help="comma-separated zoo model names")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=60, help="timed runs of each session (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="intra_op_num_threads")
    parser.add_argument("--libraries", help="two custom-op library paths, A,B, for the sessions of runs A and B "
                                            "(empty: the installed library)")
    args = parser.parse_args()
    runs = args.runs.split(",")
    if len(runs) != 2:
        parser.error("--runs takes two run names")
    libraries = args.libraries.split(",") if args.libraries else ["", ""]
    if len(libraries) != 2:
        parser.error("--libraries takes two paths (either may be empty)")
    libraries = [os.path.abspath(path) if path else onnxcomp.runtime.library_path() for path in libraries]
    for path in libraries:
        if not os.path.isfile(path):
            parser.error(f"no library at {path}")
    print(f"| model | batch | original ms | {runs[0]} / original | {runs[1]} / original | {runs[1]} / {runs[0]} | "
          "A, B outputs |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        original, feeds = zoo_feeds(name, args.batch)
        paths = [original] + [os.path.expanduser(f"~/.cache/onnxcomp-zoo/runs/{run}/{name}.onnx") for run in runs]
        sessions = []
        for path, library in zip(paths, [libraries[0]] + libraries):
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            options.register_custom_ops_library(library)
            sessions.append(ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]))
        results = [session.run(None, feeds) for session in sessions]  # also the warm-up
        same = all(np.array_equal(x, y) for x, y in zip(results[1], results[2]))
        outputs = "identical" if same else "max diff %.3g" % max(
            float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
            for x, y in zip(results[1], results[2]))
        cpu = [[] for _ in sessions]
        for _ in range(args.repeats):
            for times, session in zip(cpu, sessions):
                start = time.process_time()
                session.run(None, feeds)
                times.append(time.process_time() - start)
        o, a, b = (float(np.median(t)) for t in cpu)
        print(f"| {name} | {args.batch} | {o * 1e3:.2f} | {a / o:.3f} | {b / o:.3f} | {b / a:.3f} | {outputs} |",
              flush=True)


if __name__ == "__main__":
    main()
