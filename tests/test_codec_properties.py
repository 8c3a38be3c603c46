"""Property-based tests (hypothesis) of the Python codec beyond Huffman streams: weight records and the
sidecar file round-trip for arbitrary tensors, and damaged bytes only ever raise CorruptSidecarError."""

import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxcomp.core import sidecar
from onnxcomp.errors import CorruptSidecarError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def tensors(draw, max_elements=600):
    """(codebook, indices, dims, bits): any rank 0..4 (zero-size dims included), any bit width, dense or sparse."""
    rank = draw(st.integers(0, 4))
    dims = tuple(draw(st.lists(st.integers(0, 12), min_size=rank, max_size=rank)))
    n = int(np.prod(dims, dtype=np.int64)) if dims else 1
    if n > max_elements:
        dims, n = (n % max_elements,), n % max_elements
    bits = draw(st.integers(1, 16))
    k = draw(st.integers(1, min(1 << bits, 300)))
    values = draw(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=k, max_size=k))
    codebook = np.array(values, dtype=np.float32)
    prunable = draw(st.booleans())
    if prunable:
        codebook[0] = 0.0
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, k, n)
    if prunable:
        indices[rng.random(n) < draw(st.floats(0, 1))] = 0
    return codebook, indices, dims, bits


@SETTINGS
@given(tensors())
def test_record_roundtrip(tensor):
    codebook, indices, dims, bits = tensor
    record = sidecar.decode_record(sidecar.encode_record(codebook, indices, dims, bits))
    assert record.dims == dims and record.bits == bits
    assert np.array_equal(record.indices, indices.ravel())
    assert np.array_equal(record.codebook.view(np.uint32), codebook.view(np.uint32))


@pytest.mark.parametrize("case", ["empty", "single symbol", "all 2^16 symbols"])
def test_record_stream_extremes(case):
    rng = np.random.default_rng(3)
    if case == "empty":
        codebook, indices, dims, bits = np.zeros(1, np.float32), np.zeros(0, np.int64), (0,), 1
    elif case == "single symbol":
        codebook, indices, dims, bits = np.array([0.5], np.float32), np.zeros(1000, np.int64), (10, 100), 1
    else:
        codebook = rng.standard_normal(1 << 16).astype(np.float32)
        indices, dims, bits = rng.permutation(1 << 16), (256, 256), 16
    record = sidecar.decode_record(sidecar.encode_record(codebook, indices, dims, bits))
    assert np.array_equal(record.indices, indices.ravel()) and record.dims == dims


def reseal(data: bytes) -> bytes:
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))


@SETTINGS
@given(tensors(max_elements=200), st.data())
def test_damaged_records_only_raise_corrupt_sidecar(tensor, data):
    """Truncations, byte edits and insertions (CRC resealed, so the structural checks run) never escape as
    another exception type, and whatever decodes is self-consistent."""
    encoded = bytearray(sidecar.encode_record(*tensor))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(encoded) - 1))
        action = data.draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        if action == "set":
            encoded[position] = data.draw(st.integers(0, 255))
        elif action == "insert":
            encoded[position:position] = bytes([data.draw(st.integers(0, 255))])
        elif action == "delete":
            del encoded[position]
        else:
            del encoded[position:]
        if not encoded:
            break
    for candidate in (bytes(encoded), reseal(bytes(encoded)) if len(encoded) >= 4 else bytes(encoded)):
        try:
            record = sidecar.decode_record(candidate)
        except CorruptSidecarError:
            continue
        assert len(record.indices) == int(np.prod(record.dims, dtype=np.int64))
        assert record.indices.size == 0 or 0 <= record.indices.min() <= record.indices.max() < len(record.codebook)


@SETTINGS
@given(st.lists(st.tuples(st.text(min_size=0, max_size=20), tensors(max_elements=100), st.booleans()), max_size=6))
def test_sidecar_file_roundtrip(tmp_path_factory, entries):
    path = str(tmp_path_factory.mktemp("sidecar") / "m.onnxcomp")
    writer = sidecar.SidecarWriter(path)
    records = []
    for name, tensor, transposed in entries:
        record = sidecar.encode_record(*tensor)
        writer.add(name, record, transposed)
        records.append((name, record, transposed))
    writer.close()
    data = open(path, "rb").read()
    directory = sidecar.read_directory(path)
    assert [(e.name, e.transposed) for e in directory] == [(n, t) for n, _, t in records]
    for end, (entry, (_, record, _)) in zip([32] + [e.offset + e.length for e in directory], zip(directory, records)):
        assert entry.offset == end  # back to back after the 32-byte header, no padding
        assert data[entry.offset:entry.offset + entry.length] == record


@SETTINGS
@given(st.binary(max_size=200), st.integers(0, 3))
def test_damaged_sidecar_directory_only_raises_corrupt_sidecar(tmp_path_factory, garbage, count):
    """A sidecar header and directory made of arbitrary bytes (with a valid directory CRC)."""
    path = tmp_path_factory.mktemp("bad") / "x.onnxcomp"
    header = struct.pack("<8sHHIQQ", sidecar.FILE_MAGIC, sidecar.FILE_VERSION, 0, count, 32, 0)
    path.write_bytes(header + garbage + struct.pack("<I", zlib.crc32(garbage)))
    try:
        entries = sidecar.read_directory(str(path))
    except CorruptSidecarError:
        return
    assert len(entries) == count
    assert all(e.offset + e.length <= 32 for e in entries)
