import struct
import zlib

import numpy as np
import pytest

from onnxcomp.core import sidecar
from onnxcomp.errors import CorruptSidecarError


def sparse_indices(rng, shape, sparsity, k):
    idx = rng.integers(1, k, size=shape)
    idx[rng.random(shape) < sparsity] = 0
    return idx


def codebook_with_zero(rng, k):
    return np.concatenate([[0.0], rng.standard_normal(k - 1)]).astype(np.float32)


@pytest.mark.parametrize("sparsity,coding", [(0.0, sidecar.CODING_DENSE), (0.95, sidecar.CODING_SPARSE), (1.0, sidecar.CODING_SPARSE)])
def test_record_roundtrip_and_coding_choice(rng, sparsity, coding):
    idx = sparse_indices(rng, (50, 70), sparsity, 16)
    cb = codebook_with_zero(rng, 16)
    record = sidecar.decode_record(sidecar.encode_record(cb, idx, (50, 70), 4))
    assert record.coding == coding
    assert record.dims == (50, 70)
    assert np.array_equal(record.indices, idx.ravel())
    assert np.array_equal(record.codebook.view(np.uint32), cb.view(np.uint32))


def test_sparse_coding_escapes_the_one_bit_floor(rng):
    idx = sparse_indices(rng, (300, 784), 0.95, 16)
    data = sidecar.encode_record(codebook_with_zero(rng, 16), idx, idx.shape, 4)
    assert len(data) * 8 / idx.size < 0.5  # dense Huffman could not go below 1 bit per weight


def test_long_gaps_use_escapes(rng):
    idx = np.zeros(100_000, dtype=np.int64)
    idx[[5, 70_000, 99_999]] = [1, 2, 3]
    cb = np.array([0, 1, 2, 3], np.float32)
    assert np.array_equal(sidecar.decode_record(sidecar.encode_record(cb, idx, (100_000,), 2)).indices, idx)


@pytest.mark.parametrize("dims,k,bits", [((), 1, 1), ((0, 4), 1, 1), ((3, 1, 1, 2), 2, 1), ((40, 40), 65536, 16)])
def test_record_edge_shapes(rng, dims, k, bits):
    n = int(np.prod(dims))
    idx = rng.integers(0, k, size=n)
    cb = rng.standard_normal(k).astype(np.float32)
    record = sidecar.decode_record(sidecar.encode_record(cb, idx, dims, bits))
    assert record.dims == dims and np.array_equal(record.indices, idx)


def test_every_truncation_and_flip_is_rejected(rng):
    data = sidecar.encode_record(codebook_with_zero(rng, 8), sparse_indices(rng, (20, 30), 0.7, 8), (20, 30), 3)
    for size in range(len(data)):
        with pytest.raises(CorruptSidecarError):
            sidecar.decode_record(data[:size])
    for position in range(0, len(data), 7):
        flipped = bytearray(data)
        flipped[position] ^= 0x10
        with pytest.raises(CorruptSidecarError):
            sidecar.decode_record(bytes(flipped))


def reseal(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_lying_fields_are_rejected_even_with_a_valid_checksum(rng):
    data = bytearray(sidecar.encode_record(rng.standard_normal(4).astype(np.float32), rng.integers(0, 4, 60), (6, 10), 2))
    cases = {
        "version": (4, struct.pack("<H", 9)),
        "dims": (24, struct.pack("<Q", 7)),
        "bits": (8, bytes([1])),  # K=4 no longer fits
        "coding": (9, bytes([5])),
    }
    for name, (offset, value) in cases.items():
        body = bytearray(data[:-4])
        body[offset:offset + len(value)] = value
        with pytest.raises(CorruptSidecarError):
            sidecar.decode_record(reseal(bytes(body)))


def test_sidecar_directory_roundtrip(tmp_path, rng):
    path = str(tmp_path / "m.onnxcomp")
    writer = sidecar.SidecarWriter(path)
    records = {}
    for name in ("a", "b.weight", "ünï"):
        records[name] = sidecar.encode_record(rng.standard_normal(4).astype(np.float32), rng.integers(0, 4, 12), (3, 4), 2)
        writer.add(name, records[name], transposed=name == "a")
    writer.close()
    entries = sidecar.read_directory(path)
    data = open(path, "rb").read()
    assert [e.name for e in entries] == list(records)
    assert [e.transposed for e in entries] == [True, False, False]
    for entry in entries:
        assert entry.offset % sidecar.RECORD_ALIGNMENT == 0
        assert data[entry.offset:entry.offset + entry.length] == records[entry.name]
    corrupt = bytearray(data)
    corrupt[-10] ^= 1
    (tmp_path / "bad.onnxcomp").write_bytes(bytes(corrupt))
    with pytest.raises(CorruptSidecarError):
        sidecar.read_directory(str(tmp_path / "bad.onnxcomp"))


def test_sidecar_path():
    assert sidecar.sidecar_path("out/small.onnx") == "out/small.onnxcomp"


def test_non_finite_codebook_and_padding_bits_are_rejected(rng):
    data = bytearray(sidecar.encode_record(np.array([0.5, 1.5], np.float32), np.array([0, 0, 0, 0, 0, 0, 1]), (7,), 1))
    body = bytearray(data[:-4])
    body[24 + 8:24 + 12] = np.array([np.inf], "<f4").tobytes()  # codebook[0] of a rank-1 record
    with pytest.raises(CorruptSidecarError, match="not finite"):
        sidecar.decode_record(reseal(bytes(body)))
    body = bytearray(data[:-4])
    assert body[-1] & 1 == 0  # 7 one-bit codes: one padding bit
    body[-1] |= 1  # the payload's last byte has unused low bits
    with pytest.raises(CorruptSidecarError, match="padding"):
        sidecar.decode_record(reseal(bytes(body)))


def test_domain_string_agrees_between_python_and_cpp():
    from pathlib import Path

    import onnxcomp
    from onnxcomp.passes.base import DOMAIN
    header = (Path(__file__).resolve().parents[1] / "csrc" / "record_format.h").read_text()
    assert f'#define ONNXCOMP_DOMAIN "{onnxcomp.DOMAIN}"' in header
    assert DOMAIN == onnxcomp.DOMAIN
