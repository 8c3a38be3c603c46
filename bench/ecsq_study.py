"""Coded bytes of k-means, uniform and entropy-constrained codebooks at the errors a zoo run's records reach.

Usage: python bench/ecsq_study.py RUN MODEL [MODEL ...]   (runs under ~/.cache/onnxcomp-zoo/runs; the
originals under ~/.cache/onnxcomp-zoo/models/MODEL/model.onnx)

For every unscaled float record of the run (channel-scaled records are counted apart), with the record's
outliers kept exact in every variant, the smallest record (Huffman-coded indices + float32 codebook, as
onnxcomp/core/allocation.py estimates it) whose relative L2 error is no larger than the record's own:
  - record: the run's record itself (its indices' Huffman code, its codebook);
  - k-means 2^b: Lloyd iterations to a fixed point from quantile starts, 2^b - 1 values (the allocation's sizes);
  - k-means any K: the same, with any number of values up to 255 (bisected);
  - uniform: evenly spaced values and one Lloyd step (codebook.fit_sorted with ``levels``), count bisected;
  - ECSQ: entropy-constrained scalar quantisation (Chou, Lookabaugh and Gray 1989, the scalar case): each value
    goes to the codebook entry minimising (w - c_j)^2 + lambda * l_j with l_j = -log2 p_j, then each c_j moves
    to its cell's mean and p_j to its share, until nothing moves; started from uniform grids of several counts,
    lambda bisected to meet the error.
Also the worst-case error (einf) of each, relative to the record's. Prints one row per model and, with -v, per
weight.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcomp.core import codebook, huffman, sidecar

ZOO = os.path.expanduser("~/.cache/onnxcomp-zoo")
MAX_VALUES = 255


def coded_bytes(counts: np.ndarray) -> float:
    counts = np.asarray(counts, dtype=np.int64)
    lengths = huffman.code_lengths(counts)
    return float((counts * lengths).sum()) / 8 + 4 * (np.count_nonzero(counts) + 1)


class Sorted:
    """Sorted values with prefix sums: the SSE, counts and worst error of any contiguous partition."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = np.sort(x.astype(np.float64))
        self.s1 = np.concatenate([[0.0], np.cumsum(self.x)])
        self.s2 = np.concatenate([[0.0], np.cumsum(self.x * self.x)])

    def score(self, centroids: np.ndarray, bounds: np.ndarray):
        """(sse, counts, worst abs error) of cells [bounds[j], bounds[j+1]) decoded to centroids[j]."""
        lo, hi = bounds[:-1], bounds[1:]
        counts = (hi - lo).astype(np.float64)
        sse = float(np.sum((self.s2[hi] - self.s2[lo]) - 2 * centroids * (self.s1[hi] - self.s1[lo]) + counts * centroids ** 2))
        full = counts > 0
        x = self.x
        worst = max(float(np.max(np.abs(x[lo[full]] - centroids[full]))), float(np.max(np.abs(x[hi[full] - 1] - centroids[full]))))
        return max(sse, 0.0), counts, worst

    def nearest(self, centroids: np.ndarray):
        c = np.asarray(centroids, dtype=np.float64)
        bounds = np.concatenate([[0], np.searchsorted(self.x, (c[:-1] + c[1:]) / 2, side="right"), [len(self.x)]])
        return self.score(c, bounds)


def envelope(c: np.ndarray, cost: np.ndarray):
    """Indices of the lines y = cost_j - 2 c_j x (c ascending) on the lower envelope, and its breakpoints."""
    hull: list[int] = []
    cuts: list[float] = []
    for j in range(len(c)):
        while hull:
            i = hull[-1]
            if c[j] == c[i]:
                if cost[j] < cost[i]:
                    hull.pop()
                    cuts.pop() if cuts else None
                    continue
                break
            x = (cost[j] - cost[i]) / (2 * (c[j] - c[i]))
            if cuts and x <= cuts[-1]:
                hull.pop()
                cuts.pop()
                continue
            break
        if hull and c[j] == c[hull[-1]]:
            continue
        if hull:
            i = hull[-1]
            cuts.append((cost[j] - cost[i]) / (2 * (c[j] - c[i])))
        hull.append(j)
    return np.array(hull), np.array(cuts)


def ecsq(data: Sorted, start: np.ndarray, lam: float, iterations: int = 60):
    """ECSQ from ``start`` at multiplier ``lam`` (squared error per bit): (centroids, bounds)."""
    x, n = data.x, len(data.x)
    c = np.asarray(start, dtype=np.float64)
    bounds = np.concatenate([[0], np.searchsorted(x, (c[:-1] + c[1:]) / 2, side="right"), [n]])
    for _ in range(iterations):
        counts = np.diff(bounds)
        keep = counts > 0
        c = ((data.s1[bounds[1:]] - data.s1[bounds[:-1]])[keep] / counts[keep])
        lengths = np.log2(n / counts[keep])
        hull, cuts = envelope(c, c * c + lam * lengths)
        c = c[hull]
        new = np.concatenate([[0], np.searchsorted(x, cuts, side="right"), [n]]) if len(cuts) else np.array([0, n])
        if len(new) == len(bounds) and np.array_equal(new, bounds):
            break
        bounds = new
    counts = np.diff(bounds)
    keep = counts > 0
    c = (data.s1[bounds[1:]] - data.s1[bounds[:-1]])[keep] / counts[keep]
    bounds = np.concatenate([[0], np.cumsum(counts[keep])])
    return c, bounds


def smallest(fits, target_sse):
    """min bytes over the fits (iterable of (sse, counts, worst)) meeting target_sse: (bytes, worst)."""
    best = (math.inf, math.nan)
    for sse, counts, worst in fits:
        if sse <= target_sse:
            size = coded_bytes(counts)
            if size < best[0]:
                best = (size, worst)
    return best


def bisect_count(fit, target_sse, low=2, high=MAX_VALUES):
    """The fewest values (fit(count) -> (sse, counts, worst)) meeting target_sse, and that fit."""
    top = fit(high)
    if top[0] > target_sse:
        return None
    while high - low > 1:
        middle = (low + high) // 2
        if fit(middle)[0] <= target_sse:
            high = middle
        else:
            low = middle
    return fit(high)


def study_weight(values: np.ndarray, target_sse: float, variance: float):
    data = Sorted(values)
    f32 = data.x.astype(np.float32)
    rows = {}

    def kmeans(count):
        return data.nearest(codebook.fit_sorted(f32, count))

    def uniform(count):
        return data.nearest(codebook.fit_sorted(f32, count, levels=count))

    rows["k-means 2^b"] = smallest((kmeans((1 << b) - 1) for b in range(2, 9)), target_sse)
    fit = bisect_count(kmeans, target_sse)
    rows["k-means any K"] = (math.inf, math.nan) if fit is None else smallest([fit], target_sse)
    fit = bisect_count(uniform, target_sse)
    rows["uniform"] = (math.inf, math.nan) if fit is None else smallest([fit], target_sse)
    # uniform: the bisected count is the smallest meeting the error; a few more values may still code smaller
    base = 255 if fit is None else int(np.count_nonzero(fit[1]))
    more = [uniform(min(MAX_VALUES, int(round(base * r)))) for r in (1.05, 1.1, 1.2)]
    rows["uniform"] = min(rows["uniform"], smallest(more, target_sse), key=lambda r: r[0])
    best = (math.inf, math.nan)
    for ratio in (1.0, 1.25, 1.6, 2.0):
        start = codebook.uniform_start(data.x[0], data.x[-1], min(MAX_VALUES, int(round(base * ratio))))
        low, high = 0.0, 64.0 * variance
        for _ in range(24):  # lambda: larger -> fewer bits, more error
            middle = (low + high) / 2
            c, bounds = ecsq(data, start, middle)
            if len(c) <= MAX_VALUES and data.score(c, bounds)[0] <= target_sse:
                low = middle
            else:
                high = middle
        c, bounds = ecsq(data, start, low)
        if len(c) <= MAX_VALUES:
            best = min(best, smallest([data.score(c, bounds)], target_sse), key=lambda r: r[0])
    rows["ECSQ"] = best
    return rows


def load_weights(model: str) -> dict[str, np.ndarray]:
    graph = onnx.load(os.path.join(ZOO, "models", model, "model.onnx")).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            weights[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return weights


NAMES = ["record", "k-means 2^b", "k-means any K", "uniform", "ECSQ"]


def measure(run: str, model: str, verbose: bool):
    weights = load_weights(model)
    path = os.path.join(ZOO, "runs", run, f"{model}.onnxcomp")
    with open(path, "rb") as f:
        data = f.read()
    totals = dict.fromkeys(NAMES + ["best of k-means 2^b, uniform", "best of k-means 2^b, uniform, ECSQ"], 0.0)
    worst_ratio = {n: [] for n in NAMES[1:]}
    scaled = 0
    for entry in sidecar.read_directory(path):
        if entry.name not in weights:
            continue
        record = sidecar.decode_record(data[entry.offset:entry.offset + entry.length])
        if record.value_type != sidecar.FLOAT32:
            continue
        if record.scales is not None:
            scaled += len(record.indices)
            continue
        w = weights[entry.name].astype(np.float64)
        if entry.transposed:
            w = w.T
        w = w.reshape(-1)
        exact = np.zeros(w.size, bool)
        exact[record.outlier_positions] = True
        dense = record.to_dense().astype(np.float64).reshape(-1)
        target_sse = float(np.sum((w - dense) ** 2))
        kept = w[~exact]
        own_counts = np.bincount(record.indices[~exact])
        own_counts = own_counts[own_counts > 0]
        own = (float((own_counts * huffman.code_lengths(own_counts)).sum()) / 8 + 4 * len(record.codebook),
               float(np.abs(w - dense).max()))
        rows = study_weight(kept, target_sse * (1 + 1e-9), float(np.mean(kept * kept)))
        rows["record"] = own
        k2, un, ec = rows["k-means 2^b"][0], rows["uniform"][0], rows["ECSQ"][0]
        rows["best of k-means 2^b, uniform"] = (min(k2, un), math.nan)
        rows["best of k-means 2^b, uniform, ECSQ"] = (min(k2, un, ec), math.nan)
        for name in totals:
            value = rows[name][0]
            totals[name] += value if math.isfinite(value) else own[0]
        for name in NAMES[1:]:
            if math.isfinite(rows[name][0]):
                worst_ratio[name].append(rows[name][1] / max(own[1], 1e-30))
        if verbose:
            e2 = math.sqrt(target_sse / float(np.sum(w * w)))
            print(f"  {entry.name} {w.size} e2 {e2:.4f} K {len(record.codebook)} "
                  + " ".join(f"{n}={rows[n][0] / 1e3:.1f}kB" for n in rows), flush=True)
    return totals, worst_ratio, scaled


def main(argv: list[str]) -> None:
    verbose = "-v" in argv
    argv = [a for a in argv if a != "-v"]
    if len(argv) < 2:
        raise SystemExit(__doc__)
    names = NAMES + ["best of k-means 2^b, uniform", "best of k-means 2^b, uniform, ECSQ"]
    print("| model | " + " | ".join(names) + " | ECSQ / best of k-means, uniform | scaled records (values) |")
    print("|---|" + "---|" * (len(names) + 2))
    for model in argv[1:]:
        totals, worst_ratio, scaled = measure(argv[0], model, verbose)
        gain = totals["best of k-means 2^b, uniform, ECSQ"] / totals["best of k-means 2^b, uniform"]
        print(f"| {model} | " + " | ".join(f"{totals[n] / 1e3:,.1f}" for n in names) + f" | {gain:.3f} | {scaled:,} |")
        print("  worst-case error / record's (median): " + ", ".join(
            f"{n} {np.median(v):.2f}" for n, v in worst_ratio.items() if v), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
