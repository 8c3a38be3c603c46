"""Per-layer settings without data: the smallest record whose predicted weight damage stays under a threshold.

For a weight w (N values) and a candidate (sparsity s, bits b, outlier fraction f), the candidate's weight
ŵ is: the s N smallest |w| set to 0 (magnitude pruning), the f N largest |w| kept exact (outliers), the rest
clustered into 2^b - [s > 0] shared values by the pipeline's own k-means (onnxcomp/core/codebook.py). Two data-free measures of its damage:

    relative L2 error   e2  = ||w - ŵ||_2 / ||w||_2
    worst-case error    einf = max_i |w_i - ŵ_i| / max_i |w_i|

Mean error alone misleads: on third-party models (issue #12), 8-bit k-means kept e2 at 1-3 % while einf reached
40 % on convs whose largest weights are 30-50x their typical size, and those few weights carried the damage.
The proxy is therefore ``max(e2 / L2_LIMIT, einf / MAX_LIMIT)``; a candidate is acceptable when its proxy is
at most ``scale`` (1 by default; the fidelity back-off lowers it for the layers that damage the output most).
Among acceptable candidates the smallest estimated record wins; when none is acceptable (or none is smaller
than the dense tensor), the weight stays dense. Record bytes are estimated as Huffman-coded indices (code lengths from the cluster sizes,
onnxcomp/core/huffman.py) + the float32 codebook + ``OUTLIER_BYTES`` per outlier.

Errors and cluster sizes come from the sorted values with prefix sums of w and w^2 (each cluster is a run of
sorted values), so scoring a codebook costs O(K log N). Tensors above ``SAMPLE`` values are measured on a seeded uniform sample plus
their ``EXTREMES`` largest |w| (the extremes decide einf).

L2_LIMIT and MAX_LIMIT were set once on the real-model zoo (docs/benchmarks.md, section zoo): the largest
values that kept every zoo model within its tolerance at the defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from onnxcomp.core import codebook, huffman

L2_LIMIT = 0.05
MAX_LIMIT = 0.25
BITS = (2, 3, 4, 5, 6, 7, 8)
SPARSITIES = (0.0,)
OUTLIERS = (0.0,)
OUTLIER_BYTES = 3.5  # a float16 value and about 12 bits of Rice-coded position gap at 0.1-1 % outliers
SAMPLE = 1 << 20
EXTREMES = 256


@dataclass(frozen=True)
class Candidate:
    sparsity: float
    bits: int
    outliers: float
    relative_l2: float  # e2
    max_relative: float  # einf
    bytes: float  # estimated record bytes for the whole tensor

    def proxy(self, l2_limit: float = L2_LIMIT, max_limit: float = MAX_LIMIT) -> float:
        return max(self.relative_l2 / l2_limit, self.max_relative / max_limit)


def _sample(weight: np.ndarray, seed: int) -> np.ndarray:
    flat = np.asarray(weight, dtype=np.float32).ravel()
    if flat.size <= SAMPLE:
        return flat.astype(np.float64)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(flat.size, SAMPLE - EXTREMES, replace=False)
    extremes = np.argpartition(np.abs(flat), flat.size - EXTREMES)[-EXTREMES:]
    return flat[np.union1d(chosen, extremes)].astype(np.float64)


def candidates(weight: np.ndarray, *, bits=BITS, sparsities=SPARSITIES, outliers=OUTLIERS, seed: int = 0) -> list[Candidate]:
    """Every (sparsity, bits, outlier fraction) candidate of ``weight`` with its e2, einf and estimated bytes."""
    n_total = int(np.size(weight))
    values = _sample(weight, seed)  # in tensor order: the codebook is fit on the values as the pipeline sees them
    v = np.sort(values)
    n = len(v)
    scale = n_total / max(n, 1)
    s1 = np.concatenate([[0.0], np.cumsum(v)])
    s2 = np.concatenate([[0.0], np.cumsum(v * v)])
    energy = s2[-1]
    largest = float(np.abs(v).max(initial=0.0))
    magnitude = np.sort(np.abs(v))
    results = []
    if n == 0 or energy == 0:
        return [Candidate(0.0, 1, 0.0, 0.0, 0.0, 4.0 + n_total / 8)]
    for sparsity in sparsities:
        pruned = int(round(sparsity * n))
        threshold = magnitude[pruned - 1] if pruned else -1.0
        lo = int(np.searchsorted(v, -threshold, side="left")) if pruned else 0
        hi = int(np.searchsorted(v, threshold, side="right")) if pruned else 0
        if not pruned:
            lo = hi = int(np.searchsorted(v, 0.0))  # an empty middle block
        pruned_energy = s2[hi] - s2[lo]
        pruned_max = max(abs(v[lo]), abs(v[hi - 1])) if hi > lo else 0.0
        for fraction in outliers:
            count = int(math.ceil(fraction * n)) if fraction > 0 else 0
            top = magnitude[n - count] if count else math.inf
            a = int(np.searchsorted(v, -top, side="right")) if count else 0
            b = int(np.searchsorted(v, top, side="left")) if count else n
            a, b = min(a, lo), max(b, hi)
            kept = np.concatenate([v[a:lo], v[hi:b]])  # sorted: the pruned block and the outliers removed
            low, high = (v[a], v[b - 1]) if b > a else (0.0, -1.0)
            in_order = values[(values >= low) & (values <= high) & ((values < v[lo]) | (values > v[hi - 1]) if hi > lo else True)]
            k1 = np.concatenate([[0.0], np.cumsum(kept)])
            k2 = np.concatenate([[0.0], np.cumsum(kept * kept)])
            exact = n - (b - a) - (hi - lo)
            for bit in bits:
                size = (1 << bit) - (1 if pruned else 0)
                if len(kept) == 0 or size < 1:
                    continue
                centroids = codebook.fit_codebook(in_order, size, "quantile", seed).astype(np.float64)
                mids = (centroids[:-1] + centroids[1:]) / 2
                bounds = np.concatenate([[0], np.searchsorted(kept, mids, side="right"), [len(kept)]])
                counts = np.diff(bounds).astype(np.float64)
                sums1, sums2 = k1[bounds[1:]] - k1[bounds[:-1]], k2[bounds[1:]] - k2[bounds[:-1]]
                sse = float(np.sum(sums2 - 2 * centroids * sums1 + counts * centroids ** 2)) + pruned_energy
                filled = counts > 0
                low_end = kept[np.minimum(bounds[:-1], len(kept) - 1)]
                high_end = kept[np.maximum(bounds[1:] - 1, 0)]
                spread = np.where(filled, np.maximum(centroids - low_end, high_end - centroids), 0.0)
                worst = max(float(spread.max(initial=0.0)), pruned_max)
                symbols = counts if not pruned else np.concatenate([[hi - lo], counts])
                lengths = huffman.code_lengths(np.round(symbols * scale).astype(np.int64))
                coded = float((symbols * scale * lengths).sum()) / 8
                size_bytes = coded + 4 * (len(centroids) + (1 if pruned else 0)) + OUTLIER_BYTES * exact * scale + 64
                results.append(Candidate(sparsity, bit, fraction, math.sqrt(max(sse, 0.0) / energy),
                                         worst / largest if largest else 0.0, size_bytes))
    return results


def choose(options: list[Candidate], scale: float = 1.0, dense_bytes: float = math.inf, l2_limit: float = L2_LIMIT,
           max_limit: float = MAX_LIMIT) -> Candidate | None:
    """The smallest candidate whose proxy is at most ``scale`` and whose record is smaller than ``dense_bytes``;
    None when there is none (the weight is best left dense)."""
    acceptable = [c for c in options if c.proxy(l2_limit, max_limit) <= scale and c.bytes < dense_bytes]
    return min(acceptable, key=lambda c: (c.bytes, c.proxy(l2_limit, max_limit)), default=None)
