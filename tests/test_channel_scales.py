"""Channel-scaled weight records (record versions 3 and 4, docs/format.md): every reader against the numpy reference.

A scaled record decodes element i to float32(codebook[index] * scales[channel of i]); outliers stay exact and
unscaled. Each kernel is checked bit for bit against an *unscaled* record holding the same decoded tensor (its
codebook is the distinct decoded values): a kernel reading the scaled record must give the very same output,
since both working weights are the same floats. Malformed scale sections are rejected naming the field.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcomp
from onnxcomp.core import sidecar
from onnxcomp.core.sidecar import decode_record, decode_record_fast, encode_record
from onnxcomp.errors import CorruptSidecarError

from conftest import session_with_env
from test_conv import codebook_conv_model, numpy_conv, session_output, summation_bound
from test_kernels import ISAS, check_against_reference, decode_and_gather, isa_available, matmul_model, run_with_isa


def scaled_layer(rng, shape, bits, axis, *, sparse=False, outliers=0.0, float16=True):
    """(record bytes, dense reference tensor): a random codebook and indices, channel scales over ``axis`` spanning
    100x (binary16-exact, or not with ``float16`` False), optional outliers."""
    size = 1 << bits
    codebook = rng.standard_normal(size).astype(np.float32)
    if sparse:
        codebook[0] = 0.0
        indices = np.where(rng.random(shape) < 0.6, 0, rng.integers(1, size, shape))
    else:
        indices = rng.integers(0, size, shape)
    scales = np.exp(rng.uniform(np.log(0.05), np.log(5.0), shape[axis])).astype(np.float32)
    if float16:
        scales = scales.astype(np.float16).astype(np.float32)
    else:
        scales[0] = np.float32(1.0) + np.float32(2.0 ** -20)  # not a binary16 value
    positions = values = None
    n = int(np.prod(shape))
    if outliers:
        positions = np.sort(rng.choice(n, max(1, int(outliers * n)), replace=False))
        values = (rng.standard_normal(len(positions)) * 30).astype(np.float32)
    data = encode_record(codebook, indices, shape, bits, positions, values, scales=scales, scale_axis=axis)
    expanded = [1] * len(shape)
    expanded[axis] = shape[axis]
    dense = (codebook[indices] * scales.reshape(expanded)).astype(np.float32)
    if outliers:
        dense.reshape(-1)[positions] = sidecar.decode_record(data).outlier_values
    return data, dense


def unscaled_twin(dense: np.ndarray) -> bytes:
    """A version-1 record of exactly ``dense``: its codebook is the distinct values (at most 2^16)."""
    codebook, indices = np.unique(dense.reshape(-1), return_inverse=True)
    assert len(codebook) <= 1 << 16
    bits = max(1, int(np.ceil(np.log2(max(len(codebook), 2)))))
    return encode_record(codebook.astype(np.float32), indices.reshape(dense.shape), dense.shape, bits)


CASES = [  # shape, bits, axis, sparse, outlier fraction, float16 scales
    ((6, 3, 3, 3), 4, 0, False, 0.0, True),
    ((8, 4, 3, 3), 5, 0, True, 0.0, True),
    ((8, 4, 1, 1), 3, 0, False, 0.02, True),
    ((16, 2, 3, 3), 6, 0, True, 0.01, False),
    ((40, 33), 4, 1, False, 0.0, True),
    ((40, 33), 5, 1, True, 0.03, False),
    ((7, 9), 3, 0, False, 0.05, True),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_numpy_and_native_decoders_agree_on_scaled_records(case):
    shape, bits, axis, sparse, outliers, float16 = CASES[case]
    rng = np.random.default_rng(500 + case)
    data, dense = scaled_layer(rng, shape, bits, axis, sparse=sparse, outliers=outliers, float16=float16)
    version = struct.unpack_from("<H", data, 4)[0]
    assert version == (4 if outliers else 3)
    reference = decode_record(data)
    assert reference.scale_axis == axis and len(reference.scales) == shape[axis]
    assert (data[len(data) - 4 - reference.outlier_bytes - 10 - (2 if float16 else 4) * shape[axis] + 1]
            == (sidecar.SCALE_FLOAT16 if float16 else sidecar.SCALE_FLOAT32))
    np.testing.assert_array_equal(reference.to_dense(), dense)
    fast = decode_record_fast(data)
    np.testing.assert_array_equal(fast.to_dense(), dense)
    np.testing.assert_array_equal(fast.scales, reference.scales)
    assert fast.outlier_bytes == reference.outlier_bytes
    if sparse:  # the pruned entry stays exactly +0.0 whatever its channel's scale
        zeros = reference.indices == 0
        assert not np.signbit(dense.reshape(-1)[zeros & ~np.isin(np.arange(dense.size), reference.outlier_positions)]).any()


@pytest.mark.parametrize("case", range(len(CASES)))
def test_decode_and_gather_read_scaled_records_exactly(case):
    shape, bits, axis, sparse, outliers, float16 = CASES[case]
    rng = np.random.default_rng(600 + case)
    data, dense = scaled_layer(rng, shape, bits, axis, sparse=sparse, outliers=outliers, float16=float16)
    rows = np.array([[0, shape[0] - 1, -1], [1, -shape[0], shape[0] // 2]], dtype=np.int64)
    w, g = decode_and_gather(data, rows)
    np.testing.assert_array_equal(w, dense)
    np.testing.assert_array_equal(g, dense[rows])


@pytest.mark.parametrize("case", [4, 5, 6])
@pytest.mark.parametrize("m", [1, 7, 600])
def test_codebook_matmul_reads_scaled_records_exactly(case, m):
    """A scaled [K, N] record (scales along N or K) takes the decode-once dense panels, constant or not: the same
    bits as an unscaled record of the same tensor decoded once, under every instruction-set cap."""
    shape, bits, axis, sparse, outliers, float16 = CASES[case]
    rng = np.random.default_rng(700 + case + m)
    data, dense = scaled_layer(rng, shape, bits, axis, sparse=sparse, outliers=outliers, float16=float16)
    k, n = shape
    bias = rng.standard_normal(n).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    twin = matmul_model(unscaled_twin(dense), k, n, True, bias)
    twin.graph.node[0].attribute.append(helper.make_attribute("decode_once", 1))
    expected = run_with_isa(twin, {"x": x}, "scalar")
    check_against_reference(expected, x, dense, bias)
    model = matmul_model(data, k, n, True, bias)
    for isa in ISAS:
        if isa_available(isa):
            np.testing.assert_array_equal(run_with_isa(model, {"x": x}, isa), expected, err_msg=isa)
    # the record as a graph input: decoded into dense panels in the run
    as_input = matmul_model(data, k, n, True, bias)
    del as_input.graph.initializer[0]
    as_input.graph.input.append(helper.make_tensor_value_info("w_record", TensorProto.UINT8, [len(data)]))
    session = session_with_env(as_input, None)
    got = session.run(None, {"x": x, "w_record": np.frombuffer(data, np.uint8)})[0]
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("case", [0, 1, 2, 3])
def test_codebook_conv_reads_scaled_records_exactly(case):
    shape, bits, axis, sparse, outliers, float16 = CASES[case]
    rng = np.random.default_rng(800 + case)
    data, dense = scaled_layer(rng, shape, bits, axis, sparse=sparse, outliers=outliers, float16=float16)
    attrs = {"pads": [1, 1, 1, 1]} if shape[2] == 3 else {}
    x = rng.standard_normal((1, shape[1], 9, 9)).astype(np.float32)
    bias = rng.standard_normal(shape[0]).astype(np.float32)
    y = session_output(codebook_conv_model(data, attrs, bias), x)
    np.testing.assert_array_equal(y, session_output(codebook_conv_model(unscaled_twin(dense), attrs, bias), x))
    err = np.abs(y.astype(np.float64) - numpy_conv(x, dense, bias, attrs))
    assert (err <= summation_bound(x, dense, bias, attrs)).all()


# ---- malformed scale sections ----------------------------------------------------------------------------------

def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def scale_section_offset(data: bytes, axis_count: int, size: int) -> int:
    """Offset of the scale header in a version-3 record (no outliers): it ends right before the CRC."""
    return len(data) - 4 - 10 - axis_count * size


def malformed(kind: str) -> bytes:
    rng = np.random.default_rng(3)
    data, _ = scaled_layer(rng, (6, 2, 3, 3), 4, 0)
    body = bytearray(data[:-4])
    at = scale_section_offset(data, 6, 2)
    if kind == "axis":
        body[at] = 4
    elif kind == "format":
        body[at + 1] = 2
    elif kind == "count":
        body[at + 2:at + 10] = struct.pack("<Q", 5)
    elif kind == "non-finite":
        body[at + 10:at + 12] = struct.pack("<H", 0x7C00)  # binary16 +inf
    elif kind == "zero":
        body[at + 10:at + 12] = struct.pack("<H", 0x0000)
    elif kind == "negative":
        body[at + 10:at + 12] = struct.pack("<H", 0xBC00)  # -1.0
    elif kind == "overflow":
        body[at + 10:at + 12] = struct.pack("<H", 0x7BFF)  # 65504: times a codebook value near 1e35 below
        codebook_at = 24 + 8 * 4
        body[codebook_at:codebook_at + 4] = struct.pack("<f", 1e36)
    elif kind == "truncated":
        del body[-3:]
    elif kind == "trailing":
        body += b"\0\0"
    elif kind == "version":
        body[4:6] = struct.pack("<H", 5)
    return with_crc(bytes(body))


MALFORMED = {"axis": "scale axis", "format": "scale value format", "count": "scale count", "non-finite": "not finite",
             "zero": "not above 0", "negative": "not above 0", "overflow": "not finite", "truncated": "truncated",
             "trailing": "", "version": "version"}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_scale_sections_are_rejected_by_every_reader(kind):
    data = malformed(kind)
    words = MALFORMED[kind]
    with pytest.raises(CorruptSidecarError, match=words or "trailing"):
        decode_record(data)
    with pytest.raises(CorruptSidecarError, match=words or "bytes between"):
        decode_record_fast(data)
    with pytest.raises(Exception, match=words or "bytes between"):  # the custom-op library at session creation
        decode_and_gather(data, np.zeros((1,), np.int64))


def test_writer_refuses_scales_it_cannot_store():
    codebook, indices = np.array([0.0, 1.0], np.float32), np.zeros((3, 2), np.int64)
    for scales, axis in ((np.ones(2, np.float32), 0), (np.array([1.0, 0.0, 1.0], np.float32), 0),
                         (np.array([1.0, np.inf, 1.0], np.float32), 0), (np.ones(3, np.float32), 2)):
        with pytest.raises(ValueError):
            encode_record(codebook, indices, (3, 2), 1, scales=scales, scale_axis=axis)
    with pytest.raises(ValueError):
        encode_record(np.array([0.0, 3e38], np.float32), indices, (3, 2), 1, scales=np.full(3, 4.0, np.float32))
    assert sidecar.scale_format(np.array([0.5, 2.0], np.float32)) == sidecar.SCALE_FLOAT16
    assert sidecar.scale_format(np.array([0.1], np.float32)) == sidecar.SCALE_FLOAT32
    assert sidecar.scale_format(np.array([2.0 ** -20], np.float32)) == sidecar.SCALE_FLOAT32  # binary16 subnormal


# ---- the writer: allocation and the default pipeline -----------------------------------------------------------

def grouped_conv(w: np.ndarray, group: int):
    """One Conv with filter ``w`` [O, I/group, 3, 3] on an 8x8 input."""
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], group=group)
    graph = helper.make_graph(
        [node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w.shape[1] * group, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, w.shape[0], 8, 8])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def spread_filter(spread: float) -> np.ndarray:
    """A seeded [128, 8, 3, 3] normal filter whose output channels are multiplied by sizes log-uniform over
    ``spread``; ``spread`` 1: every channel rescaled to RMS 1 instead (all alike)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((128, 8, 3, 3)).astype(np.float32)
    if spread == 1:
        return w / np.sqrt((w.astype(np.float64) ** 2).mean(axis=(1, 2, 3))).astype(np.float32).reshape(-1, 1, 1, 1)
    sizes = np.exp(rng.uniform(0, np.log(spread), 128)).astype(np.float32) if spread > 1 else np.ones(128, np.float32)
    return w * sizes.reshape(-1, 1, 1, 1)


def test_allocator_measures_scaled_candidates_on_the_weight_itself():
    """The channel-scaled candidate's e2 and einf equal those of the codebook it describes, decoded as a reader does."""
    from onnxcomp.core import allocation, codebook
    rng = np.random.default_rng(11)
    w = (rng.standard_normal((32, 8, 3, 3)) * np.exp(rng.uniform(0, np.log(100), 32)).reshape(-1, 1, 1, 1)).astype(np.float32)
    allocator = allocation.Allocator(w, channel_axis=0)
    candidate = allocator.measure_scaled(40)
    scales = codebook.channel_scales(w, 0)
    u = codebook.normalise(w, scales, 0).ravel()
    fitted = np.sort(u)
    centroids = codebook.refine(fitted, codebook.uniform_start(fitted[0], fitted[-1], 40), iterations=1)
    decoded = centroids[codebook.assign(u, centroids)].reshape(w.shape) * scales.reshape(-1, 1, 1, 1)
    error = w.astype(np.float64) - decoded
    assert candidate.scaled and candidate.levels == 40
    assert candidate.relative_l2 == pytest.approx(np.linalg.norm(error) / np.linalg.norm(w), rel=1e-4)
    assert candidate.max_relative == pytest.approx(np.abs(error).max() / np.abs(w).max(), rel=1e-4)
    assert allocation.Allocator(w).measure_scaled(40) is None  # no channel axis: no scaled candidates


def test_allocation_picks_scaled_grids_only_where_channels_differ():
    """At a relative L2 limit of 0.02 (as the model budget sets one), a filter whose output channels span 100x
    gets a channel-scaled codebook (the unscaled grid loses small channels against k-means, and k-means costs more),
    and its record is smaller than without scaled candidates; a filter whose channels have equal RMS (where a
    scaled grid is the unscaled one plus its scale bytes) gets none at limits 0.01-0.04."""
    from onnxcomp.pipeline.compression import compress_model

    def allocate(w, limit, scaled=True):
        _, state = compress_model(grouped_conv(w, 16), allocation="proxy", allocation_limits={"w": limit},
                                  allocation_cache={}, allocation_scaled=scaled)
        return state.targets[0]
    wide = allocate(spread_filter(100.0), 0.02)
    assert wide.scales is not None and wide.scale_axis == 0 and struct.unpack_from("<H", wide.record, 4)[0] >= 3
    assert len(wide.record) < len(allocate(spread_filter(100.0), 0.02, scaled=False).record)
    for limit in (0.01, 0.02, 0.04):
        assert allocate(spread_filter(1.0), limit).scales is None


def test_scaled_output_runs_and_matches_the_reference(tmp_path):
    """A compressed model with a channel-scaled record runs in onnxruntime as the original graph with the numpy
    decoder's weights; the portable form (a standard Mul by the scales) computes the same weights; the same input
    gives the same bytes."""
    import onnx
    import onnxruntime as ort
    from conftest import reference_model, run_compressed
    from onnxcomp.pipeline.compression import _compress_once, compress_model
    model = grouped_conv(spread_filter(100.0), 16)
    onnx.save(model, tmp_path / "in.onnx")
    options = dict(allocation="proxy", allocation_limits={"w": 0.02}, allocation_cache={})
    outputs = {}
    for fmt in ("custom-op", "portable"):
        _compress_once(str(tmp_path / "in.onnx"), str(tmp_path / f"{fmt}.onnx"), None, format=fmt, **options)
        outputs[fmt] = tmp_path / f"{fmt}.onnx"
    assert any(n.op_type == "Mul" for n in onnx.load(outputs["portable"]).graph.node)
    sidecar_file = str(tmp_path / "custom-op.onnxcomp")
    x = np.random.default_rng(6).standard_normal((1, 128, 8, 8)).astype(np.float32)
    got = run_compressed(outputs["custom-op"], {"x": x})[0]
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    expected = ort.InferenceSession(reference_model(model, sidecar_file).SerializeToString(), plain).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()))
    portable = ort.InferenceSession(str(outputs["portable"]), plain).run(None, {"x": x})[0]
    np.testing.assert_array_equal(portable, expected)
    for fmt, path in outputs.items():  # inspect counts the scale bytes, decompress applies the scales
        inspected = {w.name: w for w in onnxcomp.inspect(path).weights}["w"]
        assert inspected.stored_bytes > 128 * 2
        onnxcomp.decompress(path, tmp_path / f"{fmt}-dense.onnx")
        dense = ort.InferenceSession(str(tmp_path / f"{fmt}-dense.onnx"), plain).run(None, {"x": x})[0]
        np.testing.assert_array_equal(dense, expected, err_msg=fmt)
    again, _ = compress_model(onnx.load_model_from_string(model.SerializeToString()), **options)
    first, _ = compress_model(onnx.load_model_from_string(model.SerializeToString()), **options)
    assert again.SerializeToString() == first.SerializeToString()
