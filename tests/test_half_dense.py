"""Dense weights the default leaves as float16 + Cast (onnxcomp/passes/half_dense.py): which tensors qualify, the
rewritten model runs in the stock onnxruntime with the same outputs to binary16 precision, and only the data-free
default does it."""

import json

import numpy as np
import onnx
from onnx import helper, numpy_helper

from conftest import float_input, make_model, run_compressed, run_plain, session_with_env
from onnxcomp.passes.half_dense import HALF_MIN_ELEMENTS, ROUNDING_DEPTH, halve_dense_weights, holds

import onnxcomp


def _model(rng):
    w = (rng.standard_normal((64, 32)) * 0.1).astype(np.float32)
    w[:, 5] *= 1e-6  # one output channel far below the others: its values are binary16 subnormals
    tiny = rng.standard_normal((64, 32)).astype(np.float32) * 0.1
    tiny[0, 0] = 1e-11  # one negligible value beside 0.1: within 2^-11 of its channels' largest
    shift = np.full(100, 1e-9, np.float32)  # an added constant (not a weight slot): each value must stay exact
    shift[:50] = rng.standard_normal(50)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("MatMul", ["x", "tiny"], ["t"]),
             helper.make_node("Add", ["h", "t"], ["s"]), helper.make_node("MatMul", ["s", "v"], ["u"]),
             helper.make_node("Add", ["u", "shift"], ["y"])]
    v = (rng.standard_normal((32, 100)) * 0.1).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (tiny, "tiny"), (v, "v"), (shift, "shift"))]
    return make_model(nodes, [float_input("x", ["n", 64])], [float_input("y", ["n", 100])], inits)


def test_only_tensors_binary16_holds_are_halved(rng):
    model = _model(rng)
    original = onnx.ModelProto()
    original.CopyFrom(model)
    halved = halve_dense_weights(model)
    assert sorted(name for name, _ in halved) == ["tiny", "v"]
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert types["tiny__float16"] == types["v__float16"] == onnx.TensorProto.FLOAT16
    assert types["w"] == types["shift"] == onnx.TensorProto.FLOAT
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert sorted(n.output[0] for n in casts) == ["tiny", "v"]
    onnx.checker.check_model(model, full_check=True)
    x = rng.standard_normal((16, 64)).astype(np.float32)
    expected, = run_plain(original, {"x": x})
    actual, = run_plain(model, {"x": x})
    assert np.linalg.norm(actual - expected) / np.linalg.norm(expected) < 2.0 ** -10  # two products, each within 2^-11


def test_rules_for_weights_and_other_tensors():
    w = np.ones((4, 8, 3, 3), np.float32)
    assert holds(w, weight=True) and holds(w, weight=False)
    w[1] *= 1e-6  # a whole output channel of binary16 subnormals
    assert not holds(w, weight=True)
    w = np.ones((4, 8), np.float32)
    w[:, 3] *= 1e-6  # a whole input channel (axis 1)
    assert not holds(w, weight=True)
    w = np.ones((4, 8), np.float32)
    w[0, 0] = 1e-11
    assert holds(w, weight=True) and not holds(w, weight=False)
    assert not holds(np.array([7e4] * 4, np.float32), weight=True)  # overflows binary16
    assert holds(np.zeros((4, 4), np.float32), weight=True)


def test_scales_that_reach_a_rounding_op_stay_float32(rng):
    """A requantisation scale (x / s, then Round or a Cast to int8) keeps its float32 values: any error changes
    which integer a value rounds to. A bias added after a MatMul whose result is then rounded is past a weight op
    and is halved; so is a scale whose path to the rounding op is longer than ROUNDING_DEPTH."""
    n = 96
    values = lambda: (rng.uniform(0.5, 2.0, n)).astype(np.float32)
    deep = [helper.make_node("Relu", [f"d{i}"], [f"d{i + 1}"]) for i in range(ROUNDING_DEPTH + 1)]
    nodes = [helper.make_node("Div", ["x", "scale"], ["q"]), helper.make_node("Round", ["q"], ["r"]),
             helper.make_node("Mul", ["x", "to_int"], ["m"]), helper.make_node("Relu", ["m"], ["m2"]),
             helper.make_node("Cast", ["m2"], ["i"], to=onnx.TensorProto.INT8),
             helper.make_node("Cast", ["i"], ["f"], to=onnx.TensorProto.FLOAT),
             helper.make_node("Add", ["x", "bias"], ["b"]), helper.make_node("MatMul", ["b", "w"], ["h"]),
             helper.make_node("Floor", ["h"], ["fl"]),
             helper.make_node("Mul", ["x", "far"], ["d0"]), *deep, helper.make_node("Round", [f"d{len(deep)}"], ["dr"]),
             helper.make_node("Sum", ["r", "f", "fl", "dr"], ["y"])]
    inits = [numpy_helper.from_array(a, k) for a, k in ((values(), "scale"), (values(), "to_int"), (values(), "bias"),
                                                        (values(), "far"),
                                                        (np.eye(n, dtype=np.float32), "w"))]
    model = make_model(nodes, [float_input("x", ["n", n])], [float_input("y", ["n", n])], inits)
    names = sorted(name for name, _ in halve_dense_weights(model))
    assert names == ["bias", "far", "w"]


def test_default_compress_halves_dense_weights_and_fixed_settings_do_not(tmp_path, rng):
    """`compress IN OUT` stores a weight below --min-elements as float16 (listed in the report) and the output
    matches the original to the compression's tolerance; with explicit bits every dense weight stays float32."""
    big = (rng.standard_normal((128, 96)) * 0.1).astype(np.float32)
    small = (rng.standard_normal((96, 8)) * 0.1).astype(np.float32)  # 768 values: below --min-elements 1024
    nodes = [helper.make_node("MatMul", ["x", "big"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "small"], ["y"])]
    model = make_model(nodes, [float_input("x", ["n", 128])], [float_input("y", ["n", 8])],
                       [numpy_helper.from_array(big, "big"), numpy_helper.from_array(small, "small")])
    onnx.save(model, tmp_path / "in.onnx")
    report = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx")
    assert report.float16 == [("small", small.size)] and small.size >= HALF_MIN_ELEMENTS
    assert json.loads(json.dumps(report.to_dict()))["float16"] == [["small", small.size]]
    stored = {report.names.get(t.name, t.name): t for t in onnx.load(tmp_path / "out.onnx").graph.initializer}
    assert stored["small__float16"].data_type == onnx.TensorProto.FLOAT16
    x = rng.standard_normal((64, 128)).astype(np.float32)
    expected, = run_plain(model, {"x": x})
    actual, = run_compressed(tmp_path / "out.onnx", {"x": x})
    assert np.linalg.norm(actual - expected) / np.linalg.norm(expected) < 0.15  # compression.BUDGET
    fixed = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "fixed.onnx", bits=5)
    assert fixed.float16 == []
    stored = {t.name: t for t in onnx.load(tmp_path / "fixed.onnx").graph.initializer}
    assert stored["small"].data_type == onnx.TensorProto.FLOAT


def test_a_dense_codebook_conv_weight_becomes_float16_in_place(rng):
    """A float32 weight read only as CodebookConv's W (PackWeightsPass.join_dense_convs) becomes float16 under its
    own name, without a Cast (CodebookConv widens it), by the weight-slot rule; one also read by a standard Conv
    keeps float32 (a custom op reads it); the session runs and matches the float32 model to binary16 precision."""
    w = (rng.standard_normal((16, 8, 3, 3)) * 0.1).astype(np.float32)
    w[3, 2, 0, 0] = 1e-11  # negligible beside its channels' largest: the weight-slot rule (not the per-value one)
    shared = (rng.standard_normal((16, 16, 1, 1)) * 0.1).astype(np.float32)
    nodes = [helper.make_node("CodebookConv", ["x", "w"], ["a"], domain=onnxcomp.DOMAIN, pads=[1, 1, 1, 1]),
             helper.make_node("CodebookConv", ["a", "shared"], ["b"], domain=onnxcomp.DOMAIN),
             helper.make_node("Conv", ["a", "shared"], ["c"]), helper.make_node("Add", ["b", "c"], ["y"])]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(shared, "shared")]
    graph = helper.make_graph(nodes, "g", [float_input("x", [2, 8, 6, 6])], [float_input("y", [2, 16, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(onnxcomp.DOMAIN, 1)],
                              ir_version=8)
    original = onnx.ModelProto()
    original.CopyFrom(model)
    assert [name for name, _ in halve_dense_weights(model)] == ["w"]
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert types == {"w": onnx.TensorProto.FLOAT16, "shared": onnx.TensorProto.FLOAT}
    assert not [n for n in model.graph.node if n.op_type == "Cast"]
    x = rng.standard_normal((2, 8, 6, 6)).astype(np.float32)
    expected = session_with_env(original).run(None, {"x": x})[0]
    actual = session_with_env(model).run(None, {"x": x})[0]
    assert np.linalg.norm(actual - expected) / np.linalg.norm(expected) < 2.0 ** -10


def test_budget_settings_halve_the_other_tensors_with_float16_others(tmp_path, rng):
    """With per-weight settings (a budget allocation) and ``float16_others``, a tensor no setting names (here a weight
    below --min-elements) is stored as float16 as the data-free default stores it, a weight its setting keeps dense
    without float16 stays float32, and the compressed one becomes a record; without the option the other tensor stays
    float32. The output matches the float32-others output to binary16 precision."""
    big = (rng.standard_normal((128, 96)) * 0.1).astype(np.float32)
    kept = (rng.standard_normal((96, 96)) * 0.1).astype(np.float32)
    small = (rng.standard_normal((96, 8)) * 0.1).astype(np.float32)  # 768 values: below --min-elements 1024
    nodes = [helper.make_node("MatMul", ["x", "big"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "kept"], ["k"]), helper.make_node("MatMul", ["k", "small"], ["y"])]
    model = make_model(nodes, [float_input("x", ["n", 128])], [float_input("y", ["n", 8])],
                       [numpy_helper.from_array(a, n) for a, n in ((big, "big"), (kept, "kept"), (small, "small"))])
    onnx.save(model, tmp_path / "in.onnx")
    settings = {"big": {"sparsity": 0.0, "bits": 6}, "kept": {"skip": True}}
    halved = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "half.onnx", settings=settings, float16_others=True,
                                keep_names=True)  # the float16 copy is found by its name below
    plain = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "plain.onnx", settings=settings, keep_names=True)
    assert halved.float16 == [("small", small.size)] and plain.float16 == []
    types = {t.name: t.data_type for t in onnx.load(tmp_path / "half.onnx").graph.initializer}
    assert types["small__float16"] == onnx.TensorProto.FLOAT16 and types["kept"] == onnx.TensorProto.FLOAT
    assert "big" not in types and "small" not in types
    assert {t.name: t.data_type for t in onnx.load(tmp_path / "plain.onnx").graph.initializer}["small"] == onnx.TensorProto.FLOAT
    assert halved.output_bytes <= plain.output_bytes - small.size * 2 + 96  # 2 bytes a value saved, a Cast node (long names) added
    x = rng.standard_normal((32, 128)).astype(np.float32)
    got, = run_compressed(tmp_path / "half.onnx", {"x": x})
    reference, = run_compressed(tmp_path / "plain.onnx", {"x": x})
    assert np.linalg.norm(got - reference) / np.linalg.norm(reference) < 2 ** -10
    again = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "again.onnx", settings={**settings, "small": {"skip": True}},
                              float16_others=True)
    assert again.float16 == []  # named by a setting that keeps it dense without float16: float32
