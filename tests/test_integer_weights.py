"""Integer records (value types 2 uint8 and 3 int8): exact round trips through every reader, rejection of records
claiming an integer type they do not hold, and already-quantized models (onnxruntime's quantize_dynamic) compressed
to bit-identical outputs."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcomp
from onnxcomp.core import sidecar
from onnxcomp.errors import CorruptSidecarError
from onnxcomp.passes.integer_weights import integer_record
from onnxcomp.pipeline.compression import compress
from onnxcomp.pipeline.decompression import decompress_model
from onnxcomp.pipeline.inspection import inspect
from onnxcomp.passes import model_io

from conftest import float_input, make_model

TYPES = [(np.uint8, sidecar.UINT8, "CodebookDecodeUInt8"), (np.int8, sidecar.INT8, "CodebookDecodeInt8")]


def _tensors(dtype) -> list[np.ndarray]:
    """Random tensors of ``dtype``: full range, a narrow bell (few distinct values), mostly zeros (sparse coding),
    a constant (K = 1), a rank-0 and an empty one."""
    rng = np.random.default_rng(7)
    info = np.iinfo(dtype)
    bell = np.clip(np.rint(rng.standard_normal((64, 40)) * 6), info.min, info.max).astype(dtype)
    sparse = np.where(rng.random((50, 30)) < 0.9, 0, rng.integers(info.min, info.max + 1, (50, 30))).astype(dtype)
    return [rng.integers(info.min, info.max + 1, (17, 3, 3, 5)).astype(dtype), bell, sparse,
            np.full((9, 4), info.max, dtype), np.array(info.min, dtype), np.zeros((0, 3), dtype)]


def _decode_model(record: bytes, op: str, elem: int) -> onnx.ModelProto:
    node = helper.make_node(op, ["record"], ["y"], domain=onnxcomp.DOMAIN)
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", elem, None)],
                              [numpy_helper.from_array(np.frombuffer(record, np.uint8), "record")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(onnxcomp.DOMAIN, 1)])


@pytest.mark.parametrize("dtype,value_type,op", TYPES)
def test_round_trip_through_every_reader(dtype, value_type, op):
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    for values in _tensors(dtype):
        record, codebook, bits = integer_record(values, value_type)
        assert record[6] == value_type
        for reader in (sidecar.decode_record, sidecar.decode_record_fast):
            decoded = reader(record)
            assert decoded.value_type == value_type
            dense = decoded.to_dense()
            assert dense.dtype == dtype and dense.shape == values.shape and np.array_equal(dense, values)
        if values.size == 0:
            continue  # onnxruntime hands an empty output without running the kernel's copy
        session = onnxcomp.InferenceSession(_decode_model(record, op, elem).SerializeToString())
        out = session.run(None, {})[0]
        assert out.dtype == dtype and np.array_equal(out, values)
        # not a constant (a graph input): decoded in the run
        node = helper.make_node(op, ["record"], ["y"], domain=onnxcomp.DOMAIN)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("record", TensorProto.UINT8, [None])],
                                  [helper.make_tensor_value_info("y", elem, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(onnxcomp.DOMAIN, 1)])
        out = onnxcomp.InferenceSession(model.SerializeToString()).run(None, {"record": np.frombuffer(record, np.uint8)})[0]
        assert np.array_equal(out, values)


def test_sparse_coding_is_used_for_mostly_zero_integers():
    values = _tensors(np.int8)[2]
    record, _, _ = integer_record(values, sidecar.INT8)
    assert record[9] == sidecar.CODING_SPARSE
    assert np.array_equal(sidecar.decode_record(record).to_dense(), values)


def _patched(record: bytes, offset: int, payload: bytes) -> bytes:
    data = bytearray(record[:-4])
    data[offset:offset + len(payload)] = payload
    return bytes(data) + struct.pack("<I", zlib.crc32(data))


def _bad_records() -> dict[str, bytes]:
    """Records that claim an integer type they do not hold (the CRC is right, so only the value checks catch them)."""
    base = sidecar.encode_record(np.array([1.0, 2.0, 3.0], np.float32), np.array([0, 1, 2, 1]), (4,), 2)
    codebook = 24 + 8  # fixed header + one dim
    scaled = sidecar.encode_record(np.array([1.0, 2.0], np.float32), np.array([0, 1, 1, 0]), (2, 2), 1,
                                   scales=np.array([1.0, 2.0], np.float32), scale_axis=0)
    return {
        "int8 above 127": _patched(_patched(base, 6, bytes([sidecar.INT8])), codebook, struct.pack("<f", 128.0)),
        "int8 below -128": _patched(_patched(base, 6, bytes([sidecar.INT8])), codebook, struct.pack("<f", -129.0)),
        "uint8 negative": _patched(_patched(base, 6, bytes([sidecar.UINT8])), codebook, struct.pack("<f", -1.0)),
        "uint8 above 255": _patched(_patched(base, 6, bytes([sidecar.UINT8])), codebook, struct.pack("<f", 256.0)),
        "not an integer": _patched(_patched(base, 6, bytes([sidecar.INT8])), codebook, struct.pack("<f", 0.5)),
        "infinite": _patched(_patched(base, 6, bytes([sidecar.UINT8])), codebook, struct.pack("<f", float("inf"))),
        "scaled integer record": _patched(scaled, 6, bytes([sidecar.INT8])),
        "value type 4": _patched(base, 6, bytes([4])),
    }


@pytest.mark.parametrize("case", sorted(_bad_records()))
def test_integer_records_with_foreign_values_are_rejected(case):
    record = _bad_records()[case]
    for reader in (sidecar.decode_record, sidecar.decode_record_fast):
        with pytest.raises(CorruptSidecarError):
            reader(record)
    value_type = record[6]
    op, elem = (("CodebookDecodeInt8", TensorProto.INT8) if value_type == sidecar.INT8 else
                ("CodebookDecodeUInt8", TensorProto.UINT8))
    with pytest.raises(Exception, match="corrupt weight record"):
        onnxcomp.InferenceSession(_decode_model(record, op, elem).SerializeToString())


def test_ops_refuse_records_of_another_value_type():
    record, _, _ = integer_record(np.arange(12, dtype=np.uint8).reshape(3, 4), sidecar.UINT8)
    with pytest.raises(Exception, match="value type 2, this op reads value type 1"):
        onnxcomp.InferenceSession(_decode_model(record, "CodebookDecode", TensorProto.FLOAT).SerializeToString())
    with pytest.raises(Exception, match="value type 2, this op reads value type 3"):
        onnxcomp.InferenceSession(_decode_model(record, "CodebookDecodeInt8", TensorProto.INT8).SerializeToString())
    floats = sidecar.encode_record(np.array([0.5, 1.5], np.float32), np.array([0, 1, 1]), (3,), 1)
    with pytest.raises(Exception, match="value type 1, this op reads value type 2"):
        onnxcomp.InferenceSession(_decode_model(floats, "CodebookDecodeUInt8", TensorProto.UINT8).SerializeToString())


def test_encoder_refuses_values_outside_the_type():
    with pytest.raises(ValueError, match="integers in"):
        sidecar.encode_record(np.array([0.0, 128.0], np.float32), np.array([0, 1]), (2,), 1, value_type=sidecar.INT8)
    with pytest.raises(ValueError, match="no outliers"):
        sidecar.encode_record(np.array([0.0, 1.0], np.float32), np.array([0, 1]), (2,), 1, value_type=sidecar.UINT8,
                              outlier_positions=np.array([0]), outlier_values=np.array([3.0], np.float32))


# ---- already-quantized models --------------------------------------------------------------------------------

def _float_model(rng) -> onnx.ModelProto:
    """Conv (the bulk of the weights) -> Relu -> Flatten -> MatMul -> LSTM over a sequence of 8 steps."""
    conv_w = (rng.laplace(size=(64, 32, 3, 3)) * 0.05).astype(np.float32)  # peaked, as trained weights
    fc_w = (rng.laplace(size=(128, 64)) * 0.1).astype(np.float32)
    hidden = 32
    lstm_w = (rng.laplace(size=(1, 4 * hidden, 64)) * 0.1).astype(np.float32)
    lstm_r = (rng.laplace(size=(1, 4 * hidden, hidden)) * 0.1).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["seq"]),  # [1, 64, 4, 4] -> [8, 1, 128]
        helper.make_node("MatMul", ["seq", "fc_w"], ["f"]),
        helper.make_node("LSTM", ["f", "lstm_w", "lstm_r"], ["y", "y_h"], hidden_size=hidden),
    ]
    inits = [numpy_helper.from_array(conv_w, "conv_w"), numpy_helper.from_array(fc_w, "fc_w"),
             numpy_helper.from_array(np.array([8, 1, 128], np.int64), "shape"),
             numpy_helper.from_array(lstm_w, "lstm_w"), numpy_helper.from_array(lstm_r, "lstm_r")]
    return make_model(nodes, [float_input("x", [1, 32, 4, 4])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 1, 1, 32])], inits, opset=17)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    from onnxruntime.quantization import QuantType, quantize_dynamic
    folder = tmp_path_factory.mktemp("int8")
    rng = np.random.default_rng(3)
    onnx.save(_float_model(rng), folder / "float.onnx")
    quantize_dynamic(str(folder / "float.onnx"), str(folder / "int8.onnx"), weight_type=QuantType.QUInt8)
    model = onnx.load(folder / "int8.onnx")
    ops = {n.op_type for n in model.graph.node}
    assert {"ConvInteger", "MatMulInteger", "DynamicQuantizeLSTM"} <= ops, ops
    feeds = [{"x": rng.standard_normal((1, 32, 4, 4)).astype(np.float32)} for _ in range(4)]
    return folder, feeds


def _outputs(path, feeds, custom: bool):
    session = (onnxcomp.InferenceSession(str(path)) if custom else
               ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))
    return [session.run(None, feed) for feed in feeds]


@pytest.mark.parametrize("policy,ops", [("conv", {"ConvInteger"}), ("all", {"ConvInteger", "MatMulInteger", "DynamicQuantizeLSTM"})])
def test_quantize_dynamic_model_runs_bit_identical(quantized, tmp_path, policy, ops):
    folder, feeds = quantized
    source = folder / "int8.onnx"
    before = source.read_bytes()
    out = tmp_path / "small.onnx"
    report = compress(str(source), str(out), integer_weights=policy)
    assert source.read_bytes() == before  # the input is never modified
    assert report.fallback is None and report.output_bytes < report.input_bytes
    layers = {layer.name for layer in report.layers}
    assert all(layer.kind == "integer" for layer in report.layers)
    model = onnx.load(str(out), load_external_data=False)
    original = onnx.load(str(source))
    readers = {name: n.op_type for n in original.graph.node for name in n.input}
    assert {readers[name] for name in layers} == ops
    assert {n.op_type for n in model.graph.node if n.domain == onnxcomp.DOMAIN} <= {"CodebookDecodeUInt8", "CodebookDecodeInt8"}
    expected, actual = _outputs(source, feeds, False), _outputs(out, feeds, True)
    for e, a in zip(expected, actual):
        for x, y in zip(e, a):
            assert x.dtype == y.dtype and np.array_equal(x, y)  # lossless: the same bits
    # decompress restores each integer initializer exactly
    restored = decompress_model(model_io.load_model(str(out), external_data=False), str(out))
    initial = {t.name: numpy_helper.to_array(t) for t in original.graph.initializer}
    back = {t.name: numpy_helper.to_array(t) for t in restored.graph.initializer}
    for name in layers:
        assert back[name].dtype == initial[name].dtype and np.array_equal(back[name], initial[name])
    assert not any(n.domain == onnxcomp.DOMAIN for n in restored.graph.node)
    onnx.save(restored, tmp_path / "restored.onnx")
    for e, a in zip(expected, _outputs(tmp_path / "restored.onnx", feeds, False)):
        for x, y in zip(e, a):
            assert np.array_equal(x, y)
    # inspect lists them with one byte per value uncompressed
    info = {w.name: w for w in inspect(str(out)).weights}
    for name in layers:
        assert info[name].storage == "record" and info[name].dense_bytes == initial[name].size


def test_quantized_compress_is_deterministic(quantized, tmp_path):
    folder, _ = quantized
    outputs = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        compress(str(folder / "int8.onnx"), str(tmp_path / run / "m.onnx"), integer_weights="all")
        outputs.append(((tmp_path / run / "m.onnx").read_bytes(), (tmp_path / run / "m.onnxcomp").read_bytes()))
    assert outputs[0] == outputs[1]


def test_default_leaves_weights_whose_ops_slow_down(quantized, tmp_path):
    folder, feeds = quantized
    report = compress(str(folder / "int8.onnx"), str(tmp_path / "m.onnx"))
    assert not report.layers and report.sidecar_path is None  # nothing to compress: the input as it is
    assert any("--integer-weights conv or all" in reason for _, reason in report.skipped)
    # byte for byte (no names shortened, no value_info dropped), and the report says so and why
    assert (tmp_path / "m.onnx").read_bytes() == (folder / "int8.onnx").read_bytes()
    assert report.fallback.startswith("nothing to compress: none of the") and "copy of the input" in report.fallback
    assert report.names == {} and report.output_bytes == report.input_bytes and report.fidelity["min_cosine"] > 1 - 1e-9
    for e, a in zip(_outputs(folder / "int8.onnx", feeds, False), _outputs(tmp_path / "m.onnx", feeds, False)):
        for x, y in zip(e, a):
            assert np.array_equal(x, y)


def test_gather_ops_copy_rows_and_check_indices():
    rng = np.random.default_rng(5)
    for dtype, value_type, _ in TYPES:
        info = np.iinfo(dtype)
        table = rng.integers(info.min, info.max + 1, (50, 3, 4)).astype(dtype)
        record, _, _ = integer_record(table, value_type)
        op = "CodebookGatherInt8" if dtype == np.int8 else "CodebookGatherUInt8"
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        for index_type in (TensorProto.INT64, TensorProto.INT32):
            node = helper.make_node(op, ["record", "ids"], ["y"], domain=onnxcomp.DOMAIN)
            graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("ids", index_type, None)],
                                      [helper.make_tensor_value_info("y", elem, None)],
                                      [numpy_helper.from_array(np.frombuffer(record, np.uint8), "record")])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(onnxcomp.DOMAIN, 1)])
            session = onnxcomp.InferenceSession(model.SerializeToString())
            ids = np.array([[0, 49, -1], [7, -50, 7]], helper.tensor_dtype_to_np_dtype(index_type))
            out = session.run(None, {"ids": ids})[0]
            assert out.dtype == dtype and np.array_equal(out, table[ids])
            with pytest.raises(Exception, match="index 50 at position 1 outside"):
                session.run(None, {"ids": np.array([3, 50], ids.dtype)})


def test_quantized_embedding_is_coded_by_default(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic
    rng = np.random.default_rng(11)
    table = (rng.laplace(size=(600, 48)) * 0.05).astype(np.float32)
    fc = (rng.laplace(size=(48, 16)) * 0.1).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]), helper.make_node("MatMul", ["e", "fc"], ["y"])]
    model = make_model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 5])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 16])],
                       [numpy_helper.from_array(table, "table"), numpy_helper.from_array(fc, "fc")])
    onnx.save(model, tmp_path / "float.onnx")
    quantize_dynamic(str(tmp_path / "float.onnx"), str(tmp_path / "int8.onnx"), op_types_to_quantize=["Gather", "MatMul"],
                     weight_type=QuantType.QUInt8)
    assert "Gather" in {n.op_type for n in onnx.load(tmp_path / "int8.onnx").graph.node}
    report = compress(str(tmp_path / "int8.onnx"), str(tmp_path / "small.onnx"))
    assert [layer.kind for layer in report.layers] == ["integer"] and report.fallback is None
    ops = {n.op_type for n in onnx.load(tmp_path / "small.onnx", load_external_data=False).graph.node}
    assert "CodebookGatherUInt8" in ops and "Gather" not in ops and "MatMulInteger" in ops
    feeds = [{"ids": rng.integers(-600, 600, (2, 5)).astype(np.int64)} for _ in range(3)]
    for e, a in zip(_outputs(tmp_path / "int8.onnx", feeds, False), _outputs(tmp_path / "small.onnx", feeds, True)):
        assert np.array_equal(e[0], a[0])
    restored = decompress_model(model_io.load_model(str(tmp_path / "small.onnx"), external_data=False),
                                str(tmp_path / "small.onnx"))
    onnx.save(restored, tmp_path / "restored.onnx")
    for e, a in zip(_outputs(tmp_path / "int8.onnx", feeds, False), _outputs(tmp_path / "restored.onnx", feeds, False)):
        assert np.array_equal(e[0], a[0])
