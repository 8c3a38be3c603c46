"""Weight records and the sidecar file (docs/format.md): encoding, and an independent numpy decoder.

A record stores a tensor as a codebook plus one index per element. The index stream is Huffman coded,
either densely (one code per element) or, when index 0 is the pruned 0.0 entry, as gaps between non-zero
elements plus the non-zero indices: a layer with sparsity s then costs about
``(1 - s) * (H(gap) + H(value))`` bits per element instead of ``H(index) >= 1`` bit, which is what lets
highly sparse layers escape Huffman's one-bit floor. The encoder tries both codings and every gap
alphabet size and keeps the smallest record. A record may also list outliers, exact values at given positions
that replace the codebook value there (record version 2, onnxcomp/core/outliers.py), and a positive scale per
channel of one axis that multiplies the codebook value of every element of that channel (record versions 3 and 4,
with and without outliers): one shared codebook of normalised values serves channels of different sizes.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from onnxcomp import parallel
from onnxcomp.core import huffman, outliers
from onnxcomp.core.native import native as _native
from onnxcomp.errors import CorruptSidecarError

RECORD_MAGIC = b"OCWR"
RECORD_VERSION = 1
RECORD_VERSION_OUTLIERS = 2  # version 1 plus an outlier section
RECORD_VERSION_SCALES = 3  # version 1 plus a channel-scale section
RECORD_VERSION_SCALES_OUTLIERS = 4  # version 3 plus an outlier section
SCALE_FLOAT16 = 0
SCALE_FLOAT32 = 1
_SCALE_HEADER = struct.Struct("<BBQ")  # axis, value format, count C
FILE_MAGIC = b"ONXCSIDE"
FILE_VERSION = 1
FLOAT32 = 1  # onnx.TensorProto.FLOAT
UINT8 = 2  # onnx.TensorProto.UINT8: integer codebook values in [0, 255], decoded to uint8
INT8 = 3  # onnx.TensorProto.INT8: integer codebook values in [-128, 127], decoded to int8
# The value types a record may declare: the decoded tensor's numpy dtype and, for integer types, the codebook's range.
VALUE_TYPES = {FLOAT32: np.dtype(np.float32), UINT8: np.dtype(np.uint8), INT8: np.dtype(np.int8)}
INTEGER_RANGES = {UINT8: (0, 255), INT8: (-128, 127)}
CODING_DENSE = 0
CODING_SPARSE = 1
MAX_RANK = 8
MAX_GAP_BITS = 16
MAX_ELEMENTS = 1 << 40
SIDECAR_SUFFIX = ".onnxcomp"

_FIXED = struct.Struct("<4sHBBBBHIQ")  # magic, version, value type, rank, bits, coding, reserved, K, N


@dataclass
class Record:
    """A decoded weight record."""

    dims: tuple[int, ...]
    codebook: np.ndarray  # float32 [K]
    indices: np.ndarray  # int64 [N], row-major
    bits: int
    coding: int = CODING_DENSE
    outlier_positions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # int64 [L], increasing
    outlier_values: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # float32 [L]
    outlier_bytes: int = 0  # length of the outlier section
    scales: np.ndarray | None = None  # float32 [dims[scale_axis]], positive; None: an unscaled record
    scale_axis: int = 0
    value_type: int = FLOAT32  # FLOAT32, UINT8 or INT8 (an integer record has no scales and no outliers)

    def to_dense(self) -> np.ndarray:
        """The decoded tensor in the record's dims: float32, or uint8 / int8 for an integer record (exact)."""
        values = self.codebook[self.indices]
        if self.value_type != FLOAT32:
            return values.astype(VALUE_TYPES[self.value_type]).reshape(self.dims)
        if self.scales is not None:
            values = apply_scales(values, self.dims, self.scale_axis, self.scales)
        return apply_outliers(values, self.outlier_positions, self.outlier_values).reshape(self.dims)


def channel_of(dims: tuple[int, ...], axis: int) -> np.ndarray:
    """int64 [N]: the channel along ``axis`` of each element in row-major order, (i // stride) % dims[axis] with
    stride the product of the dims after ``axis`` (docs/format.md, scale section)."""
    n = int(np.prod(dims, dtype=np.int64)) if dims else 1
    stride = int(np.prod(dims[axis + 1:], dtype=np.int64)) or 1
    return (np.arange(n, dtype=np.int64) // stride) % max(int(dims[axis]), 1)


def apply_scales(values: np.ndarray, dims: tuple[int, ...], axis: int, scales: np.ndarray) -> np.ndarray:
    """float32 [N]: ``values`` (float32, row-major, N elements) times the scale of each element's channel, one
    binary32 multiply each (the decoded value of a scaled record: float32(codebook[index] * scale[channel]))."""
    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    shape = [1] * len(dims)
    shape[axis] = int(dims[axis])
    product = flat.reshape(dims) * np.asarray(scales, dtype=np.float32).reshape(shape)
    return product.astype(np.float32).reshape(-1)


def scale_format(scales: np.ndarray) -> int:
    """SCALE_FLOAT16 when every scale is a positive normal binary16 value exactly, else SCALE_FLOAT32."""
    scales = np.asarray(scales, dtype=np.float32)
    with np.errstate(over="ignore"):
        half = scales.astype(np.float16)
    exact = np.isfinite(half).all() and (half.astype(np.float32) == scales).all()
    return SCALE_FLOAT16 if exact and (scales >= np.float32(2.0 ** -14)).all() else SCALE_FLOAT32


def encode_scale_section(scales: np.ndarray, axis: int, dims: tuple[int, ...]) -> bytes:
    """The scale section: ``axis`` (< rank), the value format (``scale_format``) and dims[axis] finite positive
    float32 ``scales``. Raises ValueError on a scale vector the format cannot hold."""
    scales = np.asarray(scales, dtype=np.float32).ravel()
    if not 0 <= axis < len(dims) or len(scales) != dims[axis] or len(scales) == 0:
        raise ValueError("scales: one per channel of an axis below the rank")
    if not (np.isfinite(scales).all() and (scales > 0).all()):
        raise ValueError("scales must be finite and above 0")
    fmt = scale_format(scales)
    stored = scales.astype("<f2" if fmt == SCALE_FLOAT16 else "<f4")
    return _SCALE_HEADER.pack(axis, fmt, len(scales)) + stored.tobytes()


def decode_scale_section(take, dims: tuple[int, ...], codebook: np.ndarray) -> tuple[int, np.ndarray]:
    """Read and validate a scale section through ``take(size, what) -> bytes``; returns (axis, scales float32).
    Raises CorruptSidecarError naming the broken rule."""
    axis, fmt, count = _SCALE_HEADER.unpack(take(_SCALE_HEADER.size, "scale header"))
    if axis >= len(dims):
        raise CorruptSidecarError("scale axis not below rank")
    if fmt not in (SCALE_FLOAT16, SCALE_FLOAT32):
        raise CorruptSidecarError("scale value format not 0 (float16) or 1 (float32)")
    if count != dims[axis] or count == 0:
        raise CorruptSidecarError("scale count C differs from dims[axis] (or is 0)")
    size = 2 if fmt == SCALE_FLOAT16 else 4
    scales = np.frombuffer(take(count * size, "scale values"), dtype="<f2" if size == 2 else "<f4").astype(np.float32)
    if not np.isfinite(scales).all():
        raise CorruptSidecarError("scale value not finite")
    if not (scales > 0).all():
        raise CorruptSidecarError("scale value not above 0")
    with np.errstate(over="ignore"):
        product = np.float32(np.abs(codebook).max()) * np.float32(scales.max())
    if not np.isfinite(product):
        raise CorruptSidecarError("largest scale times largest |codebook| value not finite")
    return int(axis), scales


def apply_outliers(values: np.ndarray, positions: np.ndarray, outlier_values: np.ndarray) -> np.ndarray:
    """``values`` (any shape, row-major) with element ``positions[j]`` set to ``outlier_values[j]`` (a copy)."""
    values = np.array(values, dtype=np.float32)
    values.reshape(-1)[np.asarray(positions, dtype=np.int64)] = outlier_values
    return values


def sidecar_path(model_path: str | os.PathLike) -> str:
    """The sidecar file that belongs to ``model_path`` (``small.onnx`` -> ``small.onnxcomp``)."""
    root, _ = os.path.splitext(os.fspath(model_path))
    return root + SIDECAR_SUFFIX


class NumpyCoding:
    """The straightforward numpy coding steps of ``encode_record`` (the reference the compiled ones match)."""

    def __init__(self, indices: np.ndarray) -> None:
        self.indices = np.asarray(indices, dtype=np.int64).ravel()
        self._gaps = None

    def counts(self, k: int, gaps: bool) -> np.ndarray:
        """How often each of the k indices occurs (``gaps``: the gap counts will be asked for too)."""
        return np.bincount(self.indices, minlength=k)

    def gaps(self) -> np.ndarray:
        """Zeros skipped before each non-zero index."""
        if self._gaps is None:
            self._gaps = np.diff(np.concatenate([[-1], np.flatnonzero(self.indices)])) - 1
        return self._gaps

    def max_gap(self) -> int:
        return int(self.gaps().max(initial=0))

    def gap_counts(self, gap_bits: int) -> np.ndarray:
        """Counts of the 2^gap_bits gap symbols (``escape`` = 2^gap_bits - 1 stands for that many zeros)."""
        escape = (1 << gap_bits) - 1
        counts = np.bincount(self.gaps() % escape, minlength=escape + 1).astype(np.int64)
        counts[escape] += int((self.gaps() // escape).sum())
        return counts

    def dense_payload(self, lengths: np.ndarray) -> tuple[bytes, int]:
        return huffman.encode(self.indices, lengths)

    def sparse_payload(self, gap_bits, gap_lengths, value_lengths) -> tuple[bytes, int]:
        symbols, value_slots = _gap_symbols(self.gaps(), gap_bits)
        nonzero_values = self.indices[self.indices != 0]
        # Interleave: each non-escape gap code is followed by its value code.
        gap_codes = huffman.canonical_codes(gap_lengths)
        value_codes = huffman.canonical_codes(value_lengths)
        total = len(symbols) + len(nonzero_values)
        codes = np.empty(total, dtype=np.uint32)
        lengths = np.empty(total, dtype=np.int64)
        gap_positions = np.arange(len(symbols)) + np.searchsorted(value_slots, np.arange(len(symbols)))
        value_positions = value_slots + np.arange(len(value_slots)) + 1
        codes[gap_positions] = gap_codes[symbols]
        lengths[gap_positions] = gap_lengths[symbols]
        codes[value_positions] = value_codes[nonzero_values]
        lengths[value_positions] = value_lengths[nonzero_values]
        writer = huffman.BitWriter()
        writer.write(codes, lengths)
        return writer.getvalue(), writer.bit_length


class NativeCoding(NumpyCoding):
    """The same steps in one compiled pass each (onnxcomp._native), on uint8/uint16/int64 indices as given;
    gap symbol counts for any alphabet come from one histogram of the gaps (those >= 2^16 listed apart)."""

    GAP_LIMIT = 1 << 16

    def __init__(self, indices: np.ndarray) -> None:
        indices = np.asarray(indices).ravel()
        self.indices = indices if indices.dtype.kind in "ui" else indices.astype(np.int64)
        self._histogram = None

    def counts(self, k: int, gaps: bool) -> np.ndarray:
        # the gap histogram comes in the same pass, when gaps can be coded at all (index 0 is the pruned 0.0)
        counts, histogram, large = _native.statistics(self.indices, k, self.GAP_LIMIT if gaps else 0)
        present = np.flatnonzero(histogram)
        self._histogram = (histogram[:present[-1] + 1 if len(present) else 1], large)
        return counts

    def max_gap(self) -> int:
        histogram, large = self._histogram
        return int(max(len(histogram) - 1, large.max(initial=0)))

    def gap_counts(self, gap_bits: int) -> np.ndarray:
        histogram, large = self._histogram
        escape = (1 << gap_bits) - 1
        gap = np.arange(len(histogram))
        counts = np.bincount(gap % escape, weights=histogram, minlength=escape + 1)  # exact: counts < 2^53
        counts = np.rint(counts).astype(np.int64) + np.bincount(large % escape, minlength=escape + 1)
        counts[escape] += int((histogram * (gap // escape)).sum() + (large // escape).sum())
        return counts

    def dense_payload(self, lengths: np.ndarray) -> tuple[bytes, int]:
        # a long stream is coded in runs on the cores, then joined bit by bit: the same bytes (tests/test_native.py)
        return _native.encode_dense(self.indices, huffman.canonical_codes(lengths), lengths, parallel.default_workers())

    def sparse_payload(self, gap_bits, gap_lengths, value_lengths) -> tuple[bytes, int]:
        return _native.encode_sparse(self.indices, gap_bits, huffman.canonical_codes(gap_lengths), gap_lengths,
                                     huffman.canonical_codes(value_lengths), value_lengths)


def _gap_symbols(gaps: np.ndarray, gap_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Split the gaps before non-zeros into gap symbols; returns (symbols, position of each gap's last symbol)."""
    escape = (1 << gap_bits) - 1
    escapes = gaps // escape
    remainder = gaps % escape
    # Each gap becomes `escapes` escape symbols followed by its remainder symbol.
    counts = escapes + 1
    symbols = np.full(int(counts.sum()), escape, dtype=np.int64)
    last = np.cumsum(counts) - 1
    symbols[last] = remainder
    return symbols, last


def encode_record(codebook: np.ndarray, indices: np.ndarray, dims: tuple[int, ...], bits: int,
                  outlier_positions: np.ndarray | None = None, outlier_values: np.ndarray | None = None,
                  coding_steps: type[NumpyCoding] | None = None, scales: np.ndarray | None = None,
                  scale_axis: int = 0, value_type: int = FLOAT32) -> bytes:
    """Encode one tensor; picks the smaller of dense and sparse (gap) coding.

    ``indices``: integers in [0, K), any shape with prod(dims) elements, row-major. With outliers (strictly
    increasing positions below N, finite float32 values), the record is version 2 and the indices at the
    outlier positions are replaced by the cheapest one for the chosen coding (0 in sparse coding, the most
    frequent index in dense), since the reader never looks them up. Without, version 1. With ``scales`` (float32
    [dims[scale_axis]], finite, > 0; binary16 when each is a normal binary16 value), the record is version 3 (4 with
    outliers): element i decodes to float32(codebook[index] * scales[channel of i along scale_axis]), outliers
    exact and unscaled. ``value_type`` UINT8 or INT8 makes an integer record (lossless coding of an 8-bit integer
    tensor): every codebook value must be an integer of that type's range, and it takes no outliers or scales
    (ValueError otherwise). ``coding_steps`` picks
    the implementation of the counting and bit-writing steps: NativeCoding (the default when the compiled
    module is built) or NumpyCoding (the reference); both give the same bytes.
    """
    codebook = np.ascontiguousarray(codebook, dtype="<f4")
    indices = np.asarray(indices).ravel()
    if indices.dtype.kind not in "ui":
        indices = indices.astype(np.int64)
    k = len(codebook)
    n = int(np.prod(dims, dtype=np.int64)) if dims else 1
    if not (1 <= bits <= 16) or not (1 <= k <= 1 << bits):
        raise ValueError(f"codebook of {k} entries does not fit {bits} index bits")
    if len(indices) != n or len(dims) > MAX_RANK:
        raise ValueError("indices do not match the tensor dims")
    if n and ((indices.dtype.kind == "i" and int(indices.min()) < 0) or int(indices.max()) >= k):
        raise ValueError("index outside the codebook")
    if value_type not in VALUE_TYPES:
        raise ValueError(f"value type {value_type} is not one of {sorted(VALUE_TYPES)}")
    if value_type != FLOAT32:
        low, high = INTEGER_RANGES[value_type]
        if not (np.isfinite(codebook).all() and (codebook == np.round(codebook)).all()
                and codebook.min() >= low and codebook.max() <= high):
            raise ValueError(f"an integer record's codebook holds integers in [{low}, {high}] only")
        if (outlier_positions is not None and len(outlier_positions)) or scales is not None:
            raise ValueError("an integer record has no outliers and no scales")
        codebook = codebook + np.float32(0.0)  # -0.0 -> +0.0: the integer 0 is the pruned entry of sparse coding
    steps_type = coding_steps or (NumpyCoding if _native is None else NativeCoding)
    positions = np.zeros(0, np.int64) if outlier_positions is None else np.asarray(outlier_positions, np.int64)
    section = b""
    sparse_coding = bool(codebook[0].view(np.uint32) == 0 and n)  # index 0 is the pruned, exact 0.0
    # One counting pass over the indices, whichever coding and outliers there are: with outliers, the counts of
    # the indices as each coding writes them (an outlier's index replaced) follow from the counts of one of them.
    dense_indices = sparse_indices = indices
    value_counts = dense_counts = None
    if len(positions):
        section = outliers.encode_section(positions, outlier_values, n)
        if sparse_coding:  # the outliers' indices become the pruned 0 for gap coding
            sparse_indices = indices.copy()
            sparse_indices[positions] = 0
            sparse_steps = steps_type(sparse_indices)
            value_counts = sparse_steps.counts(k, True)  # the gap histogram comes in the same pass
            others = value_counts.copy()
            others[0] -= len(positions)
        else:  # all counts minus the outliers' own (positions are unique)
            others = steps_type(indices).counts(k, False) - np.bincount(indices[positions], minlength=k)
        # dense coding: the most frequent index among the others
        fill = int(np.argmax(others)) if len(positions) < n else 0
        dense_indices = indices.copy()
        dense_indices[positions] = fill
        dense_counts = others.copy()
        dense_counts[fill] += len(positions)
        if not sparse_coding:  # only dense coding is tried without a pruned zero
            sparse_indices, value_counts = dense_indices, dense_counts
    scale_section = b"" if scales is None else encode_scale_section(scales, scale_axis, tuple(dims))
    if scales is not None:
        with np.errstate(over="ignore"):
            product = np.float32(np.abs(codebook).max()) * np.float32(np.max(scales))
        if not np.isfinite(product):
            raise ValueError("scales times the codebook overflow float32")
    version = (RECORD_VERSION_OUTLIERS if len(positions) else RECORD_VERSION) + (2 if scales is not None else 0)
    header = _FIXED.pack(RECORD_MAGIC, version, value_type, len(dims), bits, 0, 0, k, n)
    header += struct.pack(f"<{len(dims)}Q", *dims) + codebook.tobytes()

    if value_counts is None or not sparse_coding:
        sparse_steps = steps_type(sparse_indices)
    if value_counts is None:
        value_counts = sparse_steps.counts(k, sparse_coding)  # the gap histogram comes in the same pass
        dense_counts = value_counts
    dense_steps = sparse_steps if dense_indices is sparse_indices else steps_type(dense_indices)
    return _assemble_record(header, n, k, sparse_coding, sparse_steps, dense_steps, value_counts, dense_counts,
                            scale_section + section)


def _assemble_record(header: bytes, n: int, k: int, sparse_coding: bool, sparse_steps, dense_steps,
                     value_counts: np.ndarray, dense_counts: np.ndarray, sections: bytes) -> bytes:
    """The record from its header (fixed fields, dims, codebook), the two codings' coding steps and index counts
    (``value_counts``: as gap coding writes them, index 0 the pruned zeros; ``dense_counts``: as dense coding
    writes them) and the optional sections that follow the payload: the smaller coding, the payload, the CRC."""
    dense_lengths = huffman.code_lengths(dense_counts)
    dense_bits = int((dense_counts * dense_lengths).sum())
    best = (dense_bits + 8 * k, CODING_DENSE, 0)
    sparse_counts = value_counts.copy()
    sparse_counts[0] = 0
    if sparse_coding:
        max_gap = sparse_steps.max_gap()
        value_bits = int((sparse_counts * huffman.code_lengths(sparse_counts)).sum()) + 8 * k
        for gap_bits in range(1, MAX_GAP_BITS + 1):
            if gap_bits > 1 and (1 << (gap_bits - 1)) > max(max_gap, 1):
                break  # larger alphabets only add table bytes
            counts = sparse_steps.gap_counts(gap_bits)
            cost = int((counts * huffman.code_lengths(counts)).sum()) + 8 * (1 << gap_bits) + value_bits
            if cost < best[0]:
                best = (cost, CODING_SPARSE, gap_bits)

    _, coding, gap_bits = best
    if coding == CODING_DENSE:
        payload, payload_bits = dense_steps.dense_payload(dense_lengths)
        body = dense_lengths.tobytes()
    else:
        gap_lengths = huffman.code_lengths(sparse_steps.gap_counts(gap_bits))
        value_lengths = huffman.code_lengths(sparse_counts)
        payload, payload_bits = sparse_steps.sparse_payload(gap_bits, gap_lengths, value_lengths)
        nonzero_count = n - int(value_counts[0])
        body = struct.pack("<BQ", gap_bits, nonzero_count) + gap_lengths.tobytes() + value_lengths.tobytes()
    record = bytearray(header)
    record[9] = coding
    record += body + struct.pack("<Q", payload_bits) + payload + sections
    record += struct.pack("<I", zlib.crc32(record))
    return bytes(record)


def _take_payload(cursor: "_Cursor") -> tuple[bytes, int]:
    (payload_bits,) = struct.unpack("<Q", cursor.take(8, "payload length"))
    payload = cursor.take((payload_bits + 7) // 8, "payload")
    if payload_bits % 8 and payload[-1] & ((1 << (8 - payload_bits % 8)) - 1):
        raise CorruptSidecarError("payload has non-zero padding bits")
    return payload, payload_bits


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, size: int, what: str) -> bytes:
        if size < 0 or self.offset + size > len(self.data):
            raise CorruptSidecarError(f"record is truncated: {what} runs past its end")
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        return chunk


def decode_record(data: bytes) -> Record:
    """Validate and decode a record (the numpy reference the C++ kernels are tested against)."""
    data = bytes(data)
    if len(data) < _FIXED.size + 4:
        raise CorruptSidecarError("record is shorter than its fixed header")
    if zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise CorruptSidecarError("record checksum mismatch: the sidecar is corrupt")
    cursor = _Cursor(data[:-4])
    magic, version, value_type, rank, bits, coding, reserved, k, n = _FIXED.unpack(cursor.take(_FIXED.size, "header"))
    if magic != RECORD_MAGIC:
        raise CorruptSidecarError("not an onnxcomp weight record (bad magic)")
    if not RECORD_VERSION <= version <= RECORD_VERSION_SCALES_OUTLIERS:
        raise CorruptSidecarError(f"record version {version} is not supported (expected 1 to 4)")
    if value_type not in VALUE_TYPES or rank > MAX_RANK or not 1 <= bits <= 16 or coding > 1 or reserved:
        raise CorruptSidecarError("record header has a field out of range")
    if value_type != FLOAT32 and version != RECORD_VERSION:
        raise CorruptSidecarError("an integer record (value type 2 or 3) must be version 1 (no scales, no outliers)")
    if not 1 <= k <= 1 << bits or n >= MAX_ELEMENTS:
        raise CorruptSidecarError("record codebook size or element count out of range")
    dims = struct.unpack(f"<{rank}Q", cursor.take(8 * rank, "dims"))
    if int(np.prod(np.array(dims, dtype=object))) != n:
        raise CorruptSidecarError("record dims do not multiply to its element count")
    codebook = np.frombuffer(cursor.take(4 * k, "codebook"), dtype="<f4").astype(np.float32)
    if not np.isfinite(codebook).all():
        raise CorruptSidecarError("record codebook holds a value that is not finite")
    check_integer_codebook(codebook, value_type)
    if coding == CODING_DENSE:
        lengths = np.frombuffer(cursor.take(k, "code table"), dtype=np.uint8)
        payload, payload_bits = _take_payload(cursor)
        indices = huffman.decode(payload, payload_bits, lengths, n) if n else np.zeros(0, np.int64)
        if n == 0 and payload_bits:
            raise CorruptSidecarError("payload has bits left over after the last symbol")
    else:
        if codebook[:1].view(np.uint32).tolist() != [0]:
            raise CorruptSidecarError("sparse record needs codebook[0] == 0.0")
        gap_bits, nonzero_count = struct.unpack("<BQ", cursor.take(9, "sparse header"))
        if not 1 <= gap_bits <= MAX_GAP_BITS or nonzero_count > n:
            raise CorruptSidecarError("sparse record header out of range")
        gap_lengths = np.frombuffer(cursor.take(1 << gap_bits, "gap table"), dtype=np.uint8)
        value_lengths = np.frombuffer(cursor.take(k, "value table"), dtype=np.uint8)
        if value_lengths[0]:
            raise CorruptSidecarError("sparse record codes the pruned value 0")
        payload, payload_bits = _take_payload(cursor)
        indices = _decode_sparse(payload, payload_bits, gap_bits, gap_lengths, value_lengths, n, nonzero_count)
    record = Record(tuple(dims), codebook, indices, bits, coding, value_type=value_type)
    if version >= RECORD_VERSION_SCALES:
        record.scale_axis, record.scales = decode_scale_section(cursor.take, record.dims, codebook)
    if version in (RECORD_VERSION_OUTLIERS, RECORD_VERSION_SCALES_OUTLIERS):
        start = cursor.offset
        record.outlier_positions, record.outlier_values = outliers.decode_section(cursor.take, n)
        record.outlier_bytes = cursor.offset - start
    if cursor.offset != len(cursor.data):
        raise CorruptSidecarError("record has trailing bytes")
    return record


def check_integer_codebook(codebook: np.ndarray, value_type: int) -> None:
    """Raise CorruptSidecarError unless every value of an integer record's (float32) codebook is an integer in its
    type's range (no-op for FLOAT32)."""
    if value_type == FLOAT32:
        return
    low, high = INTEGER_RANGES[value_type]
    if not ((codebook == np.floor(codebook)).all() and (codebook >= low).all() and (codebook <= high).all()):
        raise CorruptSidecarError(f"integer record codebook holds a value that is not an integer in [{low}, {high}]")


def decode_record_fast(data: bytes) -> Record:
    """``decode_record`` through the compiled, bounds-checked decoder of the custom-op library (csrc/decode.h,
    exposed as ``onnxcomp._native.decode_record``): the same Record, with indices as uint8 (bits <= 8) or uint16
    instead of int64. The compressor's own reads of records (fidelity attribution, inspect, verify) use it; the
    numpy ``decode_record`` stays the reference (tests/test_native.py compares them). Raises
    ``CorruptSidecarError`` on a record the decoder rejects."""
    from onnxcomp.core.native import native as module
    if module is None or not hasattr(module, "decode_record"):
        return decode_record(data)
    data = bytes(data)
    try:
        (dims, codebook, indices, bits, coding, positions, values, sections_end, scale_axis,
         scales) = module.decode_record(data)
    except ValueError as error:
        raise CorruptSidecarError(f"corrupt record: {error}") from None
    record = Record(tuple(int(d) for d in dims), codebook, indices, int(bits), int(coding), positions, values,
                    value_type=_FIXED.unpack_from(data)[2])
    if len(scales):
        record.scales, record.scale_axis = scales, int(scale_axis)
    if _FIXED.unpack_from(data)[1] in (RECORD_VERSION_OUTLIERS, RECORD_VERSION_SCALES_OUTLIERS):
        record.outlier_bytes = len(data) - 4 - int(sections_end)
    return record


def _decode_sparse(payload, payload_bits, gap_bits, gap_lengths, value_lengths, n, nonzero_count) -> np.ndarray:
    reader = huffman.BitReader(payload, payload_bits)
    gap_symbol, gap_length = reader.table(gap_lengths, "gap table")
    value_symbol, value_length = reader.table(value_lengths, "value table")
    escape = (1 << gap_bits) - 1
    indices = np.zeros(n, dtype=np.int64)
    position = 0  # next element
    bit = 0
    produced = 0
    while produced < nonzero_count:
        if bit >= payload_bits or gap_symbol[bit] < 0:
            raise CorruptSidecarError("payload ends early or holds an invalid gap code")
        gap = gap_symbol[bit]
        bit += gap_length[bit]
        if gap == escape:
            position += escape
            if position > n:
                raise CorruptSidecarError("gap decoding runs past the tensor's end")
            continue
        position += gap
        if position >= n:
            raise CorruptSidecarError("gap decoding runs past the tensor's end")
        if bit >= payload_bits or value_symbol[bit] < 0:
            raise CorruptSidecarError("payload ends early or holds an invalid value code")
        indices[position] = value_symbol[bit]
        bit += value_length[bit]
        position += 1
        produced += 1
    if bit != payload_bits:
        raise CorruptSidecarError("payload has bits left over after the last symbol")
    return indices


@dataclass
class DirectoryEntry:
    name: str
    offset: int
    length: int
    transposed: bool = False


class SidecarWriter:
    """Writes records to a sidecar file back to back after the 32-byte header, then the directory and its CRC.

    No padding between records (sidecars written before session 20 put each record at a multiple of 64 bytes): no
    reader needs it (every reader finds a record by its offset and reads its fields byte-wise), and on a small model
    it was a visible share of the output (120 of the 46,896 bytes of LeNet-300-100's --no-distill output)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.entries: list[DirectoryEntry] = []
        self._file = open(path, "wb")
        self._file.write(b"\0" * 32)

    def add(self, name: str, record: bytes, transposed: bool = False) -> DirectoryEntry:
        entry = DirectoryEntry(name, self._file.tell(), len(record), transposed)
        self._file.write(record)
        self.entries.append(entry)
        return entry

    def close(self) -> None:
        directory_offset = self._file.tell()
        directory = bytearray()
        for entry in self.entries:
            name = entry.name.encode("utf-8")
            directory += struct.pack("<QQBH", entry.offset, entry.length, int(entry.transposed), len(name)) + name
        self._file.write(directory + struct.pack("<I", zlib.crc32(directory)))
        self._file.seek(0)
        self._file.write(struct.pack("<8sHHIQQ", FILE_MAGIC, FILE_VERSION, 0, len(self.entries), directory_offset, 0))
        self._file.close()

    def abort(self) -> None:
        self._file.close()


def read_directory(path: str) -> list[DirectoryEntry]:
    """Read and validate a sidecar's directory."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 36 or data[:8] != FILE_MAGIC:
        raise CorruptSidecarError(f"{path} is not an onnxcomp sidecar")
    _, version, _, count, directory_offset, _ = struct.unpack("<8sHHIQQ", data[:32])
    if version != FILE_VERSION:
        raise CorruptSidecarError(f"{path}: sidecar version {version} is not supported")
    directory = data[directory_offset:-4] if 32 <= directory_offset <= len(data) - 4 else b""
    if zlib.crc32(directory) != struct.unpack("<I", data[-4:])[0]:
        raise CorruptSidecarError(f"{path}: directory checksum mismatch")
    cursor = _Cursor(directory)
    entries = []
    for _ in range(count):
        offset, length, transposed, name_length = struct.unpack("<QQBH", cursor.take(19, "directory"))
        name = cursor.take(name_length, "directory name").decode("utf-8", errors="replace")
        if offset + length > directory_offset:
            raise CorruptSidecarError(f"{path}: directory entry {name!r} points past the records")
        entries.append(DirectoryEntry(name, offset, length, bool(transposed)))
    return entries
