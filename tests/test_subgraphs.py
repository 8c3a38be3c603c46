"""Weights inside control-flow subgraphs (If branches, Loop and Scan bodies) are compressed too, in every
branch, and the compressed model computes what the numpy-decoded reference does."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxcomp
from onnxcomp.passes.model_io import graphs_of
from onnxcomp.pipeline.compression import decoded_weights

from conftest import float_input, make_model, run_compressed, run_plain, weight

RTOL, ATOL = 1e-4, 1e-4
OPTIONS = dict(sparsity=0.5, bits=4, min_elements=16)


def reference(model: onnx.ModelProto, sidecar_file: str) -> onnx.ModelProto:
    """``model`` with every compressed weight, in whichever graph it lives, replaced by its decoded values."""
    decoded = decoded_weights(sidecar_file)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    for graph in graphs_of(result.graph):
        for tensor in graph.initializer:
            if tensor.name in decoded:
                tensor.CopyFrom(numpy_helper.from_array(decoded[tensor.name], tensor.name))
        for node in graph.node:  # weights that were Constant nodes
            if node.op_type == "Constant" and node.output[0] in decoded:
                node.attribute[0].t.CopyFrom(numpy_helper.from_array(decoded[node.output[0]], node.output[0]))
    return result


def compress_and_compare(tmp_path, model, feeds_list, expected_records):
    source, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, source)
    report = onnxcomp.compress(source, out, **OPTIONS)
    assert sorted(layer.name for layer in report.layers) == sorted(expected_records)
    onnx.checker.check_model(str(out), full_check=True)
    written = onnx.load(str(out), load_external_data=False)
    records = [t for g in graphs_of(written.graph) for t in g.initializer  # (short names: the report traces them)
               if report.names.get(t.name, t.name).endswith(".onnxcomp_record")]
    assert len(records) == len(expected_records)
    assert all(t.data_location == TensorProto.EXTERNAL for t in records)  # every record lives in the sidecar
    want_model = reference(model, report.sidecar_path)
    for feeds in feeds_list:
        for got, want in zip(run_compressed(out, feeds), run_plain(want_model, feeds)):
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    return written


def branch(rng, name, weight_name):
    graph = helper.make_graph([helper.make_node("MatMul", ["x", weight_name], [name + "_y"])], name, [],
                              [float_input(name + "_y", ["n", 16])], [weight(rng, weight_name, (32, 16))])
    return graph


def test_if_compresses_the_weights_of_both_branches(tmp_path, rng):
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=branch(rng, "then", "w_then"),
                              else_branch=branch(rng, "else", "w_else"))]
    model = make_model(nodes, [float_input("x", ["n", 32]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                       [float_input("y", ["n", 16])], [])
    x = rng.standard_normal((3, 32)).astype(np.float32)
    written = compress_and_compare(tmp_path, model, [{"x": x, "cond": np.array(c)} for c in (True, False)], ["w_then", "w_else"])
    branches = {a.name: a.g for a in written.graph.node[0].attribute}
    assert [n.op_type for n in branches["then_branch"].node] == ["CodebookMatMul"]
    assert [n.op_type for n in branches["else_branch"].node] == ["CodebookMatMul"]


def test_outer_weight_used_inside_a_loop_body(tmp_path, rng):
    """A weight from the outer graph used in a Loop body, also decoded for a non-fused use in the body."""
    body = helper.make_graph(
        [helper.make_node("MatMul", ["state_in", "w"], ["mm"]), helper.make_node("Tanh", ["mm"], ["state_out"]),
         helper.make_node("ReduceMean", ["w"], ["mean"], keepdims=0), helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["state_out", "mean"], ["scan_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 float_input("state_in", ["n", 32])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), float_input("state_out", ["n", 32]),
         float_input("scan_out", ["n", 32])])
    nodes = [helper.make_node("Loop", ["trips", "", "x"], ["final", "steps"], body=body)]
    model = make_model(nodes, [float_input("x", ["n", 32]), helper.make_tensor_value_info("trips", TensorProto.INT64, [])],
                       [float_input("final", ["n", 32]), float_input("steps", [None, "n", 32])],
                       [weight(rng, "w", (32, 32), scale=0.3)])
    feeds = {"x": rng.standard_normal((2, 32)).astype(np.float32), "trips": np.array(3, np.int64)}
    written = compress_and_compare(tmp_path, model, [feeds], ["w"])
    body_ops = [n.op_type for n in written.graph.node[0].attribute[0].g.node]
    assert "CodebookMatMul" in body_ops and "CodebookDecode" in body_ops


def test_scan_body_weight(tmp_path, rng):
    body = helper.make_graph(
        [helper.make_node("MatMul", ["row", "w_scan"], ["proj"]), helper.make_node("Add", ["acc_in", "proj"], ["acc_out"])],
        "scan_body", [float_input("acc_in", [1, 16]), float_input("row", [1, 32])],
        [float_input("acc_out", [1, 16]), float_input("proj", [1, 16])], [weight(rng, "w_scan", (32, 16))])
    nodes = [helper.make_node("Scan", ["acc", "rows"], ["total", "projections"], body=body, num_scan_inputs=1)]
    model = make_model(nodes, [float_input("acc", [1, 16]), float_input("rows", [5, 1, 32])],
                       [float_input("total", [1, 16]), float_input("projections", [5, 1, 16])], [])
    feeds = {"acc": np.zeros((1, 16), np.float32), "rows": rng.standard_normal((5, 1, 32)).astype(np.float32)}
    compress_and_compare(tmp_path, model, [feeds], ["w_scan"])


def test_constant_node_weights_in_a_branch_with_calibration(tmp_path, rng):
    """Exporters put branch weights in Constant nodes; calibration observes main-graph layers only."""
    then = helper.make_graph(
        [helper.make_node("Constant", [], ["w_c"], value=weight(rng, "w_c", (32, 16))),
         helper.make_node("MatMul", ["h", "w_c"], ["then_y"])], "then", [], [float_input("then_y", ["n", 16])])
    nodes = [helper.make_node("MatMul", ["x", "w_main"], ["h"]), helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
             helper.make_node("Greater", ["total", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=branch(rng, "else", "w_else"))]
    model = make_model(nodes, [float_input("x", ["n", 32])], [float_input("y", ["n", 16])],
                       [weight(rng, "w_main", (32, 32)), numpy_helper.from_array(np.array(0, np.float32), "zero")])
    source, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, source)
    report = onnxcomp.compress(source, out, calib="random", prune="activation", **OPTIONS)
    assert sorted(layer.name for layer in report.layers) == ["w_c", "w_else", "w_main"]
    want_model = reference(model, report.sidecar_path)
    x = rng.standard_normal((3, 32)).astype(np.float32)
    for feeds in ({"x": np.abs(x)}, {"x": -np.abs(x)}):  # both branches
        np.testing.assert_allclose(run_compressed(out, feeds)[0], run_plain(want_model, feeds)[0], rtol=RTOL, atol=ATOL)
