"""Per-layer weight sharing: a 1-D k-means codebook and nearest-centroid indices.

Deep Compression clusters each layer's weights into 2^b shared values and stores a b-bit index per weight.
The centroids minimise the within-cluster squared error sum_i u_i (w_i - c[idx_i])^2 (u_i = 1, or optional
importance weights u_i >= 0). Initialisation matters in 1-D: ``linear`` (evenly spaced between min and max,
the paper's choice) leaves most centroids empty on heavy-tailed tensors, ``quantile`` (at the (j + 1/2)/k
quantiles of the values) follows the density; a linear start is first moved by scikit-learn's KMeans on a
sample, which relocates empty clusters (see _linear_start). Lloyd iterations over all values then run to a
fixed point (at most REFINE_ITERATIONS), cheaply: on sorted values each cluster is a contiguous run, so the nearest
centroid is a binary search among the midpoints and each cluster's mean a difference of prefix sums, and
one iteration costs O(k log n) whatever n is. The quantile fit uses no random numbers.

The loops over all values (Lloyd iterations, assignment) run in the compiled module ``onnxcomp._native``
(csrc/python/native.cc). ``refine_reference`` and ``assign_reference`` are the straightforward numpy
versions; the compiled ones give byte-identical results (tests/test_native.py), and stand in for them if the
module is missing. Only float32 copies of a tensor are made (its sorted values; indices are uint8/uint16).
"""

from __future__ import annotations

import threading

import numpy as np

from onnxcomp import parallel
from onnxcomp.core.native import native as _native

INITS = ("quantile", "linear")
REFINE_ITERATIONS = 2000
SAMPLE_SIZE = 20_000  # values the "linear" start is fitted on
PARALLEL_SORT = 1 << 21  # values from which sort_values splits its sort across the cores
# scikit-learn's KMeans sets process-wide BLAS thread limits while it fits; fits from several threads at once
# could restore them in the wrong order, so they take turns.
_SKLEARN_LOCK = threading.Lock()


def index_dtype(largest: int) -> np.dtype:
    """The smallest unsigned integer type holding indices up to ``largest`` (at most 65535)."""
    return np.dtype(np.uint8) if largest <= 0xFF else np.dtype(np.uint16)


def assign(values: np.ndarray, centroids: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """Index of the nearest centroid for each value (centroids sorted ascending; ties go to the lower one).

    ``values``: any shape, flattened; float32 values run in the compiled module, other dtypes (e.g. float64
    compensated weights) in ``assign_reference``, compared exactly in float64. With a bool ``keep`` mask of the
    same size, pruned values get index 0 and kept ones 1 + their centroid's index. Returns uint8 or uint16 [N]
    (index_dtype).
    """
    values = np.asarray(values)
    keep = None if keep is None else np.ascontiguousarray(keep, dtype=bool).ravel()
    # A large tensor is split across the cores (parallel.default_workers()); the indices are the same.
    if _native is None or values.dtype != np.float32:
        return assign_reference(values, centroids, keep)
    return _native.assign(np.ascontiguousarray(values).ravel(), np.ascontiguousarray(centroids, dtype=np.float32), keep,
                          threads=parallel.default_workers())


def thresholds(centroids: np.ndarray) -> np.ndarray:
    """float32 [K-1]: each float64 midpoint of adjacent (ascending) centroids rounded down to a float32 t; a float32
    x exceeds the midpoint exactly when it exceeds t (no float lies in (t, midpoint]), so x's nearest centroid
    (ties to the lower one) is the number of thresholds below x, as in assign."""
    c = np.asarray(centroids, dtype=np.float64)
    midpoints = (c[:-1] + c[1:]) / 2
    t = midpoints.astype(np.float32)
    high = t.astype(np.float64) > midpoints
    t[high] = np.nextafter(t[high], np.float32(-np.inf))
    return t


def assign_reference(values: np.ndarray, centroids: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """numpy reference of ``assign``: searchsorted on the float64 midpoints."""
    c = np.asarray(centroids, dtype=np.float64)
    midpoints = (c[:-1] + c[1:]) / 2
    nearest = np.searchsorted(midpoints, np.asarray(values, dtype=np.float64).ravel(), side="left")
    if keep is None:
        return nearest.astype(index_dtype(len(c) - 1))
    out = np.zeros(len(nearest), dtype=index_dtype(len(c)))
    keep = np.asarray(keep, dtype=bool).ravel()
    out[keep] = nearest[keep] + 1
    return out


def fit_codebook(values: np.ndarray, size: int, init: str = "quantile", seed: int = 0,
                 start: np.ndarray | None = None, weights: np.ndarray | None = None,
                 overwrite_input: bool = False) -> np.ndarray:
    """Sorted, distinct float32 centroids (at most ``size``) for the 1-D ``values`` (any shape, read as float32).

    ``weights`` (optional, >= 0, one per value) make the Lloyd iterations minimise the weighted squared error
    (the start is the unweighted one); values of weight 0 still get a nearest centroid but move none.
    ``seed`` seeds the sample of the ``linear`` start (the quantile fit uses none). ``start`` (at most ``size``
    centroids, e.g. a fit of nearly the same values) replaces the initialisation: Lloyd iterations on all values
    run from it, clipped to the values' range (the outlier search's warm start). ``overwrite_input`` lets
    a float32 ``values`` array be sorted in place (saving a copy). Raises ValueError for an unknown ``init``
    or bad weights.
    """
    if init not in INITS:
        raise ValueError(f"unknown codebook initialisation {init!r}; choose one of {', '.join(INITS)}")
    values = np.ascontiguousarray(values, dtype=np.float32).ravel()
    if weights is not None:
        weights = np.ascontiguousarray(weights, dtype=np.float32).ravel()
        if weights.shape != values.shape or not (weights >= 0).all():
            raise ValueError("k-means weights must be one non-negative number per value")
    if len(values) == 0:
        return np.zeros(0, dtype=np.float32)
    warm = start is not None and len(start) > 0
    sample = _linear_sample(values, seed, weights) if init == "linear" and not warm else None  # before any in-place sort
    sorted_weights = None
    if weights is None:
        ordered = sort_values(values, overwrite_input)
    else:
        order = np.argsort(values, kind="stable")
        ordered, sorted_weights = values[order], weights[order]
        del order
    return fit_sorted(ordered, size, start, sample, seed, sorted_weights)


def sort_values(values: np.ndarray, overwrite_input: bool = False) -> np.ndarray:
    """float32 ``values`` in ascending order, -0.0 before +0.0: a total order, so the sorted array is a function of
    the multiset of bit patterns and any run of it is the sorted array of the values in the run. (numpy's float
    sort leaves equal-comparing zeros in any order, and its vectorised kernels may even swap their sign bits.)
    The bit patterns are mapped to unsigned keys that order as the values do (negatives: all bits flipped;
    others: the sign bit set), sorted as integers and mapped back. Sorts in place with ``overwrite_input``.
    Compiled (``_native.sort_floats``, a radix sort of the keys on the cores: about a third of numpy's CPU time
    for the keys), or ``sort_values_reference`` when the module is missing; the same bytes (tests/test_fast_paths.py)."""
    ordered = np.ascontiguousarray(values, dtype=np.float32).ravel()
    ordered = ordered if overwrite_input else ordered.copy()
    if _native is None or not ordered.flags.writeable:
        return sort_values_reference(ordered, overwrite_input=True)
    _native.sort_floats(ordered, parallel.default_workers())
    return ordered


def sort_values_reference(values: np.ndarray, overwrite_input: bool = False) -> np.ndarray:
    """The straightforward ``sort_values``: the keys mapped in place, sorted by numpy (split across the cores in
    runs from PARALLEL_SORT values, _sort_keys), mapped back."""
    ordered = np.ascontiguousarray(values, dtype=np.float32).ravel()
    ordered = ordered if overwrite_input else ordered.copy()
    keys = ordered.view(np.uint32)
    _flip_keys(keys, inverse=False)
    _sort_keys(keys, parallel.default_workers() if len(keys) >= PARALLEL_SORT else 1)
    _flip_keys(keys, inverse=True)
    return ordered


def _sort_keys(keys: np.ndarray, workers: int) -> None:
    """Sort unsigned integer ``keys`` in place, on up to ``workers`` threads: ``numpy.partition`` splits them into
    ``workers`` runs at evenly spaced ranks (every key of a run <= every key of the next), then each run is sorted
    on its own thread (numpy's sort releases the GIL). Integers sort to one and the same array however they are
    split, so the result is byte-identical to ``keys.sort()`` (tests/test_fast_paths.py compares them)."""
    runs = min(max(int(workers), 1), max(len(keys) // (PARALLEL_SORT // 2), 1))
    if runs <= 1:
        keys.sort()
        return
    bounds = [len(keys) * i // runs for i in range(runs + 1)]
    keys.partition(bounds[1:-1])
    list(parallel.ordered_map(lambda run: keys[bounds[run]:bounds[run + 1]].sort(), range(runs), runs))


def _flip_keys(keys: np.ndarray, inverse: bool, block: int = 1 << 20) -> None:
    """In place, block by block (a small temporary): float bits -> order-preserving keys (``inverse`` False), or
    back. A key's mask is all ones for a negative value (sign bit set; its key has the top bit clear), else the
    sign bit alone."""
    signed = keys.view(np.int32)
    flip = np.empty(min(block, len(keys)), dtype=np.int32)
    for start in range(0, len(keys), block):
        part, mask = signed[start:start + block], flip[:min(block, len(keys) - start)]
        if inverse:
            np.invert(part, out=mask)
            mask >>= 31
        else:
            np.right_shift(part, 31, out=mask)  # -1 for a set sign bit, else 0
        mask |= np.int32(-(1 << 31))
        part ^= mask


def channel_scales(weight: np.ndarray, axis: int) -> np.ndarray:
    """float32 [weight.shape[axis]]: each channel's RMS along ``axis`` (a per-output-channel scale: the values
    divided by it share one codebook of normalised values, record versions 3 and 4 in docs/format.md), rounded to
    the nearest binary16 value when that is a normal binary16 number (so the record stores 2 bytes per channel
    exactly). An all-zero channel takes the smallest other channel's scale (its normalised values are 0, so it
    decodes to that small scale times the codebook value nearest 0), or 1.0 when every channel is 0. RMS rather
    than max |w|: at the same errors it needed 5 % fewer index bits on the zoo's convolutions
    (bench/channel_codebooks.py, docs/benchmarks.md)."""
    rms = _channel_rms(weight, axis).astype(np.float32).astype(np.float64)  # a subnormal-sized channel may round to 0
    smallest = float(rms[rms > 0].min()) if (rms > 0).any() else 1.0
    scales = np.where(rms > 0, rms, smallest).astype(np.float32)
    with np.errstate(over="ignore"):
        half = scales.astype(np.float16).astype(np.float32)
    normal = np.isfinite(half) & (half >= np.float32(2.0 ** -14))
    return np.where(normal, half, scales).astype(np.float32)


def _channel_rms(weight: np.ndarray, axis: int, block: int = 1 << 20) -> np.ndarray:
    """float64 [weight.shape[axis]]: sqrt(mean(w^2)) of each channel along ``axis``, the squares and their mean in
    float64, computed on blocks of about ``block`` values (whole channels) instead of a float64 copy of the whole
    weight; each channel's sum is the same reduction as on the whole array (``_channel_rms_reference``, compared
    bit for bit in tests/test_fast_paths.py)."""
    moved = np.moveaxis(np.asarray(weight, dtype=np.float32), axis, 0)
    rows = moved.reshape(moved.shape[0], -1)
    if not rows.shape[1]:
        return np.zeros(rows.shape[0])
    rms = np.empty(rows.shape[0])
    step = max(1, block // rows.shape[1])
    for start in range(0, rows.shape[0], step):
        part = rows[start:start + step].astype(np.float64)
        part *= part
        rms[start:start + step] = np.sqrt(part.mean(axis=1))
    return rms


def _channel_rms_reference(weight: np.ndarray, axis: int) -> np.ndarray:
    """The straightforward ``_channel_rms``: the whole weight as float64, squared, averaged per channel."""
    moved = np.moveaxis(np.asarray(weight, dtype=np.float32), axis, 0)
    rows = moved.reshape(moved.shape[0], -1).astype(np.float64)
    return np.sqrt((rows * rows).mean(axis=1)) if rows.shape[1] else np.zeros(rows.shape[0])


def normalise(weight: np.ndarray, scales: np.ndarray, axis: int) -> np.ndarray:
    """float32, ``weight``'s shape: each value divided by its channel's scale along ``axis``."""
    shape = [1] * np.ndim(weight)
    shape[axis] = len(scales)
    return (np.asarray(weight, dtype=np.float32) / np.asarray(scales, dtype=np.float32).reshape(shape)).astype(np.float32)


def uniform_start(low: float, high: float, levels: int) -> np.ndarray:
    """float32 [<= levels]: ``levels`` evenly spaced points from ``low`` to ``high`` (both included; distinct)."""
    return np.unique(np.linspace(float(low), float(high), max(int(levels), 1)).astype(np.float32))


def fit_sorted(ordered: np.ndarray, size: int, start: np.ndarray | None = None, sample=None, seed: int = 0,
               sorted_weights: np.ndarray | None = None, levels: int = 0) -> np.ndarray:
    """fit_codebook on values already sorted (float32 [n], ascending as sort_values orders them; ``sorted_weights``
    in the same order): the distinct values if there are at most ``size``, else Lloyd iterations from ``start``
    (clipped to the values' range), from _linear_start on ``sample`` (a _linear_sample), or from the quantiles.

    ``levels`` > 0 (at most ``size``) asks for a uniform codebook instead: ``levels`` evenly spaced points from the
    smallest to the largest value, each moved once to the mean of the values nearest to it (one Lloyd step; points
    no value is nearest to are dropped). Lloyd iterations to a fixed point would even out the cluster sizes
    (the fixed-rate optimum); a uniform grid keeps the small tail clusters, whose indices entropy coding
    makes cheap: at equal relative L2 error, 0.3-0.9 fewer coded bits per weight than the k-means codebook on
    the zoo's convolutions (entropy-coded scalar quantisation; Gish and Pierce 1968)."""
    if len(ordered) == 0:
        return np.zeros(0, dtype=np.float32)
    # The distinct values, as np.unique finds them (it sorts the same way, then drops repeats), when there are at
    # most ``size``; evenly spaced picks with more distinct values than that already show there are more.
    picks = ordered[np.linspace(0, len(ordered) - 1, min(len(ordered), 4 * size + 1)).astype(np.int64)]
    if np.count_nonzero(picks[1:] != picks[:-1]) + 1 <= size:
        first = np.empty(len(ordered), dtype=bool)
        first[0] = True
        np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
        if np.count_nonzero(first) <= size:
            return ordered[first]
        del first
    if levels > 0:
        return refine(ordered, uniform_start(ordered[0], ordered[-1], min(levels, size)), sorted_weights, iterations=1)
    if start is not None and len(start) > 0:
        start = np.clip(np.asarray(start, dtype=np.float64)[:size], float(ordered[0]), float(ordered[-1]))
    elif sample is not None:
        start = _linear_start(*sample, size, seed)
    else:  # numpy's default ("linear" interpolation) quantiles, read off the sorted values
        n = len(ordered)
        position = (np.arange(size) + 0.5) / size * (n - 1)
        below = np.floor(position).astype(np.int64)
        above = np.minimum(below + 1, n - 1)
        low, high = ordered[below].astype(np.float64), ordered[above].astype(np.float64)
        start = low + (position - below) * (high - low)
    return refine(ordered, np.unique(start.astype(np.float32)), sorted_weights)


def _linear_sample(values: np.ndarray, seed: int, weights: np.ndarray | None):
    """The seeded sample of at most SAMPLE_SIZE values (float64) and their weights that _linear_start fits."""
    rng = np.random.default_rng(seed)
    picked = None if len(values) <= SAMPLE_SIZE else np.sort(rng.choice(len(values), SAMPLE_SIZE, replace=False))
    sample = (values if picked is None else values[picked]).astype(np.float64)
    sample_weight = None if weights is None else (weights if picked is None else weights[picked]).astype(np.float64)
    if sample_weight is not None and not sample_weight.sum() > 0:
        sample_weight = None  # every sampled value has weight 0: start from the plain fit
    return sample, sample_weight


def _linear_start(sample: np.ndarray, sample_weight: np.ndarray | None, size: int, seed: int) -> np.ndarray:
    """Centroids evenly spaced between min and max leave most of them empty on heavy-tailed tensors, and Lloyd
    iterations alone would drop them; scikit-learn's KMeans (20 iterations on a seeded sample of SAMPLE_SIZE
    values, which moves empty clusters to the farthest points) turns them into a start that keeps all k."""
    from sklearn.cluster import KMeans

    start = np.linspace(sample.min(), sample.max(), size)
    kmeans = KMeans(n_clusters=len(start), init=start[:, None], n_init=1, max_iter=20, tol=1e-10, random_state=seed)
    with _SKLEARN_LOCK:
        return np.sort(kmeans.fit(sample[:, None], sample_weight=sample_weight).cluster_centers_.ravel())


def refine(ordered: np.ndarray, centroids: np.ndarray, weights: np.ndarray | None = None,
           iterations: int = REFINE_ITERATIONS) -> np.ndarray:
    """Lloyd iterations on all ``ordered`` values (float32, ascending) from ``centroids`` to a fixed point
    (at most ``iterations``); drops centroids that end up empty. Returns sorted distinct float32 centroids.

    ``weights`` (float32, in the order of ``ordered``) weight each value. Compiled (``_native.lloyd_1d``),
    or ``refine_reference`` when the module is missing; both give the same bytes.
    """
    ordered = np.ascontiguousarray(ordered, dtype=np.float32)
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    weights = None if weights is None else np.ascontiguousarray(weights, dtype=np.float32)
    if _native is None:
        return refine_reference(ordered, centroids, weights, iterations)
    return _native.lloyd_1d(ordered, weights, centroids, iterations)


def refine_reference(ordered: np.ndarray, centroids: np.ndarray, weights: np.ndarray | None = None,
                     iterations: int = REFINE_ITERATIONS) -> np.ndarray:
    """numpy reference of ``refine``. On sorted values each cluster is a contiguous run, so one iteration is a
    binary search per centroid and a difference of prefix sums (float64, sequential as np.cumsum adds):
    O(k log n), however many values there are. The mean of run [a, b) is (S[b] - S[a]) / (b - a), or with
    weights u, (sum u v) / (sum u) from prefix sums of u v and of u."""
    v = np.asarray(ordered, dtype=np.float64)
    if weights is None:
        sums = np.concatenate([[0.0], np.cumsum(v)])
    else:
        u = np.asarray(weights, dtype=np.float64)
        sums = np.concatenate([[0.0], np.cumsum(u * v)])
        mass = np.concatenate([[0.0], np.cumsum(u)])
    centroids = np.unique(np.asarray(centroids, dtype=np.float32))
    for _ in range(iterations):
        c = centroids.astype(np.float64)
        # assign() sends v to centroid j when v <= midpoint j: count values up to each midpoint.
        bounds = np.concatenate([[0], np.searchsorted(v, (c[:-1] + c[1:]) / 2, side="right"), [len(v)]])
        lo, hi = bounds[:-1], bounds[1:]
        if weights is None:
            counts = hi - lo
            keep = counts > 0
            means = (sums[hi] - sums[lo])[keep] / counts[keep]
        else:
            total = mass[hi] - mass[lo]
            keep = (hi > lo) & (total > 0)
            means = (sums[hi] - sums[lo])[keep] / total[keep]
        updated = np.unique(means.astype(np.float32))
        if np.array_equal(updated, centroids):
            break
        centroids = updated
    return centroids


def quantize(weight: np.ndarray, keep: np.ndarray | None, bits: int, init: str = "quantile", seed: int = 0,
             exclude: np.ndarray | None = None, start: np.ndarray | None = None, weights: np.ndarray | None = None,
             ordered: np.ndarray | None = None, levels: int = 0, codebook_size: int = 0):
    """Codebook and indices for ``weight``; pruned entries (``keep`` False) map to index 0 = exactly 0.0.

    ``exclude`` (bool, weight's shape) marks values left out of the centroid fit (outliers stored exactly
    beside the codebook); they still get the index of their nearest centroid. ``start``: see fit_codebook.
    ``weights``: optional k-means importance per element (fit_codebook). ``ordered``: the values the codebook is
    fit to (kept and not excluded), already in sort_values order, when the caller has them (the outlier search
    sorts once for all its fits); the result is the same. ``levels`` > 0: a uniform codebook of at most that many
    values (fit_sorted) instead of k-means. ``codebook_size`` > 0 (at most 2^bits): at most that many codebook entries K,
    the pruned 0.0 included, instead of 2^bits (a codebook size between two bit widths; its indices, entropy coded,
    cost about their entropy, not ``bits``). Returns ``(codebook float32 [K], indices uint8/uint16 [N] row-major)``
    with K <= 2^bits.
    """
    flat = np.ascontiguousarray(weight, dtype=np.float32).ravel()
    fit = None if exclude is None else ~np.asarray(exclude, dtype=bool).ravel()
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float32).ravel()
    if keep is not None:
        keep = np.ascontiguousarray(keep, dtype=bool).ravel()
    if codebook_size and not 1 + (keep is not None) <= codebook_size <= 1 << bits:
        raise ValueError(f"codebook size {codebook_size} does not fit {bits} index bits")
    size = (codebook_size or 1 << bits) - (0 if keep is None else 1)
    if levels > 0:  # importance ``weights`` do not move a uniform grid's points: its one Lloyd step is unweighted
        if ordered is None:
            chosen = keep if fit is None else fit if keep is None else keep & fit
            ordered = sort_values(flat if chosen is None else flat[chosen], overwrite_input=chosen is not None)
        centroids = fit_sorted(ordered, size, levels=levels)
    elif ordered is not None and weights is None:
        sample = None
        if init == "linear" and (start is None or len(start) == 0):
            chosen = keep if fit is None else fit if keep is None else keep & fit
            sample = _linear_sample(flat if chosen is None else flat[chosen], seed, None)
        centroids = fit_sorted(ordered, size, start, sample, seed)
    elif keep is None:
        chosen_weights = None if weights is None else weights if fit is None else weights[fit]
        centroids = fit_codebook(flat if fit is None else flat[fit], size, init, seed, start, chosen_weights,
                                 overwrite_input=fit is not None)  # a masked selection is a fresh copy
    else:
        chosen = keep if fit is None else keep & fit
        centroids = fit_codebook(flat[chosen], size, init, seed, start, None if weights is None else weights[chosen],
                                 overwrite_input=True)  # the selection is a fresh copy
    if keep is None:
        if len(centroids) == 0:  # every value excluded: any one entry serves
            centroids = np.zeros(1, dtype=np.float32)
        return centroids, assign(flat, centroids)
    codebook = np.concatenate([np.zeros(1, dtype=np.float32), centroids])
    if len(centroids):
        return codebook, assign(flat, centroids, keep)
    return codebook, np.zeros(len(flat), dtype=np.uint8)
