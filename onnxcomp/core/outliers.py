"""The outlier section of a weight record (docs/format.md, record version 2): exact values beside the codebook.

A record with outliers decodes to ``codebook[index[i]]`` except at L listed positions, where the element is
the listed value (dense-and-sparse quantisation, as in SqueezeLLM, Kim et al. 2023). Positions are coded as
gaps ``d_0 = p_0``, ``d_j = p_j - p_{j-1} - 1`` with a Golomb-Rice code of parameter r (Golomb 1966; Rice 1979):
``q = d >> r`` one-bits, a zero bit, then the r low bits of d, most significant bit first. For gaps of mean
mu the best r is near log2(mu), and the cost is about r + 2 bits per outlier, within a bit of the entropy of
geometric gaps: 0.5 % outliers cost about 9.6 position bits each. Values are binary16 when that keeps every
value within a relative error of 2^-11 (the binary16 rounding bound for normal numbers), else binary32.

Choosing them (``share``): the outliers are the largest |w| among the kept weights, and the codebook is fit
to the rest. With ``outliers="auto"`` the fraction is chosen per tensor from ``AUTO_FRACTIONS`` by measured
error: for each fraction f, the damage proxy D(f) is the worst output channel's relative error
``max_c ||w_c - q_c|| / ||w_c||`` (over channels whose norm is at least a tenth of the median channel norm,
so a dead channel does not decide; with calibration statistics the inputs are weighted by diag(X^T X), the
channel's relative output error under inputs of those energies), and B(f) the estimated record bytes
(entropy-coded indices + codebook + outlier section). The choice minimises ``a log B(f) + log D(f)`` with
``a = log 2 / log(1 + 1/b)`` for b index bits (b = log2 K for a codebook of K entries between two bit widths): outliers are taken only while they lower the damage at least
as cheaply as one more index bit would at its ideal rate (half the error for (b+1)/b times the bytes).
Ties go to the smaller fraction; the search stops at the first fraction that scores worse than the one
before. Each fraction above 0 starts its Lloyd iterations from the previous fraction's codebook (a warm
start: only the top clusters move), which keeps the search to about twice the cost of one fit. The kept values
are sorted once per tensor: the outliers being the largest magnitudes, each fraction's codebook is fit to a run of
that sorted array, and D and the index counts are measured without materialising the decoded weight (``share``;
``share_reference`` is the straightforward version, byte-identical, tests/test_native.py). A mean error (relative L2 over the whole
tensor) would miss what matters here: one large weight kept 40 % off can ruin the channel it dominates
while the tensor's relative L2 error stays at 3 % (docs/guide.md, "Outliers").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from onnxcomp import parallel
from onnxcomp.core import codebook as codebook_math
from onnxcomp.core.native import native as _native
from onnxcomp.errors import CorruptSidecarError, InvalidOptionError

FLOAT16 = 0
FLOAT32 = 1
MAX_RICE_BITS = 39
FLOAT16_RELATIVE_ERROR = 2.0 ** -11
_HEADER = struct.Struct("<QBBQ")  # count L, value format, Rice bits r, position_bits
AUTO = "auto"
AUTO_FRACTIONS = (0.0, 0.001, 0.0025, 0.005, 0.01, 0.02)
MAX_FRACTION = 0.5
LIVE_CHANNEL = 0.1  # channels below this fraction of the median channel norm do not decide the damage


def value_format(values: np.ndarray) -> int:
    """FLOAT16 when binary16 keeps every value within a relative error of 2^-11, else FLOAT32."""
    values = np.asarray(values, dtype=np.float32)
    with np.errstate(over="ignore"):
        half = values.astype(np.float16)
    if not np.isfinite(half).all():
        return FLOAT32
    return FLOAT16 if half_rounding_within(values, half, np.abs(values)) else FLOAT32


def value_format_reference(values: np.ndarray) -> int:
    """The straightforward ``value_format``: the rounding errors and their bounds in float64."""
    values = np.asarray(values, dtype=np.float32)
    with np.errstate(over="ignore"):
        half = values.astype(np.float16)
    if not np.isfinite(half).all():
        return FLOAT32
    error = np.abs(half.astype(np.float64) - values.astype(np.float64))
    return FLOAT16 if (error <= FLOAT16_RELATIVE_ERROR * np.abs(values.astype(np.float64))).all() else FLOAT32


def half_rounding_within(values: np.ndarray, half: np.ndarray, scale: np.ndarray) -> bool:
    """Whether ``|half - values| <= 2^-11 scale`` for every element (float32 ``values``, their finite binary16
    roundings ``half``, float32 ``scale`` broadcasting to them), decided exactly in float32, without float64
    copies of the tensor: the difference of a float32 and its binary16 rounding is exact in float32 (same sign and
    within a factor 2, Sterbenz's lemma; for a binary16-subnormal result both are multiples of the value's ulp and
    differ by at most 2^-25, or the rounding is 0), and ``|d| * 2^11 <= scale`` is ``|d| <= 2^-11 scale`` exactly
    (a power-of-two product of a float32 below 2^5 neither rounds nor overflows, whereas 2^-11 scale could round
    as a float32 subnormal). The same answer as comparing in float64 (tests/test_fast_paths.py)."""
    error = half.astype(np.float32)
    error -= values
    np.abs(error, out=error)
    error *= np.float32(1.0 / FLOAT16_RELATIVE_ERROR)
    return bool((error <= scale).all())


def stored_values(values: np.ndarray) -> np.ndarray:
    """The float32 values a reader gets back: ``values`` rounded through binary16 when that format is chosen."""
    values = np.asarray(values, dtype=np.float32)
    return values.astype(np.float16).astype(np.float32) if value_format(values) == FLOAT16 else values


def gaps(positions: np.ndarray) -> np.ndarray:
    """The gap of each position after the previous one (``d_0 = p_0``, ``d_j = p_j - p_{j-1} - 1``)."""
    positions = np.asarray(positions, dtype=np.int64)
    return np.diff(np.concatenate([[-1], positions])) - 1


def rice_parameter(gap_values: np.ndarray) -> tuple[int, int]:
    """The Rice parameter r with the fewest bits for these gaps, and that bit count."""
    best = None
    for r in range(MAX_RICE_BITS + 1):
        bits = int(((gap_values >> r) + 1 + r).sum())
        if best is None or bits < best[1]:
            best = (r, bits)
        if r and (int(gap_values.max(initial=0)) >> r) == 0:
            break  # larger r only adds remainder bits
    return best


def section_bytes(count: int, position_bits: int, fmt: int) -> int:
    """Bytes of an outlier section: header, position stream and values."""
    return _HEADER.size + (position_bits + 7) // 8 + count * (2 if fmt == FLOAT16 else 4)


def encoded_bytes(positions: np.ndarray, values: np.ndarray) -> int:
    """Bytes the outlier section of these outliers takes (0 for none)."""
    if len(positions) == 0:
        return 0
    return section_bytes(len(positions), rice_parameter(gaps(positions))[1], value_format(values))


def encode_section(positions: np.ndarray, values: np.ndarray, n: int) -> bytes:
    """The outlier section for sorted unique ``positions`` (< n) and finite float32 ``values``."""
    positions = np.asarray(positions, dtype=np.int64)
    values = np.asarray(values, dtype=np.float32)
    if len(positions) != len(values) or not 1 <= len(positions) <= n:
        raise ValueError("outliers: positions and values must have one entry each, at most N of them")
    if (np.diff(positions) <= 0).any() or positions[0] < 0 or positions[-1] >= n:
        raise ValueError("outlier positions must be strictly increasing and below N")
    if not np.isfinite(values).all():
        raise ValueError("outlier values must be finite")
    d = gaps(positions)
    r, total = rice_parameter(d)
    quotient = d >> r
    lengths = quotient + 1 + r
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    bits = np.zeros(total, dtype=np.uint8)
    # Unary part: quotient one-bits from each code's start; the terminating zero is already there.
    ones = np.repeat(starts, quotient) + (np.arange(int(quotient.sum())) - np.repeat(np.cumsum(quotient) - quotient, quotient))
    bits[ones] = 1
    for b in range(r):  # remainder bits, most significant first
        bits[starts + quotient + 1 + b] = (d >> (r - 1 - b)) & 1
    fmt = value_format(values)
    stored = values.astype("<f2" if fmt == FLOAT16 else "<f4")
    return _HEADER.pack(len(positions), fmt, r, total) + np.packbits(bits).tobytes() + stored.tobytes()


def decode_section(take, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate an outlier section through ``take(size, what) -> bytes``; returns (positions int64,
    values float32). Raises CorruptSidecarError naming the broken rule."""
    count, fmt, r, position_bits = _HEADER.unpack(take(_HEADER.size, "outlier header"))
    if not 1 <= count <= n:
        raise CorruptSidecarError("outlier count L outside 1..N")
    if fmt not in (FLOAT16, FLOAT32):
        raise CorruptSidecarError("outlier value format not 0 (float16) or 1 (float32)")
    if r > MAX_RICE_BITS:
        raise CorruptSidecarError("outlier Rice bits above 39")
    if position_bits // (r + 1) < count:
        raise CorruptSidecarError("outlier position stream shorter than L codes")
    stream = take((position_bits + 7) // 8, "outlier positions")
    if position_bits % 8 and stream[-1] & ((1 << (8 - position_bits % 8)) - 1):
        raise CorruptSidecarError("outlier position padding bits not 0")
    values = np.frombuffer(take(count * (2 if fmt == FLOAT16 else 4), "outlier values"),
                           dtype="<f2" if fmt == FLOAT16 else "<f4").astype(np.float32)
    if not np.isfinite(values).all():
        raise CorruptSidecarError("outlier value not finite")
    return _decode_positions(stream, position_bits, r, count, n), values


def _decode_positions(stream: bytes, position_bits: int, r: int, count: int, n: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(stream, dtype=np.uint8))[:position_bits].astype(np.int64)
    # next_zero[i]: the first zero bit at or after i (position_bits if none).
    index = np.where(bits == 0, np.arange(position_bits), position_bits)
    next_zero = np.minimum.accumulate(index[::-1])[::-1].tolist() if position_bits else []
    window = np.zeros(position_bits + 1, dtype=np.int64)  # value of the r bits from each position
    padded = np.concatenate([bits, np.zeros(r + 1, np.int64)])
    for b in range(r):
        window += padded[b:b + position_bits + 1] << (r - 1 - b)
    window = window.tolist()
    positions = np.empty(count, dtype=np.int64)
    at, following = 0, 0  # bit position; smallest position the next outlier may take
    for j in range(count):
        zero = next_zero[at] if at < position_bits else position_bits
        if zero >= position_bits:
            raise CorruptSidecarError("outlier position stream ends early")
        quotient = zero - at
        at = zero + 1
        if position_bits - at < r:
            raise CorruptSidecarError("outlier position stream ends early")
        gap = (quotient << r) | window[at]
        at += r
        if gap >= n - following:
            raise CorruptSidecarError("outlier position not below N")
        positions[j] = following + gap
        following = positions[j] + 1
    if at != position_bits:
        raise CorruptSidecarError("outlier position stream has bits left after L codes")
    return positions


# ---- Choosing the outliers -------------------------------------------------------------------------------

def parse_option(value) -> str | float:
    """``"auto"`` or a fraction in [0, 0.5] (from the CLI, API or a recipe); raises InvalidOptionError."""
    if value is None or (isinstance(value, str) and value.strip().lower() == AUTO):
        return AUTO
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        raise InvalidOptionError(f"outliers {value!r}: give 'auto' or a fraction from 0 to {MAX_FRACTION}") from None
    if not 0.0 <= fraction <= MAX_FRACTION:
        raise InvalidOptionError(f"outliers {value!r} is out of range: give 'auto' or a fraction from 0 to {MAX_FRACTION}")
    return fraction


@dataclass
class SharedWeight:
    """A weight shared into a codebook plus exact outliers, and what the choice measured."""

    codebook: np.ndarray  # float32 [K]
    indices: np.ndarray  # int64 [N]
    positions: np.ndarray  # int64 [L], increasing
    values: np.ndarray  # float32 [L], as a reader gets them back (binary16-rounded when stored so)
    fraction: float  # the fraction tried (of the kept weights)
    damage: float  # D: worst live channel's relative error
    estimated_bytes: int  # B
    score: float = 0.0  # a log B + log D (lower is better)
    error: float = 0.0  # sum over every channel c and input j of u_j (w_cj - q_cj)^2 (u: the importance, 1 without)


def channel_errors_reference(reference_rows: np.ndarray, decoded_rows: np.ndarray | None,
                             importance: np.ndarray | None = None) -> np.ndarray:
    """float64 [channels]: ``sum_j u_j (q_cj - r_cj)^2`` per row c of ``reference_rows`` [channels, inputs] (float32),
    added in increasing j (numpy.cumsum's order), with q = ``decoded_rows`` (0 when None: the channel energies)
    and u = ``importance`` [inputs] (1 when None). The straightforward version of _native.channel_errors."""
    reference = np.asarray(reference_rows, dtype=np.float32)
    difference = (np.zeros(reference.shape) if decoded_rows is None else np.asarray(decoded_rows, dtype=np.float64)) - reference
    terms = difference ** 2
    if importance is not None:
        terms = terms * np.asarray(importance, dtype=np.float64)[None, :]
    return np.cumsum(terms, axis=1)[:, -1] if terms.shape[1] else np.zeros(terms.shape[0])


def live_channels(norms: np.ndarray) -> np.ndarray:
    """Channels whose energy is positive and at least LIVE_CHANNEL^2 times the median (a dead channel does not
    decide the damage)."""
    if not len(norms):
        return np.zeros(0, dtype=bool)
    return (norms >= LIVE_CHANNEL ** 2 * np.median(norms)) & (norms > 0)


def worst_channel(errors: np.ndarray, norms: np.ndarray, live: np.ndarray) -> float:
    """D = ``max_c sqrt(errors_c / norms_c)`` over the live channels (0 when none is live)."""
    return float(np.sqrt((errors[live] / norms[live]).max())) if live.any() else 0.0


def channel_damage(reference_rows: np.ndarray, decoded_rows: np.ndarray, importance: np.ndarray | None = None) -> float:
    """``max_c ||r_c - q_c|| / ||r_c||`` over the rows c (output channels) of norm at least LIVE_CHANNEL times the
    median row norm; with ``importance`` [inputs], squared entries are weighted by it. 0 for an all-zero tensor.
    Sums as channel_errors_reference adds them."""
    usable = importance if importance is not None and len(importance) == np.shape(reference_rows)[1] else None
    norms = channel_errors_reference(reference_rows, None, usable)
    return worst_channel(channel_errors_reference(reference_rows, decoded_rows, usable), norms, live_channels(norms))


def largest_first(flat: np.ndarray, candidates: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` of ``candidates`` (increasing positions) ordered by decreasing |flat| (ties: earlier
    first), i.e. ``candidates[np.argsort(-np.abs(flat[candidates]), kind="stable")][:count]``, without sorting
    them all: the count-th largest magnitude is found by partition, the ones above it and the first ties taken,
    and only those sorted. (The reference of _native.largest_magnitudes.)"""
    count = min(int(count), len(candidates))
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    magnitudes = np.abs(flat[candidates])
    if count < len(candidates):
        threshold = magnitudes[np.argpartition(magnitudes, len(magnitudes) - count)[len(magnitudes) - count]]
        above = np.flatnonzero(magnitudes > threshold)
        ties = np.flatnonzero(magnitudes == threshold)[:count - len(above)]
        chosen = np.sort(np.concatenate([above, ties]))
    else:
        chosen = np.arange(len(candidates))
    return np.asarray(candidates)[chosen][np.argsort(-magnitudes[chosen], kind="stable")]


def estimated_bytes(codebook: np.ndarray, indices: np.ndarray, positions: np.ndarray, values: np.ndarray) -> int:
    """Record bytes estimate: the indices at their entropy (outliers' own indices left out, but counted in the
    total), the float32 codebook and the outlier section."""
    others = np.ones(len(indices), dtype=bool)
    others[positions] = False
    counts = np.bincount(indices[others], minlength=len(codebook))
    return _record_estimate(counts, len(indices), len(codebook), positions, values)


def _record_estimate(counts: np.ndarray, n: int, codebook_size: int, positions: np.ndarray, values: np.ndarray) -> int:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    p = counts[counts > 0] / max(total, 1.0)
    entropy = float(-(p * np.log2(p)).sum()) if total else 0.0
    return int(np.ceil(n * entropy / 8)) + 4 * codebook_size + encoded_bytes(positions, values)


def _search(fractions, option, kept: int, bits: float, pruned: bool, measure) -> SharedWeight:
    """The rule of the module docstring over ``fractions`` (``bits``: the rate b, log2 K with a codebook size K
    between bit widths); ``measure(count, start)`` fits the codebook with the
    ``count`` largest kept weights as outliers (warm ``start`` or None) and returns (codebook, indices, positions,
    stored values, D, B); ``pruned``: the codebook leads with the pruned 0.0 (not part of the next warm start)."""
    exponent = np.log(2.0) / np.log1p(1.0 / bits)
    best, previous_score, start = None, None, None
    tried_counts = set()
    for fraction in fractions:
        count = int(round(fraction * kept))
        if (fraction > 0 and count == 0 and option == AUTO) or count in tried_counts:
            continue
        tried_counts.add(count)
        codebook, indices, positions, kept_values, damage, size, error = measure(count, start)
        start = codebook[1:] if pruned else codebook
        score = exponent * np.log(max(size, 1)) + (np.log(damage) if damage > 0 else -np.inf)
        candidate = SharedWeight(codebook, indices, positions, kept_values, fraction, damage, size, float(score), error)
        if best is None or score < best.score:
            best = candidate
        elif previous_score is not None and score > previous_score:
            break
        previous_score = score
    return best


def _prepare(values, keep, option, rows):
    values = np.asarray(values, dtype=np.float32)
    flat = values.ravel()
    to_rows = rows or (lambda array: array.reshape(array.shape[0] if array.ndim else 1, -1))
    keep = None if keep is None else np.ascontiguousarray(keep, dtype=bool).ravel()
    # A mask that keeps everything (sparsity 0 still has one) changes no value: no masked copy then.
    reference = flat if keep is None or keep.all() else np.where(keep, flat, np.float32(0))
    fractions = AUTO_FRACTIONS if option == AUTO else (float(option),)
    return values, flat, to_rows, keep, reference, fractions


def share_reference(values: np.ndarray, keep: np.ndarray | None, bits: int, *, option: str | float = AUTO,
                    init: str = "quantile", seed: int = 0, rows=None, importance: np.ndarray | None = None,
                    levels: int = 0, codebook_size: int = 0) -> SharedWeight:
    """The straightforward version of ``share`` (same arguments, same result byte for byte, tests/test_native.py):
    each fraction's codebook fit on its own masked copy of the values (codebook.quantize), the decoded weight
    materialised, D from channel_errors_reference and the index counts from a bincount."""
    values, flat, to_rows, keep, reference, fractions = _prepare(values, keep, option, rows)
    reference_rows = to_rows(reference.reshape(values.shape))
    candidates = np.arange(len(flat)) if keep is None else np.flatnonzero(keep)
    order = largest_first(flat, candidates, max(int(round(f * len(candidates))) for f in fractions))

    def measure(count, start):
        positions = np.sort(order[:count])
        exclude = None
        if count:
            exclude = np.zeros(len(flat), dtype=bool)
            exclude[positions] = True
        codebook, indices = codebook_math.quantize(values, keep, bits, init, seed, exclude, start, levels=levels,
                                                   codebook_size=codebook_size)
        kept_values = stored_values(flat[positions])
        decoded = codebook[indices]
        decoded[positions] = kept_values
        decoded_rows = to_rows(decoded.reshape(values.shape))
        damage = channel_damage(reference_rows, decoded_rows, importance)
        usable = importance if importance is not None and len(importance) == reference_rows.shape[1] else None
        error = 0.0  # as share sums it: only when some channel is live
        if live_channels(channel_errors_reference(reference_rows, None, usable)).any():
            error = float(channel_errors_reference(reference_rows, decoded_rows, usable).sum())
        return (codebook, indices, positions, kept_values, damage, estimated_bytes(codebook, indices, positions, kept_values),
                error)
    return _search(fractions, option, len(candidates), _rate(bits, codebook_size), keep is not None, measure)


def _rate(bits: int, codebook_size: int) -> float:
    """The index rate b of the outlier rule: ``bits``, or log2 of a ``codebook_size`` between bit widths."""
    return float(np.log2(codebook_size)) if codebook_size else bits


def _row_layout(reference: np.ndarray, rows: np.ndarray):
    """(channels, inputs, transposed) when ``rows`` is a view of the flat ``reference`` with channel c's input j at
    c * inputs + j (transposed False) or j * channels + c (True); None for any other layout."""
    if rows.ndim != 2 or rows.size != reference.size or rows.dtype != np.float32 or not np.shares_memory(rows, reference):
        return None
    if rows.__array_interface__["data"][0] != reference.__array_interface__["data"][0]:
        return None
    if rows.flags.c_contiguous:
        return rows.shape[0], rows.shape[1], False
    if rows.T.flags.c_contiguous:
        return rows.shape[0], rows.shape[1], True
    return None


def share(values: np.ndarray, keep: np.ndarray | None, bits: int, *, option: str | float = AUTO, init: str = "quantile",
          seed: int = 0, rows=None, importance: np.ndarray | None = None, levels: int = 0,
          prepared: dict | None = None, codebook_size: int = 0) -> SharedWeight:
    """Codebook, indices and outliers for ``values`` (see the module docstring for the rule).

    ``keep`` is the pruning mask (pruned weights are never outliers); ``option`` "auto" or a fraction of the
    kept weights; ``rows`` maps an array of the weight's shape to [output channels, inputs] (default: first axis
    as the output channel); ``importance`` [inputs] weights the inputs in the damage proxy; ``levels`` > 0: a
    uniform codebook of that many values (codebook.fit_sorted) instead of k-means; ``codebook_size`` > 0: a codebook of
    at most that many entries instead of 2^bits (codebook.quantize).

    The kept values are sorted once: the outliers are the largest magnitudes, so the values each fraction's
    codebook is fit to are a run of that sorted array (the first m and last L - m values removed, m the number
    of negative outliers). D is summed by _native.channel_errors straight from the indices. Same result byte
    for byte as ``share_reference`` (tests/test_native.py).

    ``prepared``: a dict shared by calls on the same ``values``, ``keep``, ``rows`` and ``importance`` (any bits,
    option or levels): the first call stores there what depends on those alone (the sorted kept values, the
    channel norms, the largest-magnitude positions), later calls reuse it instead of sorting again. The arrays
    stored are never written to; the result is the same byte for byte (tests/test_fast_paths.py).
    """
    if _native is None:
        return share_reference(values, keep, bits, option=option, init=init, seed=seed, rows=rows, importance=importance,
                               levels=levels, codebook_size=codebook_size)
    values, flat, to_rows, keep, reference, fractions = _prepare(values, keep, option, rows)
    layout = _row_layout(reference, to_rows(reference.reshape(values.shape)))
    if layout is None:  # a layout the compiled sum does not walk: the reference does it all
        return share_reference(values, keep, bits, option=option, init=init, seed=seed, rows=rows, importance=importance,
                               levels=levels, codebook_size=codebook_size)
    channels, inputs, transposed = layout
    usable = None
    if importance is not None and len(importance) == inputs:
        usable = np.ascontiguousarray(importance, dtype=np.float64)
    kept = len(flat) if keep is None else int(np.count_nonzero(keep))
    pruning = None if kept == len(flat) else keep  # an all-True mask selects every value: the same without it
    prepared = {} if prepared is None or prepared.get("kept", kept) != kept else prepared
    prepared["kept"] = kept
    largest = max(int(round(f * kept)) for f in fractions)
    order = prepared.get("order")
    if order is None or len(order) < largest:  # positions by decreasing magnitude, ties by position: a total
        order = prepared["order"] = _native.largest_magnitudes(flat, pruning, largest,  # order, so any prefix serves
                                                                parallel.default_workers())
    ordered = prepared.get("ordered")
    if ordered is None:
        ordered = prepared["ordered"] = codebook_math.sort_values(flat if pruning is None else flat[pruning],
                                                                  overwrite_input=pruning is not None)
    no_outliers = np.zeros(0, np.int64), np.zeros(0, np.float32)
    threads = parallel.default_workers()  # a large weight's channel sums split across the cores (same sums)
    norms = prepared.get("norms")
    if norms is None:
        norms = prepared["norms"] = _native.channel_errors(reference, None, np.zeros(1, np.float32), *no_outliers,
                                                           channels, inputs, transposed, usable, threads)
    live = live_channels(norms)
    pruned = len(flat) - kept

    def measure(count, start):
        chosen = order[:count]
        positions = np.sort(chosen)
        negative = int(np.count_nonzero(np.signbit(flat[chosen])))
        fit = ordered[negative:kept - (count - negative)]  # the kept values without the outliers, sorted
        exclude = None
        if count and init == "linear" and start is None:  # the linear start samples the fit values in tensor order
            exclude = np.zeros(len(flat), dtype=bool)
            exclude[positions] = True
        codebook, indices = codebook_math.quantize(values, keep, bits, init, seed, exclude, start, ordered=fit, levels=levels,
                                                   codebook_size=codebook_size)
        kept_values = stored_values(flat[positions])
        damage, error = 0.0, 0.0
        if live.any():
            errors = _native.channel_errors(reference, indices, codebook, positions, kept_values, channels, inputs,
                                            transposed, usable, threads)
            damage, error = worst_channel(errors, norms, live), float(errors.sum())
        centroids = codebook if keep is None else codebook[1:]
        if len(fit) == 0:
            counts = np.array([len(flat) - count])
        else:  # values up to each float threshold (codebook.assign's) take that centroid or a lower one
            upper = np.searchsorted(fit, codebook_math.thresholds(centroids), side="right")
            counts = np.diff(np.concatenate([[0], upper, [len(fit)]]))
            if keep is not None:
                counts = np.concatenate([[pruned], counts])
        return (codebook, indices, positions, kept_values, damage,
                _record_estimate(counts, len(flat), len(codebook), positions, kept_values), error)
    return _search(fractions, option, kept, _rate(bits, codebook_size), keep is not None, measure)
