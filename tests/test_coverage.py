"""Every float weight, in graphs as exporters write them (issue 13): each small model below once failed.

Each model is built with onnx.helper and seeded random weights, compressed in both formats, and run in the
stock onnxruntime: every weight of at least --min-elements elements must be compressed, the output must match
the original within a tolerance tied to the bit width (no pruning: the only error is the codebook rounding),
and inspect, verify --per-layer and decompress must handle the output (the decompressed model computes what
the compressed one does, up to float32 summation order)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import onnxcomp
from onnxcomp.front.cli import app
from onnxcomp.pipeline.inspection import inspect

from conftest import float_input, make_model, run_compressed, run_plain, weight

BITS = 8
# Rounding every weight to a 2^BITS-entry k-means codebook moves it by a few % of its spread; the output's
# relative L2 error, through a few such layers, stays within a small multiple of that.
TOLERANCE = 2.0 ** (4 - BITS)
runner = CliRunner()


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-12))


def loads(model) -> bool:
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return True
    except Exception:  # onnxruntime's own error types
        return False


def typed(rng, name, shape, dtype, scale=0.3):
    values = (rng.standard_normal(shape) * scale).astype(np.float32)
    if dtype == TensorProto.FLOAT16:
        return numpy_helper.from_array(values.astype(np.float16), name)
    if dtype == TensorProto.BFLOAT16:
        words = (values.view(np.uint32) >> 16).astype(np.uint16)
        tensor = helper.make_tensor(name, TensorProto.BFLOAT16, shape, words.tobytes(), raw=True)
        return tensor
    return numpy_helper.from_array(values, name)


def roundtrip(tmp_path, model, feeds, expected_weights, fmt="custom-op", original=None, **options):
    """Compress ``model`` (sparsity 0, BITS bits), check coverage and outputs, then inspect / verify / decompress."""
    source = tmp_path / "in.onnx"
    onnx.save(model, source)
    out = tmp_path / f"out-{fmt}.onnx"
    report = onnxcomp.compress(source, out, sparsity=0.0, bits=BITS, format=fmt, **options)
    assert sorted(layer.name for layer in report.layers) == sorted(expected_weights), report.skipped
    assert report.skipped == []
    assert report.coverage > 0.9
    original = run_plain(model, feeds) if original is None else original
    compressed = run_compressed(out, feeds) if fmt == "custom-op" else run_plain(out, feeds)
    for a, b in zip(original, compressed):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert rel_l2(a, b) < TOLERANCE, rel_l2(a, b)
    listed = inspect(out)
    assert sorted(w.name for w in listed.weights if w.storage != "dense") == sorted(expected_weights)
    assert listed.format == fmt
    if loads(model):
        check = onnxcomp.verify(source, out, samples=4, per_layer=True)
        assert sorted(layer.name for layer in check.layers) == sorted(expected_weights)
    dense = tmp_path / f"dense-{fmt}.onnx"
    onnxcomp.decompress(out, dense)
    for a, b in zip(compressed, run_plain(dense, feeds)):
        assert rel_l2(a.astype(np.float32), b.astype(np.float32)) < 1e-3
    return report, out


@pytest.mark.parametrize("fmt", ["custom-op", "portable"])
@pytest.mark.parametrize("dtype", [TensorProto.FLOAT16, TensorProto.BFLOAT16])
def test_cast_half_weights_are_compressed(tmp_path, fmt, dtype):
    """Case 1: Cast(float16 W) -> Conv and Cast(float16 W) -> MatMul beside a float32 MatMul (bfloat16 too)."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Cast", ["wc"], ["wc32"], to=TensorProto.FLOAT),
             helper.make_node("Conv", ["x", "wc32"], ["c"], pads=[1, 1, 1, 1]),  # [1, 64, 6, 6]
             helper.make_node("Reshape", ["c", "flat"], ["f"]),  # [1, 2304]
             helper.make_node("Cast", ["wm"], ["wm32"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["f", "wm32"], ["h"]),
             helper.make_node("MatMul", ["h", "w3"], ["y"])]
    inits = [typed(rng, "wc", [64, 32, 3, 3], dtype, 0.1), typed(rng, "wm", [2304, 128], dtype, 0.05),
             weight(rng, "w3", (128, 64), 0.1), numpy_helper.from_array(np.array([1, 2304], np.int64), "flat")]
    model = make_model(nodes, [float_input("x", [1, 32, 6, 6])], [float_input("y", [1, 64])], inits)
    x = rng.standard_normal((1, 32, 6, 6)).astype(np.float32)
    report, _ = roundtrip(tmp_path, model, {"x": x}, ["wc", "wm", "w3"], fmt)
    kinds = {layer.name: layer.kind for layer in report.layers}
    assert kinds == {"wc": "conv", "wm": "fc", "w3": "fc"}
    sizes = {layer.name: layer.bytes_before for layer in report.layers}
    assert sizes["wm"] == 2 * 2304 * 128 and sizes["w3"] == 4 * 128 * 64


@pytest.mark.parametrize("fmt", ["custom-op", "portable"])
def test_weights_behind_shape_ops_are_compressed(tmp_path, fmt):
    """Case 2 and its kind: Transpose -> MatMul, Identity -> Gemm, Reshape -> Conv, Slice/Squeeze/Flatten chains."""
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Reshape", ["wr", "kshape"], ["wr4"]),
             helper.make_node("Conv", ["x", "wr4"], ["c"]),  # [1, 32, 4, 4] from [1, 16, 6, 6] (3x3, no pad)
             helper.make_node("Flatten", ["c"], ["f"]),  # [1, 512]
             helper.make_node("Transpose", ["wt"], ["wtt"], perm=[1, 0]),
             helper.make_node("MatMul", ["f", "wtt"], ["h"]),  # wt [128, 512] -> [1, 128]
             helper.make_node("Identity", ["wi"], ["wii"]),
             helper.make_node("Gemm", ["h", "wii"], ["g"]),  # wi [128, 96]
             helper.make_node("Slice", ["ws", "s0", "s1", "sa"], ["wss"]),  # ws [2, 96, 64] -> [1, 96, 64]
             helper.make_node("Squeeze", ["wss", "sa"], ["wsq"]),
             helper.make_node("MatMul", ["g", "wsq"], ["y"])]
    inits = [weight(rng, "wr", (32 * 16 * 9,), 0.1), numpy_helper.from_array(np.array([32, 16, 3, 3], np.int64), "kshape"),
             weight(rng, "wt", (128, 512), 0.05), weight(rng, "wi", (128, 96), 0.1), weight(rng, "ws", (2, 96, 64), 0.1),
             numpy_helper.from_array(np.array([1], np.int64), "s0"), numpy_helper.from_array(np.array([2], np.int64), "s1"),
             numpy_helper.from_array(np.array([0], np.int64), "sa")]
    model = make_model(nodes, [float_input("x", [1, 16, 6, 6])], [float_input("y", [1, 64])], inits)
    x = rng.standard_normal((1, 16, 6, 6)).astype(np.float32)
    report, out = roundtrip(tmp_path, model, {"x": x}, ["wr", "wt", "wi", "ws"], fmt)
    assert {layer.name: layer.kind for layer in report.layers} == {"wr": "conv", "wt": "fc", "wi": "fc", "ws": "fc"}
    if fmt == "custom-op":  # Transpose(W) -> MatMul fuses on the record stored transposed
        ops = [n.op_type for n in onnx.load(out, load_external_data=False).graph.node]
        assert ops.count("CodebookMatMul") >= 2 and "Transpose" not in ops


@pytest.mark.parametrize("fmt", ["custom-op", "portable"])
def test_recurrent_and_einsum_weights_are_compressed(tmp_path, fmt):
    """Case 3: LSTM W/R -> GRU W/R -> Einsum: all five compressed as fc weights."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("LSTM", ["x", "lw", "lr"], ["", "lh"], hidden_size=64),  # lh [1, 2, 64]
             helper.make_node("GRU", ["lh", "gw", "gr"], ["", "gh"], hidden_size=64),  # seq 1, batch 2
             helper.make_node("Einsum", ["gh", "ew"], ["y"], equation="sbd,dk->sbk")]
    inits = [weight(rng, "lw", (1, 256, 32), 0.1), weight(rng, "lr", (1, 256, 64), 0.1),  # a contracting recurrence
             weight(rng, "gw", (1, 192, 64), 0.1), weight(rng, "gr", (1, 192, 64), 0.1), weight(rng, "ew", (64, 96), 0.2)]
    model = make_model(nodes, [float_input("x", [5, 2, 32])], [float_input("y", [1, 2, 96])], inits)
    x = rng.standard_normal((5, 2, 32)).astype(np.float32)
    report, _ = roundtrip(tmp_path, model, {"x": x}, ["lw", "lr", "gw", "gr", "ew"], fmt)
    assert {layer.kind for layer in report.layers} == {"fc"}


def _if_model(rng):
    """Case 4: If branches reading outer-scope weights (shared with the main graph, read only by the branches),
    a branch-local weight, and a second If whose branches hold no weight and read a main-graph activation."""
    out = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, None)  # noqa: E731
    then = helper.make_graph([helper.make_node("MatMul", ["h", "w_shared"], ["t1"]),
                              helper.make_node("MatMul", ["t1", "w_sub"], ["t2"])], "then", [], [out("t2")])
    local = weight(rng, "w_local", (64, 64), 0.1)
    other = helper.make_graph([helper.make_node("MatMul", ["h", "w_local"], ["e1"]),
                               helper.make_node("MatMul", ["e1", "w_sub"], ["e2"])], "else", [], [out("e2")], [local])
    plain_then = helper.make_graph([helper.make_node("Relu", ["h"], ["p1"])], "then2", [], [out("p1")])
    plain_else = helper.make_graph([helper.make_node("Neg", ["h"], ["p2"])], "else2", [], [out("p2")])
    nodes = [helper.make_node("MatMul", ["x", "w_in"], ["h0"]),
             helper.make_node("MatMul", ["h0", "w_shared"], ["h"]),
             helper.make_node("If", ["c"], ["b"], then_branch=then, else_branch=other),
             helper.make_node("If", ["c"], ["p"], then_branch=plain_then, else_branch=plain_else),
             helper.make_node("Add", ["b", "p"], ["y"])]
    inits = [weight(rng, "w_in", (64, 64), 0.1), weight(rng, "w_shared", (64, 64), 0.1), weight(rng, "w_sub", (64, 64), 0.1)]
    return make_model(nodes, [float_input("x", [2, 64]), helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                      [float_input("y", [2, 64])], inits)


@pytest.mark.parametrize("fmt", ["custom-op", "portable"])
@pytest.mark.parametrize("branch", [True, False])
def test_if_branches_with_outer_scope_weights(tmp_path, fmt, branch):
    rng = np.random.default_rng(4)
    model = _if_model(rng)
    feeds = {"x": rng.standard_normal((2, 64)).astype(np.float32), "c": np.array(branch)}
    roundtrip(tmp_path, model, feeds, ["w_in", "w_shared", "w_sub", "w_local"], fmt)


@pytest.mark.parametrize("fmt", ["custom-op", "portable"])
def test_loop_and_scan_bodies(tmp_path, fmt):
    """Case 5: a Loop body MatMul(v, W_body) -> MatMul(., W_outer) -> Tanh and a Scan body Gemm(x, W_scan, transB=1)."""
    rng = np.random.default_rng(5)
    body = helper.make_graph(
        [helper.make_node("MatMul", ["v_in", "w_body"], ["m"]), helper.make_node("MatMul", ["m", "w_outer"], ["m2"]),
         helper.make_node("Tanh", ["m2"], ["v_out"]), helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "loop", [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 float_input("v_in", None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), float_input("v_out", None)],
        [weight(rng, "w_body", (64, 64), 0.1)])
    scan_body = helper.make_graph(
        [helper.make_node("Gemm", ["s_x", "w_scan"], ["s_y"], transB=1), helper.make_node("Identity", ["s_state"], ["s_state_out"])],
        "scan", [float_input("s_state", [1]), float_input("s_x", [1, 64])],
        [float_input("s_state_out", [1]), float_input("s_y", [1, 32])], [weight(rng, "w_scan", (32, 64), 0.1)])
    nodes = [helper.make_node("Loop", ["trip", "cond", "x"], ["v"], body=body),
             helper.make_node("Unsqueeze", ["v", "axis0"], ["seq"]),  # [1, 1, 64]: a one-step sequence
             helper.make_node("Scan", ["state", "seq"], ["state_out", "y"], body=scan_body, num_scan_inputs=1)]
    inits = [weight(rng, "w_outer", (64, 64), 0.1), numpy_helper.from_array(np.array(3, np.int64), "trip"),
             numpy_helper.from_array(np.array(True), "cond"), numpy_helper.from_array(np.zeros(1, np.float32), "state"),
             numpy_helper.from_array(np.array([0], np.int64), "axis0")]
    model = make_model(nodes, [float_input("x", [1, 64])], [float_input("state_out", [1]), float_input("y", [1, 1, 32])], inits)
    feeds = {"x": rng.standard_normal((1, 64)).astype(np.float32)}
    roundtrip(tmp_path, model, feeds, ["w_body", "w_outer", "w_scan"], fmt)


def _duplicate_names_model(rng):
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m"], name="dense"),
             helper.make_node("Add", ["m", "b1"], ["h"], name="dense"),
             helper.make_node("MatMul", ["h", "w2"], ["y"], name="out")]
    inits = [weight(rng, "w1", (64, 128), 0.1), numpy_helper.from_array(np.zeros(128, np.float32), "b1"),
             weight(rng, "w2", (128, 32), 0.1)]
    return make_model(nodes, [float_input("x", ["n", 64])], [float_input("y", ["n", 32])], inits)


@pytest.mark.parametrize("fmt", ["custom-op", "portable"])
def test_duplicate_node_names_give_a_loadable_output(tmp_path, fmt):
    """Case 6: two nodes share a name (onnx.checker passes, onnxruntime refuses): the output gets unique names."""
    rng = np.random.default_rng(6)
    model = _duplicate_names_model(rng)
    assert not loads(model)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    w1, w2 = (numpy_helper.to_array(model.graph.initializer[i]) for i in (0, 2))
    roundtrip(tmp_path, model, {"x": x}, ["w1", "w2"], fmt, original=[x @ w1 @ w2])
    names = [n.name for n in onnx.load(tmp_path / f"out-{fmt}.onnx", load_external_data=False).graph.node]
    assert len(names) == len(set(names))


def test_quiet_means_quiet(tmp_path):
    """Case 6, -q: nothing printed, dependencies' loggers (graphsurgeon) included."""
    model = _duplicate_names_model(np.random.default_rng(6))
    onnx.save(model, tmp_path / "in.onnx")
    result = runner.invoke(app, ["compress", str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), "-q"])
    assert result.exit_code == 0, result.output
    assert result.output == ""


@pytest.mark.parametrize("fmt", ["custom-op", "portable"])
@pytest.mark.parametrize("clash", ["E.onnxcomp_record", "E.decoded", "E.codebook", "E.indices", "E.decode", "E.original",
                                   "E.lookup", "E.unpack0", "E.indices_int32"])
def test_generated_names_never_collide(tmp_path, fmt, clash):
    """Case 7: a tied embedding (Gather, and Transpose -> MatMul) beside a tensor named like a generated one."""
    rng = np.random.default_rng(7)
    nodes = [helper.make_node("Gather", ["E", "ids"], ["emb"]),  # [n, 64]
             helper.make_node("Relu", ["emb"], [clash], name=clash),
             helper.make_node("Transpose", ["E"], ["Et"], perm=[1, 0]),
             helper.make_node("MatMul", [clash, "Et"], ["y"])]  # [n, 256]
    model = make_model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])], [float_input("y", ["n", 256])],
                       [weight(rng, "E", (256, 64), 0.3)])
    report, _ = roundtrip(tmp_path, model, {"ids": np.array([0, 5, 255, 7], np.int64)}, ["E"], fmt)
    assert report.layers[0].kind == "embedding"


def _static_batch(tmp_path, rng, samples=32):
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    model = make_model(nodes, [float_input("x", [1, 64])], [float_input("y", [1, 16])],
                       [weight(rng, "w1", (64, 64), 0.2), weight(rng, "w2", (64, 16), 0.2)])
    onnx.save(model, tmp_path / "in.onnx")
    x = rng.standard_normal((samples, 64)).astype(np.float32)
    labels = run_plain(model, {"x": x[:1]})[0].argmax(axis=1)
    np.savez(tmp_path / "calib.npz", x=x, labels=np.concatenate([labels] * samples))
    return tmp_path / "in.onnx", tmp_path / "calib.npz"


@pytest.mark.parametrize("args", [["--prune", "activation"], ["--calib-batch", "8"], ["--budget", "cosine=0.9"],
                                  ["--eval", "EVAL"], ["--calib-random"]])
def test_static_batch_is_fed_in_batches_it_accepts(tmp_path, args):
    """Case 8: x[1, 64] with 32 calibration samples: every place that feeds data feeds one sample at a time."""
    # A budget keeps a check set apart and refits on the rest: 32 samples cannot confirm a least-squares refit of
    # 64-input layers (it overfits), so the budget case gets more.
    source, calib = _static_batch(tmp_path, np.random.default_rng(8), 256 if "--budget" in args else 32)
    args = [str(calib) if a == "EVAL" else a for a in args]
    calib_args = ["--calib", "random"] if args == ["--calib-random"] else ["--calib", str(calib)]
    if args == ["--calib-random"]:
        args = []
    out = tmp_path / "out.onnx"
    result = runner.invoke(app, ["compress", str(source), str(out), *calib_args, *args, "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["coverage"] == 1.0
    result = runner.invoke(app, ["verify", str(source), str(out), "--calib", str(calib), "--per-layer"])
    assert result.exit_code == 0, result.output


def test_dense_tensors_are_named_with_reasons(tmp_path):
    """Nothing >= --min-elements is left dense silently: graph inputs and float64 tensors are listed with reasons."""
    rng = np.random.default_rng(9)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("MatMul", ["h", "v"], ["y"]),
             helper.make_node("Cast", ["d"], ["d32"], to=TensorProto.FLOAT), helper.make_node("Add", ["y", "d32"], ["z"])]
    inits = [weight(rng, "w", (64, 64)), weight(rng, "v", (64, 32)),
             numpy_helper.from_array(rng.standard_normal((1, 32)), "d")]
    model = make_model(nodes, [float_input("x", [1, 64]), float_input("v", [64, 32])], [float_input("z", [1, 32])], inits)
    onnx.save(model, tmp_path / "in.onnx")
    report = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx", min_elements=16)
    assert [layer.name for layer in report.layers] == ["w"]
    reasons = dict(report.skipped)
    assert "graph input" in reasons["v"] and "float64" in reasons["d"]
    assert report.coverage == pytest.approx(64 * 64 / (64 * 64 + 64 * 32 + 32))


def test_verbose_traces_each_decision(tmp_path):
    """--verbose says, per float tensor, what was decided and why: kind and readers, fused or decoded, or dense."""
    rng = np.random.default_rng(10)
    nodes = [helper.make_node("Transpose", ["wt"], ["wtt"], perm=[1, 0]), helper.make_node("MatMul", ["x", "wtt"], ["h"]),
             helper.make_node("Slice", ["ws", "s0", "s1", "sa"], ["wss"]), helper.make_node("MatMul", ["h", "wss"], ["y"])]
    inits = [weight(rng, "wt", (64, 64), 0.1), weight(rng, "ws", (128, 32), 0.1),
             numpy_helper.from_array(np.array([0], np.int64), "s0"), numpy_helper.from_array(np.array([64], np.int64), "s1"),
             numpy_helper.from_array(np.array([0], np.int64), "sa")]
    model = make_model(nodes, [float_input("x", [1, 64]), float_input("ws", [128, 32])], [float_input("y", [1, 32])], inits)
    onnx.save(model, tmp_path / "in.onnx")
    result = subprocess.run([sys.executable, "-m", "onnxcomp", "compress", str(tmp_path / "in.onnx"),
                             str(tmp_path / "out.onnx"), "--verbose"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    result.output = result.stdout + result.stderr
    assert "wt [64, 64] float32: compressed as fc (read by MatMul via Transpose)" in result.output
    assert "wt: record wt.onnxcomp_record (stored transposed); 1 of 1 readers fused" in result.output
    assert "left ws dense: it is also a graph input" in result.output
    assert "left dense: ws: it is also a graph input" in result.output  # the summary lists it too
    assert "coverage: 50.0% of 8,192 float parameters compressed" in result.output
