"""One-hot products as row lookups (onnxcomp/passes/one_hot.py, CodebookGather's ``one_hot``, docs/ops.md).

A one-hot row times W is the row of W (+0.0 for -0.0) or a row of zeros: the rewritten model's outputs must equal
the dense model's (the original graph with the decoded weights) bit for bit, out-of-range indices included, and
equal CodebookMatMul's on the same one-hot rows under every instruction-set cap.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcomp
from conftest import make_model, reference_model, run_compressed, run_plain, session_with_env
from onnxcomp.core.sidecar import decode_record, encode_record
from test_kernels import ISAS, isa_available

OPTIONS = dict(sparsity=0.5, bits=4, min_elements=16)
K, N, L = 40, 24, 6


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def ops_of(path) -> list[tuple[str, str]]:
    return [(n.domain, n.op_type) for n in onnx.load(str(path), load_external_data=False).graph.node]


def gather_node(path) -> onnx.NodeProto:
    return next(n for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type == "CodebookGather")


def ids_input(index_type=TensorProto.INT32):
    return helper.make_tensor_value_info("ids", index_type, ["b", L])


def equal_chain(rng, index_type=TensorProto.INT32, with_bias=True, values=None):
    """magika's jax2tf form: Reshape(ids, [-1, L, 1]) -> Expand to Concat(Shape(ids)[:1], [L], [1]) -> Equal with
    a [1, 1, K] constant -> Cast(float) -> MatMul(W [K, N]) (-> Add bias)."""
    np_type = np.int32 if index_type == TensorProto.INT32 else np.int64
    values = np.arange(K, dtype=np_type).reshape(1, 1, K) if values is None else values
    inits = [numpy_helper.from_array(np.array([-1, L, 1], np.int64), "shape3"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"), numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([L], np.int32), "length"), numpy_helper.from_array(np.array([1], np.int32), "one32"),
             numpy_helper.from_array(values, "classes"),
             numpy_helper.from_array(rng.standard_normal((K, N)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((1, 1, N)).astype(np.float32), "bias")]
    nodes = [helper.make_node("Reshape", ["ids", "shape3"], ["column"]),
             helper.make_node("Shape", ["ids"], ["ids_shape"]),
             helper.make_node("Cast", ["ids_shape"], ["ids_shape32"], to=TensorProto.INT32),
             helper.make_node("Slice", ["ids_shape32", "zero", "one", "zero"], ["batch"]),
             helper.make_node("Concat", ["batch", "length", "one32"], ["target32"], axis=0),
             helper.make_node("Cast", ["target32"], ["target"], to=TensorProto.INT64),
             helper.make_node("Expand", ["column", "target"], ["wide"]),
             helper.make_node("Equal", ["wide", "classes"], ["hot"]),
             helper.make_node("Cast", ["hot"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", "w"], ["y" if not with_bias else "product"])]
    if with_bias:
        nodes.append(helper.make_node("Add", ["product", "bias"], ["y"]))
    return make_model(nodes, [ids_input(index_type)], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", L, N])], inits)


def compress(tmp_path, model, **options):
    source, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, source)
    report = onnxcomp.compress(source, out, **{**OPTIONS, **options})
    onnx.checker.check_model(str(out), full_check=True)
    return out, report


def feeds(rng, index_type=TensorProto.INT32):
    np_type = np.int32 if index_type == TensorProto.INT32 else np.int64
    ids = rng.integers(0, K, (3, L)).astype(np_type)
    ids[0, :4] = [-1, K, -K, K + 7]  # outside [0, K): rows of zeros (Equal matches no class)
    ids[1, :2] = [0, K - 1]
    return {"ids": ids}


def assert_same_bits(tmp_path, model, report, out, feed):
    got = run_compressed(out, feed)[0]
    want = run_plain(reference_model(model, report.sidecar_path), feed)[0]
    np.testing.assert_array_equal(bits(got), bits(want))
    return got


@pytest.mark.parametrize("index_type", [TensorProto.INT32, TensorProto.INT64])
@pytest.mark.parametrize("with_bias", [True, False])
def test_equal_chain_becomes_a_lookup_with_the_dense_models_bits(tmp_path, rng, index_type, with_bias):
    model = equal_chain(rng, index_type, with_bias)
    out, report = compress(tmp_path, model)
    ops = ops_of(out)
    assert ("ai.onnxcomp", "CodebookGather") in ops and ("ai.onnxcomp", "CodebookMatMul") not in ops
    assert ("", "Equal") not in ops and ("", "MatMul") not in ops
    assert helper.get_attribute_value(gather_node(out).attribute[0]) == 1
    feed = feeds(rng, index_type)
    got = assert_same_bits(tmp_path, model, report, out, feed)
    if not with_bias:  # an index outside [0, K) gives +0.0 rows
        assert not bits(got[0, :4]).any()


def one_hot_op_model(rng):
    inits = [numpy_helper.from_array(np.array(K, np.int64), "depth"),
             numpy_helper.from_array(np.array([0.0, 1.0], np.float32), "values"),
             numpy_helper.from_array(rng.standard_normal((K, N)).astype(np.float32), "w")]
    nodes = [helper.make_node("OneHot", ["ids", "depth", "values"], ["x"], axis=-1),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    return make_model(nodes, [ids_input(TensorProto.INT64)], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", L, N])], inits)


def test_one_hot_op_becomes_a_lookup_with_the_dense_models_bits(tmp_path, rng):
    model = one_hot_op_model(rng)
    out, report = compress(tmp_path, model)
    assert ops_of(out) == [("ai.onnxcomp", "CodebookGather")]
    assert helper.get_attribute_value(gather_node(out).attribute[0]) == 2
    feed = feeds(rng, TensorProto.INT64)  # OneHot: -1 and -K count from the end; K and K + 7 give zeros
    got = assert_same_bits(tmp_path, model, report, out, feed)
    assert bits(got[0, 0]).any() and not bits(got[0, 1]).any()


def test_unsqueeze_and_gemm_forms(tmp_path, rng):
    """Equal(Unsqueeze(ids, -1), arange(K)) with the class list first, into a Gemm with transB=1 and a bias."""
    inits = [numpy_helper.from_array(np.arange(K, dtype=np.int64), "classes"),
             numpy_helper.from_array(np.array([-1], np.int64), "axes"),
             numpy_helper.from_array(rng.standard_normal((N, K)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(N).astype(np.float32), "c")]
    nodes = [helper.make_node("Unsqueeze", ["ids", "axes"], ["column"]),
             helper.make_node("Equal", ["classes", "column"], ["hot"]),
             helper.make_node("Cast", ["hot"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("Gemm", ["x", "w", "c"], ["y"], transB=1)]
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["b"])
    model = make_model(nodes, [ids], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", N])], inits)
    out, report = compress(tmp_path, model)
    assert ("ai.onnxcomp", "CodebookGather") in ops_of(out) and ("", "Unsqueeze") not in ops_of(out)
    feed = {"ids": np.array([3, -1, K, 0, K - 1], np.int64)}
    assert_same_bits(tmp_path, model, report, out, feed)


@pytest.mark.parametrize("case", ["permuted classes", "last dim unproven"])
def test_what_is_not_provably_a_one_hot_stays_a_product(tmp_path, rng, case):
    if case == "last dim unproven":  # Expand to a shape whose last entry is the batch size: [b, L, b] in general
        model = equal_chain(rng)
        concat = next(n for n in model.graph.node if n.op_type == "Concat")
        concat.input[2] = "batch"
    else:
        model = equal_chain(rng, values=np.arange(K, dtype=np.int32)[::-1].reshape(1, 1, K).copy())
    out, report = compress(tmp_path, model)
    assert ("ai.onnxcomp", "CodebookMatMul") in ops_of(out) and ("", "Equal") in ops_of(out)
    feed = feeds(rng)
    if case == "last dim unproven":
        feed = {"ids": feed["ids"][:1]}  # batch 1: the Expand gives [1, L, 1] and the model runs
    got = run_compressed(out, feed)[0]
    want = run_plain(reference_model(model, report.sidecar_path), feed)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def lookup_and_product(record: bytes, mode: int, ids: np.ndarray, isa: str):
    """CodebookGather(record, ids) with ``one_hot`` = mode, and CodebookMatMul(one_hot(ids), record), in sessions
    created under the instruction-set cap ``isa``."""
    dims = decode_record(record).dims
    rows = dims[0]
    inits = [numpy_helper.from_array(np.frombuffer(record, np.uint8), "r")]
    gather = helper.make_node("CodebookGather", ["r", "ids"], ["g"], domain=onnxcomp.runtime.DOMAIN, one_hot=mode)
    product = helper.make_node("CodebookMatMul", ["x", "r"], ["p"], domain=onnxcomp.runtime.DOMAIN)
    graph = helper.make_graph([gather, product], "one_hot", [helper.make_tensor_value_info("ids", TensorProto.INT64, list(ids.shape)),
                                                             helper.make_tensor_value_info("x", TensorProto.FLOAT, [*ids.shape, rows])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "gp"], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(onnxcomp.runtime.DOMAIN, 1)])
    model.ir_version = 8
    hit = (ids[..., None] == np.arange(rows)) if mode == 1 else \
        ((np.where(ids < 0, ids + rows, ids)[..., None] == np.arange(rows)) & (ids[..., None] >= -rows))
    x = hit.astype(np.float32)
    return session_with_env(model, {"ONNXCOMP_ISA": isa}).run(None, {"ids": ids, "x": x})


@pytest.mark.parametrize("mode", [1, 2])
@pytest.mark.parametrize("outliers", [False, True])
def test_kernel_equals_the_rows_and_the_fused_product(rng, mode, outliers):
    """The lookup against numpy (the decoded row + 0.0, zeros outside) and, without outliers, against CodebookMatMul
    on the same one-hot rows, bit for bit, under every instruction-set cap; -0.0 in the codebook reads +0.0."""
    rows, cols = 37, 21
    codebook = rng.standard_normal(16).astype(np.float32)
    codebook[0], codebook[1] = -0.0, 0.0
    indices = rng.integers(0, 16, (rows, cols))
    indices[3, :] = 0  # a row of -0.0
    positions = values = None
    if outliers:
        positions = np.sort(rng.choice(rows * cols, 30, replace=False)).astype(np.int64)
        values = (rng.standard_normal(30) * 40).astype(np.float32)
        values[0] = -0.0
    record = encode_record(codebook, indices, (rows, cols), 4, positions, values)
    table = decode_record(record).to_dense().reshape(rows, cols)
    ids = np.array([[0, 3, rows - 1, -1, rows, -rows, -rows - 1, 5]], np.int64)
    wrapped = np.where(ids < 0, ids + rows, ids) if mode == 2 else ids
    inside = (wrapped >= 0) & (wrapped < rows)
    want = np.where(inside[..., None], table[np.clip(wrapped, 0, rows - 1)] + np.float32(0.0), np.float32(0.0))
    for isa in ISAS:
        if not isa_available(isa):
            continue
        lookup, product = lookup_and_product(record, mode, ids, isa)
        np.testing.assert_array_equal(bits(lookup), bits(want))
        if not outliers:
            np.testing.assert_array_equal(bits(lookup), bits(product))
    assert not bits(want[0, 1]).any()  # the -0.0 row read +0.0


def test_gather_without_one_hot_still_rejects_outside_indices(rng):
    record = encode_record(rng.standard_normal(4).astype(np.float32), rng.integers(0, 4, (5, 3)), (5, 3), 2)
    with pytest.raises(Exception, match=r"index 5 at position 0 outside \[-5, 5\)"):
        lookup_and_product(record, 0, np.array([5], np.int64), "scalar")


@pytest.mark.parametrize("form", ["Equal", "OneHot"])
def test_decompress_restores_a_one_hot_product(tmp_path, rng, form):
    model = equal_chain(rng) if form == "Equal" else one_hot_op_model(rng)
    out, report = compress(tmp_path, model)
    dense = tmp_path / "dense.onnx"
    onnxcomp.decompress(out, dense)
    onnx.checker.check_model(str(dense), full_check=True)
    assert not any(n.domain for n in onnx.load(str(dense)).graph.node)
    assert any(n.op_type == form for n in onnx.load(str(dense)).graph.node)
    feed = feeds(rng, TensorProto.INT32 if form == "Equal" else TensorProto.INT64)
    np.testing.assert_array_equal(bits(run_plain(str(dense), feed)[0]), bits(run_compressed(out, feed)[0]))
