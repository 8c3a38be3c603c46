"""Coded bytes of k-means, uniform and entropy-constrained codebooks at the errors a zoo run's records reach.

Usage: python bench/ecsq_study.py RUN MODEL [MODEL ...]   (runs under ~/.cache/onnxcomp-zoo/runs; the
originals under ~/.cache/onnxcomp-zoo/models/MODEL/model.onnx)

For every float record of the run, with the record's outliers kept exact in every variant, the smallest record (Huffman-coded indices + float32 codebook, as
onnxcomp/core/allocation.py estimates it) whose relative L2 error is no larger than the record's own:
  - record: the run's record itself (its indices' Huffman code, its codebook);
  - k-means 2^b: Lloyd iterations to a fixed point from quantile starts, 2^b - 1 values (the allocation's sizes);
  - k-means any K: the same, with any number of values up to 255 (bisected);
  - uniform: evenly spaced values and one Lloyd step (codebook.fit_sorted with ``levels``), count bisected;
  - ECSQ: entropy-constrained scalar quantisation (Chou, Lookabaugh and Gray 1989, the scalar case): each value
    goes to the codebook entry minimising (w - c_j)^2 + lambda * l_j with l_j = -log2 p_j, then each c_j moves
    to its cell's mean and p_j to its share, until nothing moves; started from uniform grids of several counts,
    lambda bisected to meet the error.
Also the worst-case error (einf) of each, relative to the record's. Channel-scaled records (versions 3 and 4) are
compared in their normalised values (the weight divided by its channel scales, outliers excluded), at the
record's own error there. Prints one row per model and, with -v, per weight.

With --channels, every candidate must also keep the worst live output channel's relative error (outliers.py's
damage D, the check ShareWeightsPass holds a uniform codebook to against k-means) no larger than the record's:
uniform grids of 4-255 values, and ECSQ from uniform (64, 128, 255 values) and k-means (63, 127, 255) starts over
a sweep of lambda; unscaled records only (the scaled ones are uniform grids already held to that check).

With --outlier-grid F,F,...: the allocation's own choice (allocation.Allocator.choose, the record's e2 as the
limit, the einf limit as in the defaults) with main's outlier fractions (allocation.OUTLIERS) and with the given
ones; k-means and uniform candidates (and channel-scaled ones for a scaled record); estimated bytes.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcomp.core import allocation, codebook, huffman, outliers, sidecar

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


def float_records(run: str, model: str):
    """(directory entry, decoded record, original weight) of each float record of the run's ``model`` output."""
    weights = load_weights(model)
    path = os.path.join(ZOO, "runs", run, f"{model}.onnxcomp")
    with open(path, "rb") as f:
        data = f.read()
    for entry in sidecar.read_directory(path):
        if entry.name in weights:
            record = sidecar.decode_record(data[entry.offset:entry.offset + entry.length])
            if record.value_type == sidecar.FLOAT32:
                yield entry, record, weights[entry.name]


NAMES = ["record", "k-means 2^b", "k-means any K", "uniform", "ECSQ"]


def measure(run: str, model: str, verbose: bool):
    totals = dict.fromkeys(NAMES + ["best of k-means 2^b, uniform", "best of k-means 2^b, uniform, ECSQ"], 0.0)
    worst_ratio = {n: [] for n in NAMES[1:]}
    scaled = count = 0
    for entry, record, original in float_records(run, model):
        w = original.astype(np.float64)
        if entry.transposed:
            w = w.T
        exact = np.zeros(w.size, bool)
        exact[record.outlier_positions] = True
        if record.scales is not None:  # normalised values and the record's codebook values, outliers excluded
            shape = [1] * w.ndim
            shape[record.scale_axis] = -1
            w = w / record.scales.astype(np.float64).reshape(shape)
            dense = np.where(exact, w.reshape(-1), record.codebook[record.indices].astype(np.float64))
            scaled += 1
        else:
            dense = record.to_dense().astype(np.float64).reshape(-1)
        w = w.reshape(-1)
        target_sse = float(np.sum((w - dense) ** 2))
        kept = w[~exact]
        own_counts = np.bincount(record.indices[~exact])
        own_counts = own_counts[own_counts > 0]
        own = (float((own_counts * huffman.code_lengths(own_counts)).sum()) / 8 + 4 * len(record.codebook),
               float(np.abs(w - dense).max()))
        count += 1
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
    return totals, worst_ratio, (count, scaled)


def output_rows(shape: tuple[int, ...], transposed: bool):
    """[output channels, inputs] of an array of the record's ``shape``: axis 0 of a convolution [O, I, k...] and of a
    transposed record (W^T [N, K]), axis 1 of a MatMul weight [K, N] (share_weights.output_axis)."""
    axis = 1 if len(shape) == 2 and not transposed else 0
    return lambda a: np.moveaxis(a.reshape(shape), axis, 0).reshape(shape[axis], -1)


def measure_channels(run: str, model: str, verbose: bool) -> dict[str, float]:
    """--channels: per unscaled record, the smallest bytes meeting both its relative L2 error and its damage."""
    totals = dict.fromkeys(["record", "uniform", "ECSQ from uniform", "ECSQ from k-means", "best of record, uniform",
                            "best of all"], 0.0)
    for entry, record, original in float_records(run, model):
        if record.scales is not None:
            continue
        w = original.astype(np.float64)
        w = w.T if entry.transposed else w
        rows = output_rows(w.shape, entry.transposed)
        flat = w.reshape(-1)
        exact = np.zeros(flat.size, bool)
        exact[record.outlier_positions] = True
        decoded = record.to_dense().astype(np.float64).reshape(-1)
        reference = rows(flat.astype(np.float32))
        damage = outliers.channel_damage(reference, rows(decoded))
        target = float(np.sum((flat - decoded) ** 2)) * (1 + 1e-9)
        positions = np.flatnonzero(~exact)
        kept = flat[positions]
        order = np.argsort(kept, kind="stable")
        values = Sorted(kept)
        counts = np.bincount(record.indices[~exact])
        counts = counts[counts > 0]
        own = float((counts * huffman.code_lengths(counts)).sum()) / 8 + 4 * len(record.codebook)

        def size_if_accepted(c, bounds):
            sse, cell_counts, _ = values.score(c, bounds)
            if sse > target:
                return math.inf
            trial = flat.copy()
            sorted_values = np.empty(len(kept))
            sorted_values[order] = np.repeat(c, np.diff(bounds))
            trial[positions] = sorted_values
            return coded_bytes(cell_counts) if outliers.channel_damage(reference, rows(trial)) <= damage else math.inf

        def nearest(c):
            c = np.asarray(c, np.float64)
            return c, np.concatenate([[0], np.searchsorted(values.x, (c[:-1] + c[1:]) / 2, side="right"), [len(values.x)]])

        f32 = values.x.astype(np.float32)
        uniform = min(size_if_accepted(*nearest(codebook.fit_sorted(f32, n, levels=n))) for n in range(4, 256, 3))
        variance = float(np.mean(kept * kept))
        starts = {"ECSQ from uniform": [codebook.uniform_start(values.x[0], values.x[-1], n) for n in (64, 128, 255)],
                  "ECSQ from k-means": [codebook.fit_sorted(f32, n) for n in (63, 127, 255)]}
        row = {"record": own, "uniform": min(uniform, own)}
        for name, found in starts.items():
            best = math.inf
            for start in found:
                for lam in variance * np.geomspace(1e-5, 1e-1, 17):
                    c, bounds = ecsq(values, start, lam)
                    if len(c) <= MAX_VALUES:
                        best = min(best, size_if_accepted(c, bounds))
            row[name] = min(best, own)
        row["best of record, uniform"] = row["uniform"]
        row["best of all"] = min(row.values())
        for name in totals:
            totals[name] += row[name]
        if verbose:
            print(f"  {entry.name} {flat.size} damage {damage:.3f} " + " ".join(f"{n}={v / 1e3:.1f}kB" for n, v in row.items()),
                  flush=True)
    return totals


def measure_outlier_grid(run: str, model: str, fractions: tuple[float, ...], verbose: bool) -> dict[str, float]:
    """--outlier-grid: estimated bytes of the allocation's choice at each record's e2, with main's outlier fractions
    and with ``fractions``."""
    totals = {"main": 0.0, "grid": 0.0}
    for entry, record, original in float_records(run, model):
        w = original.astype(np.float32)
        oriented = (w.T if entry.transposed else w).astype(np.float64)
        e2 = float(np.linalg.norm(oriented - record.to_dense()) / np.linalg.norm(oriented)) * (1 + 1e-6)
        scaled = record.scales is not None
        families = ("kmeans", "uniform", "scaled") if scaled else ("kmeans", "uniform")
        row = {}
        for name, grid in (("main", allocation.OUTLIERS), ("grid", fractions)):
            found = allocation.Allocator(w, outliers=grid, channel_axis=0 if scaled else None).choose(
                1.0, 4.0 * w.size, l2_limit=e2, families=families)
            row[name] = found.bytes if found is not None else 4.0 * w.size
            totals[name] += row[name]
        if verbose:
            print(f"  {entry.name} {w.size} e2 {e2:.4f} main {row['main'] / 1e3:.1f}kB grid {row['grid'] / 1e3:.1f}kB", flush=True)
    return totals


def main(argv: list[str]) -> None:
    verbose = "-v" in argv
    channels = "--channels" in argv
    grid = None
    if "--outlier-grid" in argv:
        at = argv.index("--outlier-grid")
        grid = tuple(float(f) for f in argv[at + 1].split(","))
        argv = argv[:at] + argv[at + 2:]
    argv = [a for a in argv if a not in ("-v", "--channels")]
    if len(argv) < 2:
        raise SystemExit(__doc__)
    if grid is not None:
        print(f"| model | outlier fractions {allocation.OUTLIERS} | {grid} | change |")
        print("|---|---|---|---|")
        for model in argv[1:]:
            t = measure_outlier_grid(argv[0], model, grid, verbose)
            print(f"| {model} | {t['main'] / 1e3:,.1f} | {t['grid'] / 1e3:,.1f} | {t['grid'] / t['main'] - 1:+.2%} |", flush=True)
        return
    if channels:
        print("| model | record | uniform | ECSQ from uniform | ECSQ from k-means | best of record, uniform | best of all |")
        print("|---|---|---|---|---|---|---|")
        for model in argv[1:]:
            t = measure_channels(argv[0], model, verbose)
            print(f"| {model} | " + " | ".join(f"{v / 1e3:,.1f}" for v in t.values()) + " |", flush=True)
        return
    names = NAMES + ["best of k-means 2^b, uniform", "best of k-means 2^b, uniform, ECSQ"]
    print("| model | " + " | ".join(names) + " | ECSQ / best of k-means, uniform | records (of them scaled) |")
    print("|---|" + "---|" * (len(names) + 2))
    for model in argv[1:]:
        totals, worst_ratio, scaled = measure(argv[0], model, verbose)
        gain = totals["best of k-means 2^b, uniform, ECSQ"] / totals["best of k-means 2^b, uniform"]
        print(f"| {model} | " + " | ".join(f"{totals[n] / 1e3:,.1f}" for n in names) + f" | {gain:.3f} | {scaled[0]} ({scaled[1]}) |")
        print("  worst-case error / record's (median): " + ", ".join(
            f"{n} {np.median(v):.2f}" for n, v in worst_ratio.items() if v), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
