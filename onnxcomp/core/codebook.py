"""Per-layer weight sharing: a 1-D k-means codebook and nearest-centroid indices (numpy + scikit-learn).

Deep Compression clusters each layer's weights into 2^b shared values and stores a b-bit index per weight.
The centroids minimise the within-cluster squared error sum_i (w_i - c[idx_i])^2. Initialisation matters in
1-D: ``linear`` (evenly spaced between min and max, the paper's choice) leaves most centroids empty on
heavy-tailed tensors, ``quantile`` (at the (j + 1/2)/k quantiles) follows the density. scikit-learn's KMeans
fits a seeded sample; Lloyd iterations over all values then converge exactly, cheaply, since in 1-D the
nearest centroid is a binary search among the midpoints.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans

INITS = ("quantile", "linear")
SAMPLE_SIZE = 20_000
REFINE_ITERATIONS = 2000


def assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (sorted, ascending) for every value; ties go to the lower one."""
    c = np.asarray(centroids, dtype=np.float64)
    midpoints = (c[:-1] + c[1:]) / 2
    return np.searchsorted(midpoints, np.asarray(values, dtype=np.float64), side="left")


def fit_codebook(values: np.ndarray, size: int, init: str = "quantile", seed: int = 0,
                 start: np.ndarray | None = None) -> np.ndarray:
    """Sorted, distinct float32 centroids (at most ``size``) for the 1-D ``values``.

    ``start`` (at most ``size`` centroids, e.g. a fit of nearly the same values) skips the initialisation and the
    k-means on a sample: Lloyd iterations on all values run from it (the outlier search's warm start)."""
    if init not in INITS:
        raise ValueError(f"unknown codebook initialisation {init!r}; choose one of {', '.join(INITS)}")
    values = np.asarray(values, dtype=np.float64).ravel()
    if len(values) == 0:
        return np.zeros(0, dtype=np.float32)
    distinct = np.unique(values.astype(np.float32))
    if len(distinct) <= size:
        return distinct
    if start is not None and len(start):
        return _refine(values, np.clip(np.asarray(start, dtype=np.float64)[:size], values.min(), values.max()))
    rng = np.random.default_rng(seed)
    sample = values if len(values) <= SAMPLE_SIZE else values[np.sort(rng.choice(len(values), SAMPLE_SIZE, replace=False))]
    if init == "linear":
        start = np.linspace(sample.min(), sample.max(), size)
    else:
        start = np.unique(np.quantile(sample, (np.arange(size) + 0.5) / size))
    kmeans = KMeans(n_clusters=len(start), init=start[:, None], n_init=1, max_iter=20, tol=1e-10, random_state=seed)
    centroids = np.sort(kmeans.fit(sample[:, None]).cluster_centers_.ravel())
    return _refine(values, centroids)


def _refine(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Lloyd iterations on all values to a fixed point; drops centroids that end up empty.

    On sorted values each cluster is a contiguous run, so one iteration is a binary search per centroid
    and a difference of prefix sums: O(k log n), however many values there are.
    """
    ordered = np.sort(values)
    prefix = np.concatenate([[0.0], np.cumsum(ordered)])
    centroids = np.unique(centroids.astype(np.float32))
    for _ in range(REFINE_ITERATIONS):
        c = centroids.astype(np.float64)
        # assign() sends v to centroid j when v <= midpoint j: count values up to each midpoint.
        bounds = np.concatenate([[0], np.searchsorted(ordered, (c[:-1] + c[1:]) / 2, side="right"), [len(ordered)]])
        counts = np.diff(bounds)
        keep = counts > 0
        means = (prefix[bounds[1:]] - prefix[bounds[:-1]])[keep] / counts[keep]
        updated = np.unique(means.astype(np.float32))
        if np.array_equal(updated, centroids):
            break
        centroids = updated
    return centroids


def quantize(weight: np.ndarray, keep: np.ndarray | None, bits: int, init: str = "quantile", seed: int = 0,
             exclude: np.ndarray | None = None, start: np.ndarray | None = None):
    """Codebook and indices for ``weight``; pruned entries (``keep`` False) map to index 0 = exactly 0.0.

    ``exclude`` (bool, weight's shape) marks values left out of the centroid fit (outliers stored exactly
    beside the codebook); they still get the index of their nearest centroid. ``start``: see fit_codebook.
    Returns ``(codebook float32 [K], indices int64 [N] row-major)`` with K <= 2^bits.
    """
    flat = np.asarray(weight, dtype=np.float32).ravel()
    fit = None if exclude is None else ~np.asarray(exclude, dtype=bool).ravel()
    if keep is None:
        centroids = fit_codebook(flat if fit is None else flat[fit], 1 << bits, init, seed, start)
        if len(centroids) == 0:  # every value excluded: any one entry serves
            centroids = np.zeros(1, dtype=np.float32)
        return centroids, assign(flat, centroids)
    keep = np.asarray(keep, dtype=bool).ravel()
    survivors = flat[keep]
    centroids = fit_codebook(flat[keep if fit is None else keep & fit], (1 << bits) - 1, init, seed, start)
    codebook = np.concatenate([np.zeros(1, dtype=np.float32), centroids])
    indices = np.zeros(len(flat), dtype=np.int64)
    if len(centroids):
        indices[keep] = assign(survivors, centroids) + 1
    return codebook, indices
