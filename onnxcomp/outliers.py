"""The outlier section of a weight record (docs/format.md, record version 2): exact values beside the codebook.

A record with outliers decodes to ``codebook[index[i]]`` except at L listed positions, where the element is
the listed value (dense-and-sparse quantisation, as in SqueezeLLM, Kim et al. 2023). Positions are coded as
gaps ``d_0 = p_0``, ``d_j = p_j - p_{j-1} - 1`` with a Golomb-Rice code of parameter r (Golomb 1966; Rice 1979):
``q = d >> r`` one-bits, a zero bit, then the r low bits of d, most significant bit first. For gaps of mean
mu the best r is near log2(mu), and the cost is about r + 2 bits per outlier, within a bit of the entropy of
geometric gaps: 0.5 % outliers cost about 9.6 position bits each. Values are binary16 when that keeps every
value within a relative error of 2^-11 (the binary16 rounding bound for normal numbers), else binary32.
"""

from __future__ import annotations

import struct

import numpy as np

from .errors import CorruptSidecarError

FLOAT16 = 0
FLOAT32 = 1
MAX_RICE_BITS = 39
FLOAT16_RELATIVE_ERROR = 2.0 ** -11
_HEADER = struct.Struct("<QBBQ")  # count L, value format, Rice bits r, position_bits


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
