"""The per-weight kernels of weight sharing on one large tensor (issue #16): nearest-centroid assignment by threshold
comparisons against the bucket table, and the key sort on one thread against the partitioned sort on two.

Values: N seeded N(0, 1) float32 values (default 16.8 M, mlp25m's largest weight); centroids at evenly spaced
quantiles. Each cell is the median wall time of ``--repeat`` calls in this process (the outputs are checked equal
to the one-thread, comparison results); the 1-minute load average is printed, since the machine's other work
stretches every cell (two threads only help when a second core is free).
Usage:
    nice -n 10 python bench/share_kernels.py [--values 16777216] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from onnxcomp.core import codebook
from onnxcomp.core.native import native


def median_time(function, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--values", type=int, default=1 << 24)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if native is None:
        raise SystemExit("onnxcomp._native is not built")
    values = np.random.default_rng(0).standard_normal(args.values).astype(np.float32)
    print(f"load average {os.getloadavg()[0]:.1f}, {args.values} values, median of {args.repeat}")
    print("| centroids | comparisons, 1 thread | bucket table, 1 thread | bucket table, 2 threads |\n|---|---|---|---|")
    for k in (16, 32, 64, 128, 256):
        centroids = np.unique(np.quantile(values, (np.arange(k) + 0.5) / k).astype(np.float32))
        plain, expected = median_time(lambda: native.assign(values, centroids, None, threads=1, use_table=False), args.repeat)
        cells = [f"{plain:.3f} s"]
        for threads in (1, 2):
            seconds, got = median_time(lambda: native.assign(values, centroids, None, threads=threads, use_table=True), args.repeat)
            assert np.array_equal(got, expected)
            cells.append(f"{seconds:.3f} s" + (" (below the table's 48 thresholds: comparisons)" if k - 1 < 48 else ""))
        print(f"| {k} | " + " | ".join(cells) + " |")
    keys = values.copy().view(np.uint32)
    codebook._flip_keys(keys, inverse=False)
    expected = np.sort(keys)
    row = []
    for workers in (1, 2):
        def run():
            copy = keys.copy()
            codebook._sort_keys(copy, workers)
            return copy
        seconds, got = median_time(run, args.repeat)
        assert np.array_equal(got, expected)
        row.append(f"{seconds:.3f} s")
    print("\n| key sort (copy included) | 1 thread | 2 threads (partitioned) |\n|---|---|---|\n| "
          f"{args.values} values | " + " | ".join(row) + " |")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
