import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxcomp.core import huffman
from onnxcomp.core.native import native
from onnxcomp.errors import CorruptSidecarError


def roundtrip(symbols, alphabet):
    symbols = np.asarray(symbols, dtype=np.int64)
    lengths = huffman.code_lengths(np.bincount(symbols, minlength=alphabet))
    payload, bits = huffman.encode(symbols, lengths)
    return huffman.decode(payload, bits, lengths, len(symbols)), bits, lengths


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), max_size=3000))
def test_roundtrip_arbitrary_streams(values):
    decoded, _, _ = roundtrip(values, 41)
    assert decoded.tolist() == values


@pytest.mark.parametrize("symbols", [[], [7], [3] * 1000])
def test_roundtrip_edge_streams(symbols):
    decoded, bits, lengths = roundtrip(symbols, 8)
    assert decoded.tolist() == symbols
    assert bits == len(symbols)  # a lone symbol costs exactly one bit
    assert (lengths > 0).sum() == (1 if symbols else 0)


def test_roundtrip_full_16_bit_alphabet():
    rng = np.random.default_rng(0)
    symbols = np.concatenate([np.arange(1 << 16), rng.integers(0, 1 << 16, 5000)])
    decoded, _, lengths = roundtrip(symbols, 1 << 16)
    assert np.array_equal(decoded, symbols)
    assert lengths.max() <= huffman.MAX_CODE_LENGTH


def test_size_is_within_one_bit_of_entropy():
    rng = np.random.default_rng(1)
    symbols = rng.zipf(1.8, 50_000) % 64
    counts = np.bincount(symbols, minlength=64)
    p = counts[counts > 0] / counts.sum()
    entropy = -(p * np.log2(p)).sum()
    _, bits, _ = roundtrip(symbols, 64)
    assert entropy <= bits / len(symbols) < entropy + 1


def test_lengths_are_limited_on_extreme_skew():
    counts = np.array([2 ** i for i in range(40)], dtype=np.int64)  # Fibonacci-like skew wants 39-bit codes
    lengths = huffman.code_lengths(counts)
    assert lengths.max() <= huffman.MAX_CODE_LENGTH
    huffman.validate_lengths(lengths, "test")  # still a complete prefix code


def test_canonical_codes_are_prefix_free():
    lengths = huffman.code_lengths(np.array([5, 9, 12, 13, 16, 45]))
    codes = huffman.canonical_codes(lengths)
    words = [format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths)]
    for a in words:
        for b in words:
            assert a == b or not b.startswith(a)


@pytest.mark.parametrize("lengths", [[1, 1, 1], [2, 2, 2], [3], [25, 1]])
def test_invalid_tables_are_rejected(lengths):
    with pytest.raises(CorruptSidecarError):
        huffman.validate_lengths(np.array(lengths), "table")


def test_truncated_stream_is_rejected():
    symbols = np.arange(100) % 7
    lengths = huffman.code_lengths(np.bincount(symbols))
    payload, bits = huffman.encode(symbols, lengths)
    with pytest.raises(CorruptSidecarError):
        huffman.decode(payload, bits - 1, lengths, len(symbols))
    with pytest.raises(CorruptSidecarError):
        huffman.decode(payload, bits, lengths, len(symbols) - 1)  # bits left over


@pytest.mark.skipif(native is None, reason="the compiled module onnxcomp._native is not built")
def test_compiled_tree_depths_match_the_heapq_reference():
    """_native.huffman_depths makes the reference's merges (ties by node number): the same depths on tied,
    skewed, single and 2^16-symbol weights."""
    rng = np.random.default_rng(5)
    cases = [np.array([7]), np.array([3, 3]), np.ones(1000, np.int64), 2 ** np.arange(40, dtype=np.int64),
             rng.integers(1, 5, 300), rng.integers(1, 10 ** 9, 65536), np.array([1, 1, 2, 2, 4, 4, 8, 8])]
    for weights in cases:
        np.testing.assert_array_equal(native.huffman_depths(weights), huffman._huffman_depths_reference(weights))
    with pytest.raises(ValueError):
        native.huffman_depths(np.zeros(0, np.int64))
