"""End to end: compress tiny models, run them in onnxruntime with the library, compare with references."""

import hashlib
import shutil

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import onnxcomp
from onnxcomp.core import sidecar
from onnxcomp.pipeline.compression import compress_model

from conftest import float_input, make_model, reference_model, run_compressed, run_plain, weight

# The decoded weights are exact; the kernels differ from onnxruntime's only in fp32 summation order.
RTOL, ATOL = 1e-4, 1e-4
OPTIONS = dict(sparsity=0.5, bits=4, min_elements=16)


def ops_of(path):
    return [(n.domain, n.op_type) for n in onnx.load(str(path), load_external_data=False).graph.node]


def compress_and_check(tmp_path, model, feeds, options=OPTIONS):
    """Compress, then check: valid model, outputs equal the numpy-decoded reference, records bit-exact."""
    source = tmp_path / "in.onnx"
    onnx.save(model, source)
    out = tmp_path / "out.onnx"
    report = onnxcomp.compress(source, out, **options)
    assert report.modified
    onnx.checker.check_model(str(out), full_check=True)
    reference = reference_model(model, report.sidecar_path)
    got = run_compressed(out, feeds)
    want = run_plain(reference, feeds)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)
    # The same options give the same codebooks, and the records decode to exactly those values.
    _, state = compress_model(onnx.load(source), **options)
    data = open(report.sidecar_path, "rb").read()
    for target, entry in zip(state.targets, sidecar.read_directory(report.sidecar_path)):
        assert entry.name == target.name
        assert data[entry.offset:entry.offset + entry.length] == target.record
        decoded = sidecar.decode_record(target.record).to_dense()
        decoded = decoded.T if entry.transposed else decoded
        assert np.array_equal(decoded.view(np.uint32), target.decoded().view(np.uint32))
    return out, report, got


def test_matmul_weight_on_the_right_is_fused(tmp_path, rng):
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [float_input("x", ["n", 3, 48])],
                       [float_input("y", ["n", 3, 20])], [weight(rng, "w", (48, 20))])
    feeds = {"x": rng.standard_normal((2, 3, 48)).astype(np.float32)}
    out, _, _ = compress_and_check(tmp_path, model, feeds)
    assert ops_of(out) == [("ai.onnxcomp", "CodebookMatMul")]


def test_matmul_weight_on_the_left_is_decoded(tmp_path, rng):
    model = make_model([helper.make_node("MatMul", ["w", "x"], ["y"])], [float_input("x", [40, 5])],
                       [float_input("y", [30, 5])], [weight(rng, "w", (30, 40))])
    out, _, _ = compress_and_check(tmp_path, model, {"x": rng.standard_normal((40, 5)).astype(np.float32)})
    assert ops_of(out) == [("ai.onnxcomp", "CodebookDecode"), ("", "MatMul")]


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_with_bias_fuses_into_one_node(tmp_path, rng, trans_b):
    shape = (20, 32) if trans_b else (32, 20)
    model = make_model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=trans_b)], [float_input("x", ["n", 32])],
                       [float_input("y", ["n", 20])], [weight(rng, "w", shape), weight(rng, "b", (20,))])
    out, report, _ = compress_and_check(tmp_path, model, {"x": rng.standard_normal((5, 32)).astype(np.float32)})
    assert ops_of(out) == [("ai.onnxcomp", "CodebookMatMul")]
    assert sidecar.read_directory(report.sidecar_path)[0].transposed == bool(trans_b)


def test_gemm_alpha_beta_and_broadcast_bias(tmp_path, rng):
    model = make_model([helper.make_node("Gemm", ["x", "w", "c"], ["y"], alpha=0.5, beta=2.0)], [float_input("x", ["n", 32])],
                       [float_input("y", ["n", 20])], [weight(rng, "w", (32, 20)), weight(rng, "c", (1, 20))])
    out, _, _ = compress_and_check(tmp_path, model, {"x": rng.standard_normal((5, 32)).astype(np.float32)})
    assert ("ai.onnxcomp", "CodebookMatMul") in ops_of(out) and ("", "Mul") in ops_of(out)


def test_gemm_with_runtime_bias_and_beta(tmp_path, rng):
    model = make_model([helper.make_node("Gemm", ["x", "w", "c"], ["y"], beta=3.0, transB=1)],
                       [float_input("x", [4, 32]), float_input("c", [4, 20])], [float_input("y", [4, 20])], [weight(rng, "w", (20, 32))])
    feeds = {"x": rng.standard_normal((4, 32)).astype(np.float32), "c": rng.standard_normal((4, 20)).astype(np.float32)}
    out, _, _ = compress_and_check(tmp_path, model, feeds)
    assert ("", "Add") in ops_of(out)


def test_conv_and_conv_transpose(tmp_path, rng):
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("ConvTranspose", ["h", "wt"], ["y"], strides=[2, 2])]
    model = make_model(nodes, [float_input("x", [1, 3, 8, 8])], [float_input("y", [1, 4, 17, 17])],
                       [weight(rng, "w", (6, 3, 3, 3)), weight(rng, "b", (6,)), weight(rng, "wt", (6, 4, 3, 3), 0.5)],)
    options = dict(OPTIONS, min_elements=20)
    out, report, _ = compress_and_check(tmp_path, model, {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}, options)
    assert [layer.name for layer in report.layers] == ["w", "wt"]
    assert ops_of(out).count(("ai.onnxcomp", "CodebookConv")) == 1  # Conv: fused (decoded once, docs/ops.md)
    assert ops_of(out).count(("ai.onnxcomp", "CodebookDecode")) == 1  # ConvTranspose: decoded each run


def test_weight_in_a_constant_node(tmp_path, rng):
    w = numpy_helper.from_array(rng.standard_normal((24, 10)).astype(np.float32))
    nodes = [helper.make_node("Constant", [], ["w"], value=w), helper.make_node("MatMul", ["x", "w"], ["y"])]
    model = make_model(nodes, [float_input("x", [2, 24])], [float_input("y", [2, 10])], [])
    out, _, _ = compress_and_check(tmp_path, model, {"x": rng.standard_normal((2, 24)).astype(np.float32)})
    assert ops_of(out) == [("ai.onnxcomp", "CodebookMatMul")]


def test_weight_shared_by_two_nodes_is_stored_once(tmp_path, rng):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("Gemm", ["x", "w"], ["b"], transB=0),
             helper.make_node("Gemm", ["x2", "w"], ["c"], transA=1)]
    model = make_model(nodes, [float_input("x", [3, 16]), float_input("x2", [16, 3])],
                       [float_input(n, [3, 16]) for n in "abc"], [weight(rng, "w", (16, 16))])
    feeds = {"x": rng.standard_normal((3, 16)).astype(np.float32), "x2": rng.standard_normal((16, 3)).astype(np.float32)}
    out, report, _ = compress_and_check(tmp_path, model, feeds)
    assert len(report.layers) == 1 and len(sidecar.read_directory(report.sidecar_path)) == 1
    assert ops_of(out).count(("ai.onnxcomp", "CodebookMatMul")) == 2
    assert ops_of(out).count(("ai.onnxcomp", "CodebookDecode")) == 1  # the transA Gemm


def test_mixed_orientations_keep_one_record(tmp_path, rng):
    nodes = [helper.make_node("Gemm", ["x", "w"], ["a"], transB=1), helper.make_node("MatMul", ["x", "w"], ["b"])]
    model = make_model(nodes, [float_input("x", [3, 16])], [float_input(n, [3, 16]) for n in "ab"], [weight(rng, "w", (16, 16))])
    out, _, _ = compress_and_check(tmp_path, model, {"x": rng.standard_normal((3, 16)).astype(np.float32)})
    assert ("", "Transpose") not in ops_of(out)  # stored as is: MatMul fused, Gemm(transB) decoded


@pytest.mark.parametrize("index_type", [onnx.TensorProto.INT64, onnx.TensorProto.INT32])
def test_gather_embedding(tmp_path, rng, index_type):
    indices = helper.make_tensor_value_info("ids", index_type, ["n", 5])
    model = make_model([helper.make_node("Gather", ["table", "ids"], ["y"])], [indices], [float_input("y", ["n", 5, 12])],
                       [weight(rng, "table", (50, 12))])
    ids = np.array([[0, 49, -1, 7, 7], [3, -50, 2, 1, 0]], dtype=np.int64 if index_type == onnx.TensorProto.INT64 else np.int32)
    out, _, _ = compress_and_check(tmp_path, model, {"ids": ids})
    assert ops_of(out) == [("ai.onnxcomp", "CodebookGather")]


def test_nothing_qualifies(tmp_path, rng):
    """Only float tensors below --min-elements (here 8 < 16): the output is a copy."""
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"])], [float_input("x", [4, 2])], [float_input("y", [4, 2])],
                       [weight(rng, "w", (4, 2))])
    onnx.save(model, tmp_path / "in.onnx")
    report = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx", **OPTIONS)
    assert not report.modified and report.sidecar_path is None
    assert not (tmp_path / "out.onnxcomp").exists()
    feeds = {"x": rng.standard_normal((4, 2)).astype(np.float32)}
    np.testing.assert_array_equal(run_plain(tmp_path / "out.onnx", feeds)[0], run_plain(model, feeds)[0])


def mlp(rng):
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)]
    return make_model(nodes, [float_input("x", ["n", 64])], [float_input("y", ["n", 10])],
                      [weight(rng, "w1", (48, 64), 0.2), weight(rng, "b1", (48,)), weight(rng, "w2", (10, 48), 0.2), weight(rng, "b2", (10,))])


def test_close_to_the_original_at_8_bits(tmp_path, rng):
    model = mlp(rng)
    feeds = {"x": rng.standard_normal((16, 64)).astype(np.float32)}
    out, _, got = compress_and_check(tmp_path, model, feeds, dict(sparsity=0.0, bits=8, min_elements=16))
    want = run_plain(model, feeds)[0]
    assert np.abs(got[0] - want).max() < 0.02 * np.abs(want).max()  # 256 centroids: error well under 1 % of range


def test_output_is_deterministic_and_a_second_run_is_refused(tmp_path, rng):
    model = mlp(rng)
    onnx.save(model, tmp_path / "in.onnx")
    onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "a.onnx", **OPTIONS)
    onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "b.onnx", **OPTIONS)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(tmp_path / "a.onnxcomp") == digest(tmp_path / "b.onnxcomp")
    a = onnx.load(tmp_path / "a.onnx", load_external_data=False)
    b = onnx.load(tmp_path / "b.onnx", load_external_data=False)
    for t in b.graph.initializer:  # only the sidecar's file name differs
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "a.onnxcomp"
    assert a.SerializeToString() == b.SerializeToString()
    with pytest.raises(onnxcomp.UnsupportedModelError, match="already compressed by onnxcomp"):
        onnxcomp.compress(tmp_path / "a.onnx", tmp_path / "c.onnx", **OPTIONS)
    assert not (tmp_path / "c.onnx").exists() and not (tmp_path / "c.onnxcomp").exists()


def test_moving_model_and_sidecar_together_keeps_them_working(tmp_path, rng):
    model = mlp(rng)
    onnx.save(model, tmp_path / "in.onnx")
    onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx", **OPTIONS)
    feeds = {"x": rng.standard_normal((3, 64)).astype(np.float32)}
    before = run_compressed(tmp_path / "out.onnx", feeds)[0]
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.move(tmp_path / "out.onnx", moved / "out.onnx")
    shutil.move(tmp_path / "out.onnxcomp", moved / "out.onnxcomp")
    np.testing.assert_array_equal(run_compressed(moved / "out.onnx", feeds)[0], before)


def test_input_is_never_modified(tmp_path, rng):
    onnx.save(mlp(rng), tmp_path / "in.onnx")
    before = (tmp_path / "in.onnx").read_bytes()
    onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx", **OPTIONS)
    assert (tmp_path / "in.onnx").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "out.onnx", "out.onnxcomp"]


def test_value_info_onnxruntime_infers_is_left_out(tmp_path, rng):
    """value_info of standard ops whose shapes inference reproduces is dropped from the output; a custom op's
    outputs and a shape inference cannot reproduce (a Reshape to a computed shape) are kept, with their private
    symbolic dims renamed consistently and the graph inputs' and outputs' names untouched; outputs are the same
    as those of the output with every entry kept, and two runs write the same bytes."""
    from onnxcomp.passes.value_info import drop_inferable_value_info
    long = "floor(floor(height/2 - 1/2)/2) + 1"
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Sigmoid", ["c"], ["s"]),
             helper.make_node("Mul", ["c", "s"], ["m"]), helper.make_node("Shape", ["m"], ["shape"]),
             helper.make_node("Reshape", ["m", "shape"], ["r"]), helper.make_node("Relu", ["r"], ["y"])]
    infos = [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["batch", 16, long, "width"])
             for name in ("c", "s", "m", "r")]
    model = make_model(nodes, [float_input("x", ["batch", 8, "height", "width"])],
                       [float_input("y", ["batch", 16, "height", "width"])], [weight(rng, "w", (16, 8, 3, 3))])
    model.graph.value_info.extend(infos)
    onnx.save(model, tmp_path / "in.onnx")
    onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx", bits=6, sparsity=0.0, keep_names=True)
    out = onnx.load(tmp_path / "out.onnx", load_external_data=False)
    kept = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in out.graph.value_info}
    assert set(kept) == {"c", "r"}  # c: the CodebookConv's output; r: a Reshape to a computed shape
    assert kept["c"] == kept["r"] == ["batch", 16, "_s0", "width"]
    assert [d.dim_param or d.dim_value for d in out.graph.input[0].type.tensor_type.shape.dim] == ["batch", 8, "height", "width"]
    full = onnx.load(tmp_path / "out.onnx", load_external_data=False)
    del full.graph.value_info[:]
    full.graph.value_info.extend(v for v in infos if v.name != "x")
    onnx.save(full, tmp_path / "full.onnx")
    x = rng.standard_normal((2, 8, 12, 10)).astype(np.float32)
    np.testing.assert_array_equal(run_compressed(tmp_path / "out.onnx", {"x": x})[0],
                                  run_compressed(tmp_path / "full.onnx", {"x": x})[0])
    onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "again.onnx", bits=6, sparsity=0.0, keep_names=True)
    again = onnx.load(tmp_path / "again.onnx", load_external_data=False)
    assert again.graph.value_info == out.graph.value_info
    assert drop_inferable_value_info(again) == 0  # nothing left to drop


def test_custom_op_outputs_get_the_originals_shapes(tmp_path, rng):
    """The output of a packed node is declared with the type and shape shape inference gives the dense model's
    tensor of that name, so onnxruntime's optimiser sees past the custom op (here: the two Slices of the
    CodebookConv's output become one Split, as in the dense model); the tensor between two CodebookConv nodes that
    stays in the NCHWc layout gets no declaration; outputs equal those of the output without the declarations."""
    import onnxruntime as ort
    from onnxcomp.runtime import session_options

    def const(name, values):
        return numpy_helper.from_array(np.array(values, dtype=np.int64), name)

    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Slice", ["c2", "s0", "s8", "axis"], ["a"]),
             helper.make_node("Slice", ["c2", "s8", "s16", "axis"], ["b"]),
             helper.make_node("Relu", ["a"], ["ya"]), helper.make_node("Sigmoid", ["b"], ["yb"])]
    inits = [weight(rng, "w1", (16, 8, 3, 3)), weight(rng, "w2", (16, 16, 3, 3)),
             const("s0", [0]), const("s8", [8]), const("s16", [16]), const("axis", [1])]
    model = make_model(nodes, [float_input("x", ["batch", 8, 12, 10])],
                       [float_input("ya", ["batch", 8, 12, 10]), float_input("yb", ["batch", 8, 12, 10])], inits)
    onnx.save(model, tmp_path / "in.onnx")
    onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx", bits=6, sparsity=0.0, keep_names=True)
    out = onnx.load(tmp_path / "out.onnx", load_external_data=False)
    assert [(n.op_type, [a.i for a in n.attribute if a.name == "nchwc_output"]) for n in out.graph.node][:2] == \
        [("CodebookConv", [1]), ("CodebookConv", [])]  # r1 stays blocked
    declared = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in out.graph.value_info}
    assert declared == {"c2": ["batch", 16, 12, 10]}

    def optimized_ops(path):
        options = session_options()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return sorted(n.op_type for n in onnx.load(tmp_path / "optimized.onnx", load_external_data=False).graph.node)

    assert optimized_ops(tmp_path / "out.onnx").count("Split") == 1
    bare = onnx.load(tmp_path / "out.onnx", load_external_data=False)
    del bare.graph.value_info[:]
    onnx.save(bare, tmp_path / "bare.onnx")
    assert optimized_ops(tmp_path / "bare.onnx").count("Slice") == 2  # what the declaration changes
    x = rng.standard_normal((2, 8, 12, 10)).astype(np.float32)
    for got, want in zip(run_compressed(tmp_path / "out.onnx", {"x": x}), run_compressed(tmp_path / "bare.onnx", {"x": x})):
        np.testing.assert_array_equal(got, want)


def test_only_shapes_a_node_uses_are_declared():
    """_shapes_used: a custom op's output is worth declaring when a node that uses shapes (here Shape, and an Add
    of a bias vector) is reachable from it through elementwise ops with scalar constants; not when only such ops,
    a pool and onnxcomp's ops read it."""
    from onnxcomp.passes.value_info import _shapes_used
    custom = lambda x, y: helper.make_node("CodebookConv", [x, "r"], [y], domain=onnxcomp.DOMAIN)  # noqa: E731
    nodes = [custom("x", "a"), helper.make_node("Relu", ["a"], ["a1"]), helper.make_node("GlobalAveragePool", ["a1"], ["a2"]),
             custom("a2", "b"), helper.make_node("Add", ["b", "bias"], ["b1"]),
             custom("b1", "c"), helper.make_node("Mul", ["c", "two"], ["c1"]), helper.make_node("Clip", ["c1"], ["c2"]),
             helper.make_node("Shape", ["c2"], ["s"])]
    inits = [numpy_helper.from_array(np.ones(4, np.float32), "bias"), numpy_helper.from_array(np.float32(2), "two")]
    graph = helper.make_graph(nodes, "g", [float_input("x", None)], [helper.make_tensor_value_info("s", onnx.TensorProto.INT64, None)], inits)
    assert _shapes_used(helper.make_model(graph)) == {"b", "c"}
