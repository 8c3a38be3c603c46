"""Per-layer settings without data: the smallest record whose predicted weight damage stays under a threshold.

For a weight w (N values) and a candidate (sparsity s, bits b, outlier fraction f), the candidate's weight
ŵ is: the s N smallest |w| set to 0 (magnitude pruning), the f N largest |w| kept exact (outliers), the rest
clustered into 2^b - [s > 0] shared values by Lloyd iterations from quantile starts (onnxcomp/core/codebook.py,
the pipeline's k-means without its first fit on a sample). Two data-free measures of its damage:

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

**Model-level error budget** (``solve_budget``): per-weight limits ignore depth (50 weights each at e2 = 0.05 add
up to far more output error than 3) and size (a 1,728-value first conv and a 2.4 M-value conv get the same
limit, although bits on the first cost nothing). Each weight i compressed alone changes the output by a relative
L2 error r_i ~ g_i e2_i, with a gain g_i measured by running the model (onnxcomp/pipeline/fidelity.py,
``attribute``; onnxcomp/pipeline/compression.py takes it relative to the median gain, 1 when the model cannot be
run), and the errors of several weights add in quadrature (measured on the zoo: VGG-16 0.285 all together
against sqrt(sum r_i^2) = 0.274 on real images; docs/benchmarks.md, section quality-defaults). So the budget
allocation is

    minimise  sum_i bytes_i(c_i)   subject to   sum_i (g_i e2_i(c_i))^2 <= R^2,   einf_i(c_i) <= MAX_LIMIT

over each weight's candidates c_i (dense included), solved by the Lagrangian relaxation (each weight minimises
bytes_i + lambda (g_i e2_i)^2 on its own; lambda found by bisection, Everett's theorem: the solution is optimal
for the budget it meets). The worst-case limit stays per weight: synthesised inputs need not reach the few
large weights that decide it.

**Channel-scaled uniform codebooks** (``channel_axis``; record versions 3 and 4, docs/format.md): each channel of
the axis (a convolution's output channels) is divided by its RMS (codebook.channel_scales), one uniform codebook
is fit to the normalised values, and a reader multiplies each codebook value back by its channel's scale. A
weight whose output channels differ in size (a folded normalisation) then spends its levels where each channel
has values instead of spreading one absolute step over all. The candidate is measured like the uniform one, with
e2 and einf taken on the weight itself (the error of a value is its channel's scale times its normalised error),
and costs its scale section (10 + 2 C bytes) on top. ``choose(families=("scaled",))`` gives the smallest
acceptable one; AllocateWeightsPass hands it to ShareWeightsPass beside its choice when it is smaller than the
k-means candidate, and ShareWeightsPass keeps it only when it passes the channel checks against k-means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from onnxcomp import parallel
from onnxcomp.core import codebook, huffman
from onnxcomp.core.native import native as _native

L2_LIMIT = 0.05
MAX_LIMIT = 0.25
BITS = (2, 3, 4, 5, 6, 7, 8)
SPARSITIES = (0.0,)
OUTLIERS = (0.0, 0.002, 0.01)
# Uniform codebooks (codebook.fit_sorted with ``levels``): 2 to MAX_LEVELS values (8-bit indices beside the
# pruned 0.0 entry), at sparsity 0, spanning the values left after the outliers (so the worst-case error of the
# clustered values is about half a step). ``choose`` bisects the count; LEVELS is a coarse grid for ``candidates``.
MAX_LEVELS = 255
LEVELS = (6, 8, 11, 16, 23, 32, 45, 64, 90, 128, 181, 255)
OUTLIER_BYTES = 3.5  # a float16 value and about 12 bits of Rice-coded position gap at 0.1-1 % outliers
E2_CAP = 0.15  # no weight's relative L2 error above this, whatever its measured gain (the gain is an estimate)
SAMPLE = 1 << 18
EXTREMES = 256


@dataclass(frozen=True)
class Candidate:
    sparsity: float
    bits: int
    outliers: float
    relative_l2: float  # e2
    max_relative: float  # einf
    bytes: float  # estimated record bytes for the whole tensor
    levels: int = 0  # > 0: a uniform codebook of this many values instead of k-means with 2^bits - 1
    scaled: bool = False  # with levels: the uniform codebook of the values normalised per channel (channel_axis)

    @property
    def dense(self) -> bool:
        return self.bits == 0

    def proxy(self, l2_limit: float = L2_LIMIT, max_limit: float = MAX_LIMIT) -> float:
        return max(self.relative_l2 / l2_limit, self.max_relative / max_limit)


def _sample(weight: np.ndarray, seed: int) -> np.ndarray:
    """float64 [<= SAMPLE]: the values at a seeded uniform choice of positions and at the EXTREMES largest |w|,
    in tensor order (the whole tensor when it has at most SAMPLE values). The same values as ``_sample_reference``
    (tests/test_allocation.py), faster: the largest magnitudes by the compiled radix select
    (_native.largest_magnitudes; no |w| copy, no argpartition of the whole tensor) and the union of positions by
    sorting the SAMPLE chosen ones, not by np.union1d's hashing. When the EXTREMES-th largest |w| is tied, the
    earliest tied positions are taken, as in the reference."""
    flat = np.asarray(weight, dtype=np.float32).ravel()
    if flat.size <= SAMPLE:
        return flat.astype(np.float64)
    if _native is None:
        return _sample_reference(weight, seed)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(flat.size, SAMPLE - EXTREMES, replace=False)
    extremes = _native.largest_magnitudes(np.ascontiguousarray(flat), None, EXTREMES, parallel.default_workers())
    positions = np.concatenate([chosen, extremes])
    positions.sort()
    distinct = np.empty(len(positions), dtype=bool)
    distinct[0] = True
    np.not_equal(positions[1:], positions[:-1], out=distinct[1:])
    return flat[positions[distinct]].astype(np.float64)


def _sample_reference(weight: np.ndarray, seed: int) -> np.ndarray:
    """The straightforward ``_sample``: |w| sorted for the largest (a stable sort, so a tie at the EXTREMES-th takes
    the earliest positions: np.argpartition's choice among ties depends on numpy's build and the CPU, e.g. its
    AVX-512 sorting network), positions joined by np.union1d."""
    flat = np.asarray(weight, dtype=np.float32).ravel()
    if flat.size <= SAMPLE:
        return flat.astype(np.float64)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(flat.size, SAMPLE - EXTREMES, replace=False)
    extremes = np.argsort(-np.abs(flat), kind="stable")[:EXTREMES]
    return flat[np.union1d(chosen, extremes)].astype(np.float64)


class Allocator:
    """The candidates of one weight, measured lazily: ``choose`` walks the bits upwards per (sparsity, outlier
    fraction) and stops at the first acceptable one (more bits only cost more bytes), so a weight costs a few
    codebook fits, not the whole grid; measurements are kept for later calls with tighter scales."""

    def __init__(self, weight: np.ndarray, *, bits=BITS, sparsities=SPARSITIES, outliers=OUTLIERS, seed: int = 0,
                 max_levels: int = MAX_LEVELS, channel_axis: int | None = None) -> None:
        self.n_total = int(np.size(weight))
        self.values = _sample(weight, seed)  # in tensor order: the codebook is fit on the values as the pipeline sees them
        self.v = np.sort(self.values)
        # |v| of the sorted sample is two sorted runs (the negatives reversed, then the rest): a stable sort (a merge
        # sort that finds the runs) orders it in about one pass; sorted numbers are one array however they are
        # sorted (abs leaves no -0.0), so the same bytes as np.sort's default (tests/test_allocation.py)
        self.magnitude = np.sort(np.abs(self.v), kind="stable")
        self.s2 = np.concatenate([[0.0], np.cumsum(self.v * self.v)])
        self.energy = float(self.s2[-1])
        self.largest = float(self.magnitude[-1]) if len(self.v) else 0.0
        self.bits, self.sparsities, self.outliers, self.seed = tuple(bits), tuple(sparsities), tuple(outliers), seed
        self.max_levels = max_levels
        self.measured: dict[tuple, Candidate | None] = {}
        self._last_kept = None
        self.scaled = None  # (normalised, scales, original) samples, float64, for channel-scaled candidates
        self._scaled_prepared_arrays = None
        shape = np.shape(weight)
        if channel_axis is not None and len(shape) >= 2 and shape[channel_axis] >= 2 and self.energy > 0:
            self.scaled = _scaled_sample(weight, channel_axis, seed)
            self.scale_bytes = 10 + 2 * int(shape[channel_axis])

    def _blocks(self, sparsity: float, fraction: float):
        """(lo, hi): the pruned block of the sorted sample; (a, b): the clustered range's ends (outliers outside)."""
        v, n = self.v, len(self.v)
        pruned = int(round(sparsity * n))
        if pruned:
            threshold = self.magnitude[pruned - 1]
            lo, hi = int(np.searchsorted(v, -threshold, side="left")), int(np.searchsorted(v, threshold, side="right"))
        else:
            lo = hi = int(np.searchsorted(v, 0.0))
        kept = n - (hi - lo)
        count = int(round(fraction * kept)) if fraction > 0 else 0
        if count:
            top = self.magnitude[n - count]
            a, b = int(np.searchsorted(v, -top, side="right")), int(np.searchsorted(v, top, side="left"))
            a, b = min(a, lo), max(b, hi)
        else:
            a, b = 0, n
        return lo, hi, a, b

    def fit_values(self, low: float, high: float, pruned: tuple[float, float] | None) -> np.ndarray:
        """float32, in codebook.sort_values order: the sampled values in [low, high] outside the closed range
        ``pruned`` (None: nothing pruned), which the candidate's codebook is fit to. They are runs of the sorted
        sample found by binary search (no mask over the sample, no sort): the same array as
        ``fit_values_reference`` (tests/test_allocation.py); sort_values puts -0.0 before +0.0, which numpy's
        float sort of the sample leaves in any order, so the run of zeros is rewritten in that order."""
        v = self.v
        first, last = int(np.searchsorted(v, low, side="left")), int(np.searchsorted(v, high, side="right"))
        if pruned is None:
            fitted = v[first:last].astype(np.float32)
        else:
            cut_low = min(max(int(np.searchsorted(v, pruned[0], side="left")), first), last)
            cut_high = max(min(int(np.searchsorted(v, pruned[1], side="right")), last), cut_low)
            fitted = np.concatenate([v[first:cut_low], v[cut_high:last]]).astype(np.float32)
        zero_low, zero_high = np.searchsorted(fitted, np.float32(0), side="left"), np.searchsorted(fitted, np.float32(0), side="right")
        if zero_high > zero_low:
            zeros = fitted[zero_low:zero_high]
            negative = int(np.count_nonzero(np.signbit(zeros)))
            zeros[:negative], zeros[negative:] = np.float32(-0.0), np.float32(0.0)
        return fitted

    def fit_values_reference(self, low: float, high: float, pruned: tuple[float, float] | None) -> np.ndarray:
        """The straightforward ``fit_values``: a mask over the sample in tensor order, then codebook.sort_values."""
        values = self.values
        in_range = (values >= low) & (values <= high)
        if pruned is not None:
            in_range &= (values < pruned[0]) | (values > pruned[1])
        return codebook.sort_values(values[in_range].astype(np.float32))

    def _kept(self, lo: int, hi: int, a: int, b: int):
        """(kept, prefix sums of kept and of kept^2, fit values) of the blocks ``_blocks`` gives: kept is the sorted
        sample without the pruned block and the outliers. The bit widths of one (sparsity, outlier fraction) share
        them, and are measured one after the other, so the last blocks' arrays are kept for the next call."""
        if self._last_kept is None or self._last_kept[0] != (lo, hi, a, b):
            v = self.v
            kept = np.concatenate([v[a:lo], v[hi:b]])
            k1 = np.concatenate([[0.0], np.cumsum(kept)])
            k2 = np.concatenate([[0.0], np.cumsum(kept * kept)])
            fitted = self.fit_values(kept[0], kept[-1], (v[lo], v[hi - 1]) if hi > lo else None)
            self._last_kept = ((lo, hi, a, b), kept, k1, k2, fitted)
        return self._last_kept[1:]

    def pruned_error(self, sparsity: float) -> float:
        """The relative L2 error of pruning alone: a lower bound for every candidate at this sparsity."""
        lo, hi, _, _ = self._blocks(sparsity, 0.0)
        return math.sqrt((self.s2[hi] - self.s2[lo]) / self.energy) if self.energy else 0.0

    def measure(self, sparsity: float, bits: int, fraction: float) -> Candidate | None:
        key = (sparsity, bits, fraction)
        if key not in self.measured:
            self.measured[key] = self._measure(sparsity, bits, fraction)
        return self.measured[key]

    def measure_uniform(self, levels: int, fraction: float = 0.0) -> Candidate | None:
        """The uniform codebook of ``levels`` values (sparsity 0) spanning the values left after the outlier
        ``fraction``, with (levels + 1)-symbol indices (the pipeline's codebook leads with the pruned 0.0 entry
        even when nothing is pruned)."""
        key = ("uniform", levels, fraction)
        if key not in self.measured:
            self.measured[key] = self._measure(0.0, int(math.ceil(math.log2(levels + 1))), fraction, levels)
        return self.measured[key]

    def measure_scaled(self, levels: int, fraction: float = 0.0) -> Candidate | None:
        """The uniform codebook of ``levels`` values fit to the values normalised per channel (as measure_uniform,
        on the normalised values: outliers are the largest normalised magnitudes, one Lloyd step from the grid),
        errors measured on the weight itself; bytes include the scale section. None without ``channel_axis``."""
        key = ("scaled", levels, fraction)
        if key not in self.measured:
            self.measured[key] = None if self.scaled is None else self._measure_scaled(levels, fraction)
        return self.measured[key]

    def _scaled_prepared(self):
        """(order, ordered, energy, largest, by_value, ascending) of the scaled sample, computed once per allocator
        (the bisection over levels and fractions measures a dozen or more candidates on the same sample): the sample
        positions by decreasing normalised magnitude (ties by position), the normalised values as float32 in
        ascending order, sum w^2 and max |w| (float64), the positions by ascending normalised value and those
        values (float64)."""
        if self._scaled_prepared_arrays is None:
            u, _, w = self.scaled
            by_value = np.argsort(u, kind="stable")
            self._scaled_prepared_arrays = (np.argsort(-np.abs(u), kind="stable"), np.sort(u.astype(np.float32)),
                                            float(np.dot(w, w)), float(np.abs(w).max()), by_value, u[by_value])
        return self._scaled_prepared_arrays

    def _measure_scaled(self, levels: int, fraction: float) -> Candidate | None:
        """``measure_scaled``'s candidate; the same numbers as ``_measure_scaled_reference`` (tests/test_fast_paths.py)
        without its per-call argsort and sort: the outliers are the largest normalised magnitudes, so as a multiset
        the negative ones are the smallest values and the others the largest, and the values the codebook is fit to
        are a run of the sample sorted once."""
        u, s, w = self.scaled
        n = len(u)
        count = int(round(fraction * n)) if fraction > 0 else 0
        order, ordered, energy, largest, by_value, ascending = self._scaled_prepared()
        if count >= n or (count and u[order[count - 1]] == 0):  # zeros among the outliers: their sign decides the run
            return self._measure_scaled_reference(levels, fraction)
        kept = None
        negative = 0
        if count:
            kept = np.ones(n, dtype=bool)
            kept[order[:count]] = False
            negative = int(np.count_nonzero(u[order[:count]] < 0))
        fitted = ordered[negative:n - (count - negative)]
        return self._scaled_candidate(levels, fraction, count, fitted, kept, energy, largest, (by_value, ascending))

    def _scaled_candidate(self, levels: int, fraction: float, count: int, fitted: np.ndarray, kept: np.ndarray | None,
                          energy: float, largest: float, sorted_sample=None) -> Candidate:
        """The channel-scaled candidate of the sorted float32 ``fitted`` values (its codebook's fit values) and the
        sample positions ``kept`` (None: all): one Lloyd step from the uniform grid, errors on the weight itself.
        ``sorted_sample`` (positions by ascending normalised value, those values): each value's centroid index
        is read off runs of the sorted sample (one binary search per midpoint, then a scatter) instead of a
        binary search per value; the same indices."""
        u, s, w = self.scaled
        centroids = codebook.refine(fitted, codebook.uniform_start(fitted[0], fitted[-1], levels),
                                    iterations=1).astype(np.float64)
        middles = (centroids[:-1] + centroids[1:]) / 2
        if sorted_sample is None:
            index = np.searchsorted(middles, u if kept is None else u[kept], side="right")
        else:  # a value takes index j when exactly j midpoints are <= it: runs of the ascending values
            by_value, ascending = sorted_sample
            runs = np.diff(np.concatenate([[0], np.searchsorted(ascending, middles, side="left"), [len(ascending)]]))
            index = np.empty(len(u), dtype=np.intp)
            index[by_value] = np.repeat(np.arange(len(centroids), dtype=np.intp), runs)
            if kept is not None:
                index = index[kept]
        if kept is not None:
            s, w = s[kept], w[kept]
        error = w - centroids[index] * s
        counts = np.bincount(index, minlength=len(centroids)).astype(np.float64)
        scale = self.n_total / len(self.scaled[0])
        lengths = huffman.code_lengths(np.round(counts * scale).astype(np.int64))
        size_bytes = (float((counts * scale * lengths).sum()) / 8 + 4 * (len(centroids) + 1)
                      + OUTLIER_BYTES * count * scale + 64 + self.scale_bytes)
        bits = int(math.ceil(math.log2(levels + 1)))
        return Candidate(0.0, bits, fraction, math.sqrt(float(np.dot(error, error)) / energy),
                         float(np.abs(error).max(initial=0.0)) / largest, size_bytes, levels, scaled=True)

    def _measure_scaled_reference(self, levels: int, fraction: float) -> Candidate | None:
        """The straightforward ``_measure_scaled``: the outliers by an argsort of the normalised magnitudes and the
        kept values sorted, on every call."""
        u, s, w = self.scaled
        n = len(u)
        count = int(round(fraction * n)) if fraction > 0 else 0
        kept = np.ones(n, dtype=bool)
        if count:
            kept[np.argsort(-np.abs(u), kind="stable")[:count]] = False
        if not kept.any():
            return None
        fitted = np.sort(u[kept].astype(np.float32))
        return self._scaled_candidate(levels, fraction, count, fitted, kept, float(np.dot(w, w)), float(np.abs(w).max()))

    def _measure(self, sparsity: float, bits: int, fraction: float, levels: int = 0) -> Candidate | None:
        v = self.v
        if len(v) == 0 or self.energy == 0:
            return Candidate(sparsity, bits, fraction, 0.0, 0.0, 64 + self.n_total / 8, levels)
        scale = self.n_total / len(v)
        lo, hi, a, b = self._blocks(sparsity, fraction)
        pruned = hi > lo
        size = (1 << bits) - (1 if pruned else 0)
        if b - a - (hi - lo) <= 0 or size < 1:
            return None
        kept, k1, k2, fitted = self._kept(lo, hi, a, b)
        if levels:  # one Lloyd step from the grid, as the pipeline fits it (on the sample's sorted values)
            centroids = codebook.refine(fitted, codebook.uniform_start(fitted[0], fitted[-1], levels),
                                        iterations=1).astype(np.float64)
        else:
            # Lloyd iterations from the quantile starts, without the pipeline's k-means on a sample first: a few
            # times faster, and the same fixed-point iteration (the proxy need not match the final codebook exactly).
            start = kept[np.minimum(((np.arange(size) + 0.5) / size * len(kept)).astype(np.int64), len(kept) - 1)]
            centroids = codebook.fit_sorted(fitted, size, np.unique(start)).astype(np.float64)
        bounds = np.concatenate([[0], np.searchsorted(kept, (centroids[:-1] + centroids[1:]) / 2, side="right"), [len(kept)]])
        counts = np.diff(bounds).astype(np.float64)
        sums1, sums2 = k1[bounds[1:]] - k1[bounds[:-1]], k2[bounds[1:]] - k2[bounds[:-1]]
        pruned_energy = self.s2[hi] - self.s2[lo]
        sse = float(np.sum(sums2 - 2 * centroids * sums1 + counts * centroids ** 2)) + pruned_energy
        low_end = kept[np.minimum(bounds[:-1], len(kept) - 1)]
        high_end = kept[np.maximum(bounds[1:] - 1, 0)]
        spread = np.where(counts > 0, np.maximum(centroids - low_end, high_end - centroids), 0.0)
        pruned_max = max(abs(v[lo]), abs(v[hi - 1])) if pruned else 0.0
        worst = max(float(spread.max(initial=0.0)), pruned_max)
        symbols = np.concatenate([[hi - lo], counts]) if pruned else counts
        lengths = huffman.code_lengths(np.round(symbols * scale).astype(np.int64))
        exact = len(v) - len(kept) - (hi - lo)
        size_bytes = (float((symbols * scale * lengths).sum()) / 8 + 4 * (len(centroids) + pruned)
                      + OUTLIER_BYTES * exact * scale + 64)
        return Candidate(sparsity, bits, fraction, math.sqrt(max(sse, 0.0) / self.energy),
                         worst / self.largest if self.largest else 0.0, size_bytes, levels)

    def choose(self, scale: float = 1.0, dense_bytes: float = math.inf, l2_limit: float = L2_LIMIT,
               max_limit: float = MAX_LIMIT, uniform: bool = True,
               families: tuple[str, ...] = ("kmeans", "uniform")) -> Candidate | None:
        """The smallest acceptable candidate (as module ``choose`` over the whole grid), or None. ``uniform``
        False leaves the uniform codebooks out (k-means only); ``families`` names the candidates searched: "kmeans",
        "uniform" (unscaled uniform codebooks) and "scaled" (channel-scaled ones, with ``channel_axis``)."""
        found = []
        for sparsity in self.sparsities if "kmeans" in families else ():
            if self.pruned_error(sparsity) > scale * l2_limit:
                continue  # pruning alone already costs more than allowed
            for fraction in self.outliers:
                for bits in sorted(self.bits):
                    candidate = self.measure(sparsity, bits, fraction)
                    if candidate is not None and candidate.proxy(l2_limit, max_limit) <= scale:
                        found.append(candidate)
                        break
        grids = [f for name, f in (("uniform", self.measure_uniform), ("scaled", self.measure_scaled))
                 if name in families and (name != "scaled" or self.scaled is not None)]
        for family in grids if uniform and self.max_levels >= 2 else ():
            for fraction in self.outliers:
                def passes(levels):  # the fewest values that pass, by bisection (errors fall as the count grows)
                    candidate = family(levels, fraction)
                    return candidate is not None and candidate.proxy(l2_limit, max_limit) <= scale
                low, high = 1, self.max_levels
                if passes(high):
                    while high - low > 1:
                        middle = (low + high) // 2
                        low, high = (low, middle) if passes(middle) else (middle, high)
                    found.append(family(high, fraction))
        self._last_kept = None  # the allocator stays cached between rounds: without its working arrays
        return choose(found, scale, dense_bytes, l2_limit, max_limit)


def _scaled_sample(weight: np.ndarray, axis: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 (normalised values, their channels' scales, the values) at every position (at most SAMPLE values),
    else at a seeded uniform choice of positions plus the EXTREMES largest |w| and largest normalised |w|."""
    flat = np.asarray(weight, dtype=np.float32)
    scales = codebook.channel_scales(flat, axis)
    normalised = codebook.normalise(flat, scales, axis).ravel()
    stride = int(np.prod(flat.shape[axis + 1:], dtype=np.int64)) or 1
    flat = flat.ravel()
    if flat.size > SAMPLE:
        rng = np.random.default_rng(seed)
        chosen = rng.choice(flat.size, SAMPLE - 2 * EXTREMES, replace=False)
        largest = np.argpartition(np.abs(flat), flat.size - EXTREMES)[-EXTREMES:]
        largest_normalised = np.argpartition(np.abs(normalised), flat.size - EXTREMES)[-EXTREMES:]
        positions = np.concatenate([chosen, largest, largest_normalised])
        positions.sort()  # their distinct values, as np.unique gives them (without its hashing: numpy 2.4)
        distinct = np.empty(len(positions), dtype=bool)
        distinct[0] = True
        np.not_equal(positions[1:], positions[:-1], out=distinct[1:])
        positions = positions[distinct]
    else:
        positions = np.arange(flat.size)
    channel = (positions // stride) % len(scales)
    return (normalised[positions].astype(np.float64), scales[channel].astype(np.float64),
            flat[positions].astype(np.float64))


def dense_candidate(size: int) -> Candidate:
    """The weight left as float32: no error, 4 bytes per value (``bits`` 0 marks it)."""
    return Candidate(0.0, 0, 0.0, 0.0, 0.0, 4.0 * size)


def options(allocator: Allocator, dense_bytes: float, max_limit: float = MAX_LIMIT, cap: float = E2_CAP) -> list[Candidate]:
    """Every candidate of one weight for ``solve_budget``: each sparsity (whose pruning alone stays under ``cap``),
    outlier fraction and bit width with worst-case error <= ``max_limit``, relative L2 <= ``cap`` and a record
    smaller than ``dense_bytes``, plus the dense weight itself."""
    found = [dense_candidate(allocator.n_total)]
    for sparsity in allocator.sparsities:
        if allocator.pruned_error(sparsity) > cap:
            continue
        for fraction in allocator.outliers:
            for bits in allocator.bits:
                c = allocator.measure(sparsity, bits, fraction)
                if c is not None and c.max_relative <= max_limit and c.relative_l2 <= cap and c.bytes < dense_bytes:
                    found.append(c)
    allocator._last_kept = None
    return found


def solve_budget(choices: dict[str, list[Candidate]], gains: dict[str, float], budget: float,
                 iterations: int = 100) -> dict[str, Candidate]:
    """Per weight name, the candidate minimising the summed bytes subject to sum (gain * e2)^2 <= budget^2
    (module docstring). Lagrangian relaxation: for a multiplier lam each weight takes argmin bytes + lam (g e2)^2;
    lam is bisected (geometrically) to the smallest value meeting the budget. When even the least-error choices
    exceed it, those are returned. Ties go to fewer bytes, then to the earlier candidate (deterministic)."""

    def pick(lam: float) -> tuple[dict[str, Candidate], float]:
        chosen, total = {}, 0.0
        for name, found in choices.items():
            g2 = gains.get(name, 1.0) ** 2
            best = min(found, key=lambda c: (c.bytes + lam * g2 * c.relative_l2 ** 2, c.bytes))
            chosen[name] = best
            total += g2 * best.relative_l2 ** 2
        return chosen, total

    limit = budget * budget
    chosen, total = pick(0.0)
    if total <= limit:
        return chosen
    low, high = 1.0, 1.0
    while pick(high)[1] > limit and high < 1e30:
        high *= 16.0
    if pick(high)[1] > limit:
        return {name: min(found, key=lambda c: (c.relative_l2, c.bytes)) for name, found in choices.items()}
    low = high / 16.0 if high > 1.0 else 0.0
    for _ in range(iterations):
        middle = math.sqrt(low * high) if low > 0 else high / 1e6
        if pick(middle)[1] <= limit:
            high = middle
        else:
            low = middle
        if low > 0 and high / low < 1.0 + 1e-6:
            break
    return pick(high)[0]


def candidates(weight: np.ndarray, *, bits=BITS, sparsities=SPARSITIES, outliers=OUTLIERS, seed: int = 0,
               levels=LEVELS) -> list[Candidate]:
    """Every (sparsity, bits, outlier fraction) candidate of ``weight`` and every uniform codebook of ``levels``
    values, with its e2, einf and estimated bytes."""
    allocator = Allocator(weight, bits=bits, sparsities=sparsities, outliers=outliers, seed=seed)
    grid = [allocator.measure(s, b, f) for s in sparsities for f in outliers for b in bits]
    grid += [allocator.measure_uniform(count, f) for f in outliers for count in levels]
    return [c for c in grid if c is not None]


def choose(options: list[Candidate], scale: float = 1.0, dense_bytes: float = math.inf, l2_limit: float = L2_LIMIT,
           max_limit: float = MAX_LIMIT) -> Candidate | None:
    """The smallest candidate whose proxy is at most ``scale`` and whose record is smaller than ``dense_bytes``;
    None when there is none (the weight is best left dense)."""
    acceptable = [c for c in options if c.proxy(l2_limit, max_limit) <= scale and c.bytes < dense_bytes]
    return min(acceptable, key=lambda c: (c.bytes, c.proxy(l2_limit, max_limit)), default=None)
