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
    assert [e.offset for e in entries] == [32] + [e.offset + e.length for e in entries[:-1]]  # no padding
    for entry in entries:
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


# ---- Outlier section (record version 2) ---------------------------------------------------------------------

from onnxcomp.core import outliers  # noqa: E402


def outlier_record(rng, n=500, count=7, scale=20.0, sparse=False):
    cb = codebook_with_zero(rng, 8)
    idx = sparse_indices(rng, (n,), 0.8 if sparse else 0.0, 8)
    positions = np.sort(rng.choice(n, count, replace=False))
    values = (rng.standard_normal(count) * scale).astype(np.float32)
    return cb, idx, positions, values, sidecar.encode_record(cb, idx, (n,), 3, positions, values)


@pytest.mark.parametrize("n,count,sparse", [(1, 1, False), (500, 7, False), (500, 7, True), (5000, 5000, False), (200_000, 1000, True)])
def test_outlier_roundtrip(rng, n, count, sparse):
    cb, idx, positions, values, data = outlier_record(rng, n, count, sparse=sparse)
    assert struct.unpack("<H", data[4:6])[0] == sidecar.RECORD_VERSION_OUTLIERS
    record = sidecar.decode_record(data)
    assert np.array_equal(record.outlier_positions, positions)
    expected = cb[idx].copy()
    expected[positions] = outliers.stored_values(values)
    assert np.array_equal(record.to_dense(), expected)
    others = np.setdiff1d(np.arange(n), positions)
    assert np.array_equal(record.indices[others], idx[others])  # only the outliers' own indices may change


def test_records_without_outliers_stay_version_1(rng):
    data = sidecar.encode_record(codebook_with_zero(rng, 4), rng.integers(0, 4, 30), (30,), 2)
    assert struct.unpack("<H", data[4:6])[0] == sidecar.RECORD_VERSION


def test_outlier_value_format_rule():
    assert outliers.value_format(np.array([1.0, -2.5, 65504.0], np.float32)) == outliers.FLOAT16
    assert outliers.value_format(np.array([1.0, 70000.0], np.float32)) == outliers.FLOAT32  # binary16 overflows
    assert outliers.value_format(np.array([1e-6], np.float32)) == outliers.FLOAT32  # binary16 subnormal: too coarse
    third = np.float32(1 / 3)
    assert abs(float(np.float16(third)) - third) <= outliers.FLOAT16_RELATIVE_ERROR * third
    assert outliers.value_format(np.array([third], np.float32)) == outliers.FLOAT16


def test_outliers_cost_about_the_budget(rng):
    """0.5 % outliers: Rice-coded gaps plus binary16 values, near 0.13 bit per weight (docs/format.md)."""
    n = 1_000_000
    positions = np.sort(rng.choice(n, n // 200, replace=False))
    values = rng.standard_normal(len(positions)).astype(np.float32) * 5
    bits_per_weight = 8 * outliers.encoded_bytes(positions, values) / n
    assert 0.10 < bits_per_weight < 0.15


def outlier_section_offset(data: bytes) -> int:
    """Where the outlier section starts in a dense version-2 record with a rank-1 shape and K = 8."""
    _, _, _, rank, _, coding, _, k, _ = struct.unpack("<4sHBBBBHIQ", data[:24])
    assert coding == sidecar.CODING_DENSE and rank == 1
    at = 24 + 8 + 4 * k + k
    payload_bits = struct.unpack("<Q", data[at:at + 8])[0]
    return at + 8 + (payload_bits + 7) // 8


@pytest.mark.parametrize("field,value,match", [
    ("count", 0, "outlier count"), ("count", 501, "outlier count"), ("format", 2, "value format"),
    ("rice", 40, "Rice bits"), ("position_bits", 3, "shorter than L codes"),
])
def test_bad_outlier_headers_are_rejected(rng, field, value, match):
    *_, data = outlier_record(rng)
    start = outlier_section_offset(data)
    body = bytearray(data[:-4])
    offset, fmt = {"count": (0, "<Q"), "format": (8, "<B"), "rice": (9, "<B"), "position_bits": (10, "<Q")}[field]
    body[start + offset:start + offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    with pytest.raises(CorruptSidecarError, match=match):
        sidecar.decode_record(reseal(bytes(body)))


def test_bad_outlier_positions_and_values_are_rejected(rng):
    cb = codebook_with_zero(rng, 8)
    idx = rng.integers(0, 8, 100)
    # A position at N, written by hand (the encoder refuses it): one gap of 100 with r = 6.
    good = sidecar.encode_record(cb, idx, (100,), 3, np.array([99]), np.array([5.0], np.float32))
    start = outlier_section_offset(good)
    count, fmt, r, bits = struct.unpack("<QBBQ", good[start:start + 18])
    assert (count, r, bits) == (1, 6, 8)  # gap 99: unary 1, a zero, 100011
    body = bytearray(good[:-4])
    body[start + 18] = 0b10100100  # gap 64 + 36 = 100: position 100 = N
    with pytest.raises(CorruptSidecarError, match="not below N"):
        sidecar.decode_record(reseal(bytes(body)))
    body = bytearray(good[:-4])
    body[-2:] = np.array([np.inf], "<f2").tobytes()
    with pytest.raises(CorruptSidecarError, match="not finite"):
        sidecar.decode_record(reseal(bytes(body)))
    with pytest.raises(CorruptSidecarError, match="trailing"):
        sidecar.decode_record(reseal(bytes(good[:-4]) + b"\0"))
    with pytest.raises(CorruptSidecarError, match="truncated"):
        sidecar.decode_record(reseal(bytes(good[:-5])))
    for bad_positions in ([3, 3], [5, 2], [-1], [100]):
        with pytest.raises(ValueError):
            sidecar.encode_record(cb, idx, (100,), 3, np.array(bad_positions), np.ones(len(bad_positions), np.float32))
    with pytest.raises(ValueError):
        sidecar.encode_record(cb, idx, (100,), 3, np.array([1]), np.array([np.nan], np.float32))


def test_every_truncation_of_an_outlier_record_is_rejected(rng):
    *_, data = outlier_record(rng, n=300, count=9)
    for size in range(len(data)):
        with pytest.raises(CorruptSidecarError):
            sidecar.decode_record(data[:size])
        if size > 40:
            with pytest.raises(CorruptSidecarError):
                sidecar.decode_record(reseal(data[:size - 4]))


def _padded_copy(folder, out):
    """A copy of ``folder``'s out.onnx + out.onnxcomp in the layout writers used before session 20: every record at
    a multiple of 64 bytes, zero padding between them; the model's external-data offsets moved to match."""
    import onnx

    data = (folder / "out.onnxcomp").read_bytes()
    writer = bytearray(data[:32])
    moved = {}
    for entry in sidecar.read_directory(str(folder / "out.onnxcomp")):
        writer += b"\0" * (-len(writer) % 64)
        moved[entry.offset] = len(writer)
        writer += data[entry.offset:entry.offset + entry.length]
    directory = bytearray()
    for entry in sidecar.read_directory(str(folder / "out.onnxcomp")):
        name = entry.name.encode()
        directory += struct.pack("<QQBH", moved[entry.offset], entry.length, int(entry.transposed), len(name)) + name
    writer[16:24] = struct.pack("<Q", len(writer))
    (out / "out.onnxcomp").write_bytes(bytes(writer + directory + struct.pack("<I", zlib.crc32(directory))))
    model = onnx.load(str(folder / "out.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for item in tensor.external_data:
            if item.key == "offset":
                item.value = str(moved[int(item.value)])
    onnx.save(model, str(out / "out.onnx"))
    return sorted(moved.values())


def test_sidecars_with_the_old_64_byte_padding_still_run_and_decode(tmp_path, rng):
    import onnx
    from onnx import helper

    import onnxcomp
    from conftest import float_input, make_model, run_compressed, weight
    from onnxcomp.pipeline.compression import decoded_weights

    model = make_model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("MatMul", ["h", "v"], ["y"])],
                       [float_input("x", ["n", 64])], [float_input("y", ["n", 16])],
                       [weight(rng, "w", (64, 32)), weight(rng, "v", (32, 16))])
    (tmp_path / "new").mkdir()
    (tmp_path / "old").mkdir()
    onnx.save(model, tmp_path / "in.onnx")
    onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "new" / "out.onnx", sparsity=0.5, bits=4, min_elements=16)
    offsets = _padded_copy(tmp_path / "new", tmp_path / "old")
    assert len(offsets) == 2 and all(o % 64 == 0 for o in offsets) and offsets[0] == 64  # really the old layout
    assert (tmp_path / "old" / "out.onnxcomp").stat().st_size > (tmp_path / "new" / "out.onnxcomp").stat().st_size
    x = {"x": rng.standard_normal((3, 64)).astype(np.float32)}
    assert np.array_equal(run_compressed(tmp_path / "old" / "out.onnx", x)[0],
                          run_compressed(tmp_path / "new" / "out.onnx", x)[0])
    old, new = decoded_weights(str(tmp_path / "old" / "out.onnxcomp")), decoded_weights(str(tmp_path / "new" / "out.onnxcomp"))
    assert old.keys() == new.keys() == {"w", "v"}
    assert all(np.array_equal(old[k], new[k]) for k in old)
