"""Canonical, length-limited Huffman coding of integer symbol streams (numpy, no graph objects).

Code lengths come from the classic Huffman merge on symbol counts; if the longest code would exceed
``MAX_CODE_LENGTH`` bits, counts are flattened (halved, floored at 1) and the merge repeated, which always
terminates. Codes are canonical (sorted by length, then symbol), written most significant bit first, as
specified in docs/format.md. The expected size of a stream is ``sum(count[s] * length[s])`` bits, within one
bit per symbol of the entropy ``-sum(p log2 p)``.
"""

from __future__ import annotations

import heapq

import numpy as np

from onnxcomp.core.native import native as _native
from onnxcomp.errors import CorruptSidecarError

MAX_CODE_LENGTH = 24


def code_lengths(counts: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Return uint8 code lengths for symbol ``counts`` (0 for absent symbols)."""
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(len(counts), dtype=np.uint8)
    present = np.flatnonzero(counts > 0)
    if len(present) == 0:
        return lengths
    if len(present) == 1:
        lengths[present[0]] = 1
        return lengths
    if len(present) > (1 << max_length):
        raise ValueError(f"{len(present)} symbols cannot be coded within {max_length} bits")
    weights = counts[present].copy()
    while True:
        depth = _huffman_depths(weights)
        if depth.max() <= max_length:
            break
        weights = np.maximum(weights // 2, 1)
    lengths[present] = depth
    return lengths


def _huffman_depths(weights: np.ndarray) -> np.ndarray:
    """Depth of each leaf in a Huffman tree over ``weights`` (deterministic tie-breaking by insertion order):
    compiled (_native.huffman_depths, the same merges), or ``_huffman_depths_reference`` without the module."""
    if _native is None:
        return _huffman_depths_reference(weights)
    return _native.huffman_depths(np.asarray(weights, dtype=np.int64))


def _huffman_depths_reference(weights: np.ndarray) -> np.ndarray:
    """The straightforward ``_huffman_depths``: Python's heapq over (weight, node) pairs."""
    n = len(weights)
    parent = np.zeros(2 * n - 1, dtype=np.int64)
    heap = [(int(w), i) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    next_node = n
    while len(heap) > 1:
        w1, a = heapq.heappop(heap)
        w2, b = heapq.heappop(heap)
        parent[a] = next_node
        parent[b] = next_node
        heapq.heappush(heap, (w1 + w2, next_node))
        next_node += 1
    root = next_node - 1
    depth = np.zeros(2 * n - 1, dtype=np.int64)
    for node in range(root - 1, -1, -1):  # parents always have larger ids than children
        depth[node] = depth[parent[node]] + 1
    return depth[:n]


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code of each symbol (uint32, right-aligned in ``lengths[s]`` bits)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(len(lengths), dtype=np.uint32)
    order = np.lexsort((np.arange(len(lengths)), lengths))
    order = order[lengths[order] > 0]
    code = 0
    previous_length = 0
    for rank, symbol in enumerate(order):
        length = int(lengths[symbol])
        if rank > 0:
            code += 1
        code <<= length - previous_length
        codes[symbol] = code
        previous_length = length
    return codes


def validate_lengths(lengths: np.ndarray, what: str) -> None:
    """Raise CorruptSidecarError unless ``lengths`` form a complete prefix code (or a lone 1-bit code)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if (lengths > MAX_CODE_LENGTH).any():
        raise CorruptSidecarError(f"{what}: code length above {MAX_CODE_LENGTH}")
    present = lengths[lengths > 0]
    if len(present) == 0:
        return
    if len(present) == 1:
        if present[0] != 1:
            raise CorruptSidecarError(f"{what}: a lone symbol must have code length 1")
        return
    kraft = int(np.sum(np.left_shift(1, MAX_CODE_LENGTH - present)))
    if kraft != 1 << MAX_CODE_LENGTH:
        raise CorruptSidecarError(f"{what}: code lengths do not form a complete prefix code")


class BitWriter:
    """Accumulates variable-length codes, MSB first, into bytes; memory grows with the output only."""

    _CHUNK = 1 << 20

    def __init__(self) -> None:
        self._parts: list[np.ndarray] = []
        self._pending = np.zeros(0, dtype=np.uint8)  # bits (0/1) not yet forming whole bytes
        self.bit_length = 0

    def write(self, codes: np.ndarray, lengths: np.ndarray) -> None:
        """Append ``codes[i]`` in ``lengths[i]`` bits, for every i in order."""
        codes = np.asarray(codes, dtype=np.uint32)
        lengths = np.asarray(lengths, dtype=np.int64)
        for start in range(0, len(codes), self._CHUNK):
            self._write_chunk(codes[start:start + self._CHUNK], lengths[start:start + self._CHUNK])

    def _write_chunk(self, codes: np.ndarray, lengths: np.ndarray) -> None:
        total = int(lengths.sum())
        if total == 0:
            return
        ends = np.cumsum(lengths)
        starts = ends - lengths
        bits = np.empty(total, dtype=np.uint8)
        # Expand each code into its bits: bit j (from the top) of code i lands at starts[i] + j.
        max_length = int(lengths.max())
        for j in range(max_length):
            has_bit = lengths > j
            shift = (lengths[has_bit] - 1 - j).astype(np.uint32)
            bits[starts[has_bit] + j] = (codes[has_bit] >> shift) & 1
        bits = np.concatenate([self._pending, bits])
        whole = len(bits) // 8 * 8
        self._parts.append(np.packbits(bits[:whole]))
        self._pending = bits[whole:]
        self.bit_length += total

    def getvalue(self) -> bytes:
        tail = np.packbits(self._pending) if len(self._pending) else np.zeros(0, dtype=np.uint8)
        return b"".join(part.tobytes() for part in self._parts) + tail.tobytes()


def encode(symbols: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int]:
    """Huffman-code ``symbols`` with the canonical code for ``lengths``; returns (payload, bit length)."""
    writer = BitWriter()
    codes = canonical_codes(lengths)
    lengths = np.asarray(lengths, dtype=np.int64)
    symbols = np.asarray(symbols)
    for start in range(0, len(symbols), BitWriter._CHUNK):  # bounded temporaries, whatever the tensor size
        chunk = symbols[start:start + BitWriter._CHUNK].astype(np.int64, copy=False)
        writer.write(codes[chunk], lengths[chunk])
    return writer.getvalue(), writer.bit_length


class BitReader:
    """Sequential canonical-Huffman decoder over an MSB-first bit stream (the independent numpy decoder).

    For every bit position it precomputes, vectorised, the symbol and length of a code starting there;
    decoding then follows the chain of positions, which is the only sequential step.
    """

    def __init__(self, payload: bytes, bit_length: int) -> None:
        if bit_length > len(payload) * 8:
            raise CorruptSidecarError("payload is shorter than its declared bit length")
        self.bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))[:bit_length]
        self.bit_length = bit_length
        self.position = 0

    def table(self, lengths: np.ndarray, what: str) -> tuple[list[int], list[int]]:
        """Symbol and code length of the code starting at each bit position (-1 where none fits)."""
        lengths = np.asarray(lengths, dtype=np.int64)
        validate_lengths(lengths, what)
        n = self.bit_length
        symbol_at = np.full(n, -1, dtype=np.int64)
        length_at = np.zeros(n, dtype=np.int64)
        if n == 0 or not (lengths > 0).any():
            return symbol_at.tolist(), length_at.tolist()
        max_length = int(lengths.max())
        padded = np.concatenate([self.bits, np.zeros(max_length, dtype=np.uint8)]).astype(np.uint32)
        window = np.zeros(n, dtype=np.uint32)  # the next max_length bits at each position
        for j in range(max_length):
            window = (window << 1) | padded[j:j + n]
        # Canonical codes of one length are consecutive, and ranges grow with length: left-aligned to
        # max_length bits, each length owns one interval; searchsorted finds it, the offset the symbol.
        order = np.lexsort((np.arange(len(lengths)), lengths))
        order = order[lengths[order] > 0]
        codes = canonical_codes(lengths).astype(np.int64)
        used = np.unique(lengths[lengths > 0])
        first_rank = np.searchsorted(lengths[order], used)
        first_code = codes[order[first_rank]]
        counts = np.diff(np.append(first_rank, len(order)))
        ends = (first_code + counts) << (max_length - used)
        which = np.searchsorted(ends, window.astype(np.int64), side="right")
        valid = which < len(used)
        which = np.minimum(which, len(used) - 1)
        length = used[which]
        rank = first_rank[which] + (window.astype(np.int64) >> (max_length - length)) - first_code[which]
        valid &= (rank >= first_rank[which]) & (rank < first_rank[which] + counts[which])
        valid &= np.arange(n) + length <= n
        symbol_at[valid] = order[rank[valid]]
        length_at[valid] = length[valid]
        return symbol_at.tolist(), length_at.tolist()


def decode(payload: bytes, bit_length: int, lengths: np.ndarray, count: int) -> np.ndarray:
    """Decode exactly ``count`` symbols that must use exactly ``bit_length`` bits."""
    reader = BitReader(payload, bit_length)
    symbol_at, length_at = reader.table(lengths, "symbol table")
    out = np.empty(count, dtype=np.int64)
    position = 0
    for i in range(count):
        if position >= bit_length or symbol_at[position] < 0:
            raise CorruptSidecarError("payload ends early or holds an invalid code")
        out[i] = symbol_at[position]
        position += length_at[position]
    if position != bit_length:
        raise CorruptSidecarError("payload has bits left over after the last symbol")
    return out
