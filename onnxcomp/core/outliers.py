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
``a = log 2 / log(1 + 1/b)`` for b index bits: outliers are taken only while they lower the damage at least
as cheaply as one more index bit would at its ideal rate (half the error for (b+1)/b times the bytes).
Ties go to the smaller fraction; the search stops at the first fraction that scores worse than the one
before. Each fraction above 0 starts its Lloyd iterations from the previous fraction's codebook (a warm
start: only the top clusters move), which keeps the search to about twice the cost of one fit. A mean error (relative L2 over the whole
tensor) would miss what matters here: one large weight kept 40 % off can ruin the channel it dominates
while the tensor's relative L2 error stays at 3 % (docs/guide.md, "Outliers").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from onnxcomp.core import codebook as codebook_math
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
    error = np.abs(half.astype(np.float64) - values.astype(np.float64))
    return FLOAT16 if (error <= FLOAT16_RELATIVE_ERROR * np.abs(values.astype(np.float64))).all() else FLOAT32


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


def channel_damage(reference_rows: np.ndarray, decoded_rows: np.ndarray, importance: np.ndarray | None = None) -> float:
    """``max_c ||r_c - q_c|| / ||r_c||`` over the rows c (output channels) of norm at least LIVE_CHANNEL times the
    median row norm; with ``importance`` [inputs], squared entries are weighted by it. 0 for an all-zero tensor."""
    return damage_against(reference_rows, importance)(decoded_rows)


DAMAGE_BLOCK_ELEMENTS = 1 << 18  # rows are measured in blocks of about this many elements (bounded float64 temporaries)


def damage_against(reference_rows: np.ndarray, importance: np.ndarray | None = None):
    """``channel_damage`` with the reference fixed: its channel norms and live channels are computed once, for
    the several candidate decodings of one tensor. Squares are summed in float64 over blocks of rows, so the
    working memory stays a small multiple of one block whatever the tensor's size."""
    reference = np.asarray(reference_rows, dtype=np.float32)
    weights = None
    if importance is not None and len(importance) == reference.shape[1]:
        weights = np.asarray(importance, dtype=np.float64)[None, :]
    step = max(1, DAMAGE_BLOCK_ELEMENTS // max(reference.shape[1], 1))
    blocks = [slice(start, start + step) for start in range(0, reference.shape[0], step)]

    def row_sums(rows: np.ndarray) -> np.ndarray:
        squares = rows ** 2
        return (squares * weights if weights is not None else squares).sum(axis=1)

    norms = np.concatenate([row_sums(reference[block].astype(np.float64)) for block in blocks]) if blocks else np.zeros(0)
    live = norms >= LIVE_CHANNEL ** 2 * np.median(norms) if len(norms) else np.zeros(0, dtype=bool)
    live &= norms > 0

    def damage(decoded_rows: np.ndarray) -> float:
        if not live.any():
            return 0.0
        decoded = np.asarray(decoded_rows)
        error = np.concatenate([row_sums(decoded[block].astype(np.float64) - reference[block]) for block in blocks])
        return float(np.sqrt((error[live] / norms[live]).max()))
    return damage


def largest_first(flat: np.ndarray, candidates: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` of ``candidates`` (increasing positions) ordered by decreasing |flat| (ties: earlier
    first), i.e. ``candidates[np.argsort(-np.abs(flat[candidates]), kind="stable")][:count]``, without sorting
    them all: the count-th largest magnitude is found by partition, the ones above it and the first ties taken,
    and only those sorted."""
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
    """Record bytes estimate: the indices at their entropy (outliers' own indices left out), the float32 codebook
    and the outlier section."""
    others = np.ones(len(indices), dtype=bool)
    others[positions] = False
    counts = np.bincount(indices[others], minlength=len(codebook)).astype(np.float64)
    total = counts.sum()
    p = counts[counts > 0] / max(total, 1.0)
    entropy = float(-(p * np.log2(p)).sum()) if total else 0.0
    return int(np.ceil(len(indices) * entropy / 8)) + 4 * len(codebook) + encoded_bytes(positions, values)


def share(values: np.ndarray, keep: np.ndarray | None, bits: int, *, option: str | float = AUTO, init: str = "quantile",
          seed: int = 0, rows=None, importance: np.ndarray | None = None) -> SharedWeight:
    """Codebook, indices and outliers for ``values`` (see the module docstring for the rule).

    ``keep`` is the pruning mask (pruned weights are never outliers); ``option`` "auto" or a fraction of the
    kept weights; ``rows`` maps an array of the weight's shape to [output channels, inputs] (default: first axis
    as the output channel); ``importance`` [inputs] weights the inputs in the damage proxy.
    """
    values = np.asarray(values, dtype=np.float32)
    flat = values.ravel()
    to_rows = rows or (lambda array: array.reshape(array.shape[0] if array.ndim else 1, -1))
    reference = flat if keep is None else np.where(np.asarray(keep, dtype=bool).ravel(), flat, np.float32(0))
    reference_rows = to_rows(reference.reshape(values.shape))
    candidates = np.arange(len(flat)) if keep is None else np.flatnonzero(np.asarray(keep, dtype=bool).ravel())
    fractions = AUTO_FRACTIONS if option == AUTO else (float(option),)
    order = largest_first(flat, candidates, max(int(round(f * len(candidates))) for f in fractions))
    damage_of = damage_against(reference_rows, importance)
    exponent = np.log(2.0) / np.log1p(1.0 / bits)
    best, previous_score, start = None, None, None
    tried_counts = set()
    for fraction in fractions:
        count = int(round(fraction * len(candidates)))
        if (fraction > 0 and count == 0 and option == AUTO) or count in tried_counts:
            continue
        tried_counts.add(count)
        positions = np.sort(order[:count])
        exclude = None
        if count:
            exclude = np.zeros(len(flat), dtype=bool)
            exclude[positions] = True
        codebook, indices = codebook_math.quantize(values, keep, bits, init, seed, exclude, start)
        start = codebook if keep is None else codebook[1:]
        kept_values = stored_values(flat[positions])
        decoded = codebook[indices]
        decoded[positions] = kept_values
        damage = damage_of(to_rows(decoded.reshape(values.shape)))
        size = estimated_bytes(codebook, indices, positions, kept_values)
        score = exponent * np.log(max(size, 1)) + (np.log(damage) if damage > 0 else -np.inf)
        candidate = SharedWeight(codebook, indices, positions, kept_values, fraction, damage, size, float(score))
        if best is None or score < best.score:
            best = candidate
        elif previous_score is not None and score > previous_score:
            break
        previous_score = score
    return best
