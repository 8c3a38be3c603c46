"""The bad-input matrix (issue #5): every case ends in a one-line error naming the problem and what to do, a
non-zero exit, the input untouched and nothing left behind; or, where compressing is still possible, in a
valid, runnable output and a line saying what was left dense and why.

The CLI runs in-process (typer's runner) to keep the matrix fast; one case runs it in a subprocess to check
what a user really sees.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import onnxcomp
from onnxcomp.front.cli import app
from onnxcomp.errors import InvalidOptionError, OutputError

from conftest import float_input, make_model, reference_model, run_compressed, run_plain, weight

RTOL, ATOL = 1e-4, 1e-4


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden temporaries included) with its hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def expect_failure(folder: Path, args, *words, exit_code=1):
    """Run ``onnxcomp`` with ``args``; it must fail with a one-line message holding ``words``, changing no file."""
    before = snapshot(folder)
    result = cli(*args)
    assert result.exit_code == exit_code, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # no escaped exception, so no traceback
    message = result.stderr.strip()
    assert "Traceback" not in message
    if exit_code == 1:
        assert len(message.splitlines()) == 1 and message.startswith("error: "), message
    for word in words:
        assert word in message, message
    assert snapshot(folder) == before, "the input changed or output was left behind"
    return message


def expect_skip(tmp_path: Path, model: onnx.ModelProto, feeds, *words, options=("--min-elements", "16"), compressed=None):
    """Compress with the CLI; it must succeed, say what it left dense and why, and the output must still run."""
    source = tmp_path / "in.onnx"
    onnx.save(model, source)
    before = snapshot(tmp_path)
    out = tmp_path / "out.onnx"
    result = cli("compress", source, out, *options)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    for word in words:
        assert word in result.stdout, result.stdout
    assert {k: v for k, v in snapshot(tmp_path).items() if k in before} == before
    onnx.checker.check_model(str(out), full_check=True)
    got = run_compressed(out, feeds)
    sidecar_file = tmp_path / "out.onnxcomp"
    reference = reference_model(model, str(sidecar_file)) if sidecar_file.exists() else model
    for g, w in zip(got, run_plain(reference, feeds)):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)
    if compressed is not None:
        assert sidecar_file.exists() == compressed
    return result.stdout


@pytest.fixture
def matmul_model(rng):
    return make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [float_input("x", ["n", 64])],
                      [float_input("y", ["n", 32])], [weight(rng, "w", (64, 32))])


@pytest.fixture
def model_file(tmp_path, matmul_model):
    path = tmp_path / "model.onnx"
    onnx.save(matmul_model, path)
    return path


def x_feed(rng, shape=(3, 64)):
    return {"x": rng.standard_normal(shape).astype(np.float32)}


# --- unreadable input ---------------------------------------------------------------------------------------

def test_01_not_an_onnx_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a model at all \x00\xff" * 10)
    expect_failure(tmp_path, ["compress", bad, tmp_path / "out.onnx"], "not a valid ONNX model", "re-export")


def test_02_empty_file(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    expect_failure(tmp_path, ["compress", empty, tmp_path / "out.onnx"], "empty.onnx")


def test_03_truncated_protobuf(tmp_path, model_file):
    data = model_file.read_bytes()
    model_file.write_bytes(data[:len(data) // 2])
    expect_failure(tmp_path, ["compress", model_file, tmp_path / "out.onnx"], "model.onnx")


def test_04_corrupt_protobuf(tmp_path, model_file):
    data = bytearray(model_file.read_bytes())
    data[10:40] = bytes(range(200, 230))
    model_file.write_bytes(bytes(data))
    expect_failure(tmp_path, ["compress", model_file, tmp_path / "out.onnx"], "model.onnx")


def test_05_input_missing(tmp_path):
    expect_failure(tmp_path, ["compress", tmp_path / "nope.onnx", tmp_path / "out.onnx"], "no such file")


def test_06_input_is_a_folder(tmp_path):
    (tmp_path / "folder.onnx").mkdir()
    expect_failure(tmp_path, ["compress", tmp_path / "folder.onnx", tmp_path / "out.onnx"], "folder.onnx")


def save_external(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="model.data", size_threshold=0)
    return path.parent / "model.data"


def test_07_missing_external_data_file(tmp_path, matmul_model):
    data = save_external(matmul_model, tmp_path / "model.onnx")
    data.unlink()
    expect_failure(tmp_path, ["compress", tmp_path / "model.onnx", tmp_path / "out.onnx"], "external data", "model.data")


def test_08_short_external_data_file(tmp_path, matmul_model):
    data = save_external(matmul_model, tmp_path / "model.onnx")
    data.write_bytes(data.read_bytes()[:100])
    expect_failure(tmp_path, ["compress", tmp_path / "model.onnx", tmp_path / "out.onnx"], "external data", "model.data")


def test_09_external_data_outside_the_model_folder(tmp_path, matmul_model):
    inner = tmp_path / "inner"
    inner.mkdir()
    save_external(matmul_model, tmp_path / "model.onnx")
    model = onnx.load(tmp_path / "model.onnx", load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../model.data"
    onnx.save(model, inner / "model.onnx")
    expect_failure(tmp_path, ["compress", inner / "model.onnx", tmp_path / "out.onnx"], "external data", "..")


def test_10_very_old_opset(tmp_path, rng):
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "old", [float_input("x", [2, 64])],
                              [float_input("y", [2, 32])], [weight(rng, "w", (64, 32))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)])
    model.ir_version = 3
    onnx.save(model, tmp_path / "old.onnx")
    expect_failure(tmp_path, ["compress", tmp_path / "old.onnx", tmp_path / "out.onnx"], "opset 6", "version_converter")


def test_11_opset_newer_than_supported(tmp_path, matmul_model):
    matmul_model.opset_import[0].version = 99
    onnx.save(matmul_model, tmp_path / "new.onnx")
    expect_failure(tmp_path, ["compress", tmp_path / "new.onnx", tmp_path / "out.onnx"], "opset 99")


def test_12_graph_that_does_not_validate(tmp_path, rng):
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "missing"], ["y"])], "broken", [float_input("x", [2, 64])],
                              [float_input("y", [2, 32])], [weight(rng, "w", (64, 32))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "broken.onnx")
    expect_failure(tmp_path, ["compress", tmp_path / "broken.onnx", tmp_path / "out.onnx"], "broken.onnx")


# --- where the output goes ----------------------------------------------------------------------------------

def test_13_output_equal_to_input(tmp_path, model_file):
    expect_failure(tmp_path, ["compress", model_file, model_file], "is the input")


def test_14_sidecar_would_overwrite_the_input(tmp_path, matmul_model):
    source = tmp_path / "model.onnxcomp"
    onnx.save(matmul_model, source)
    expect_failure(tmp_path, ["compress", source, tmp_path / "model.onnx"], "sidecar", "overwrite the input")


def test_15_output_folder_missing(tmp_path, model_file):
    expect_failure(tmp_path, ["compress", model_file, tmp_path / "no" / "out.onnx"], "does not exist", "create it")


def test_16_output_folder_not_writable(tmp_path, model_file, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    os.chmod(folder, 0o500)
    if os.access(folder, os.W_OK):  # root writes anyway: make the folder look read-only to the check
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == folder else real_access(p, mode, **kw))
    try:
        expect_failure(tmp_path, ["compress", model_file, folder / "out.onnx"], "not writable")
    finally:
        os.chmod(folder, 0o700)


def test_17_output_is_a_folder(tmp_path, model_file):
    (tmp_path / "out.onnx").mkdir()
    expect_failure(tmp_path, ["compress", model_file, tmp_path / "out.onnx"], "out.onnx", "folder")


@pytest.mark.parametrize("stage", ["sidecar", "model"])
def test_18_out_of_disk_space(tmp_path, model_file, monkeypatch, stage):
    """A full disk in the middle of either file: the error says so and no temporary file remains."""
    from onnxcomp.passes import model_io
    from onnxcomp.core import sidecar

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if stage == "sidecar":
        monkeypatch.setattr(sidecar.SidecarWriter, "add", full)
    else:
        monkeypatch.setattr(model_io, "_write_model", full)
    expect_failure(tmp_path, ["compress", model_file, tmp_path / "out.onnx", "--min-elements", "16"],
                   "No space left on device", "free some space")


def test_19_existing_output_survives_a_failed_write(tmp_path, model_file, monkeypatch):
    from onnxcomp.passes import model_io
    (tmp_path / "out.onnx").write_bytes(b"previous output")
    (tmp_path / "out.onnxcomp").write_bytes(b"previous sidecar")
    monkeypatch.setattr(model_io, "_write_model", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    expect_failure(tmp_path, ["compress", model_file, tmp_path / "out.onnx", "--min-elements", "16"], "I/O error")


def test_19b_previous_pair_still_runs_when_the_last_rename_fails(tmp_path, model_file, monkeypatch, rng):
    """The sidecar is renamed into place before the model: if the model's rename then fails, the previous model
    and its own sidecar are both back and still run together."""
    from onnxcomp.passes import model_io
    out = tmp_path / "out.onnx"
    assert cli("compress", model_file, out, "--min-elements", "16", "--bits", "4").exit_code == 0
    feeds = x_feed(rng)
    before = run_compressed(out, feeds)[0]
    real_replace = os.replace

    def failing_replace(src, dst):
        if os.fspath(dst) == str(out):
            raise OSError(errno.EIO, "I/O error")
        return real_replace(src, dst)

    monkeypatch.setattr(model_io.os, "replace", failing_replace)
    result = cli("compress", model_file, out, "--min-elements", "16", "--bits", "2")
    assert result.exit_code != 0 and "I/O error" in result.stdout + result.stderr
    monkeypatch.setattr(model_io.os, "replace", real_replace)
    np.testing.assert_array_equal(run_compressed(out, feeds)[0], before)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == ["out.onnx", "out.onnxcomp"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".onnxcomp-")]


# --- weights that are left dense, with the reason said ------------------------------------------------------

@pytest.mark.parametrize("dtype", [TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16])
def test_20_half_weights_are_compressed_float64_left_dense(tmp_path, rng, dtype):
    values = rng.standard_normal((64, 32)).astype(np.float32)
    table = helper.make_tensor("table", dtype, values.shape, values.ravel().tolist()) if dtype == TensorProto.BFLOAT16 \
        else numpy_helper.from_array(values.astype(helper.tensor_dtype_to_np_dtype(dtype)), "table")
    # An embedding lookup: onnxruntime's CPU Gather takes every type, so the graph runs in the weight's precision.
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"]), helper.make_node("Cast", ["rows"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", "v"], ["y"])]
    model = make_model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])], [float_input("y", ["n", 8])],
                       [table, weight(rng, "v", (32, 8))])
    if dtype == TensorProto.DOUBLE:
        out = expect_skip(tmp_path, model, {"ids": np.array([0, 5, 63], np.int64)}, "left dense: table", "float64", compressed=True)
    else:  # float16 and bfloat16 tables are compressed, decoded and cast back to their type
        out = expect_skip(tmp_path, model, {"ids": np.array([0, 5, 63], np.int64)}, "\ntable ", compressed=True)
        assert "left dense" not in out
    assert "\nv " in out  # the float32 weight next to it is compressed


def quantized_model(rng):
    """A graph already quantized three ways: QLinearMatMul, MatMulInteger/ConvInteger-style, DequantizeLinear."""
    w8 = numpy_helper.from_array(rng.integers(-100, 100, (64, 32)).astype(np.int8), "w_q")
    d8 = numpy_helper.from_array(rng.integers(-100, 100, (32, 16)).astype(np.int8), "d_q")
    scalars = [numpy_helper.from_array(np.array(v, dtype=t), n) for n, v, t in [
        ("x_scale", 0.05, np.float32), ("x_zero", 0, np.uint8), ("w_scale", 0.01, np.float32), ("w_zero", 0, np.int8),
        ("y_scale", 0.2, np.float32), ("y_zero", 0, np.uint8), ("d_scale", 0.02, np.float32)]]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"]),
        helper.make_node("QLinearMatMul", ["xq", "x_scale", "x_zero", "w_q", "w_scale", "w_zero", "y_scale", "y_zero"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zero"], ["y"]),
        helper.make_node("DequantizeLinear", ["d_q", "d_scale"], ["d"]),
        helper.make_node("MatMul", ["y", "d"], ["z"]),
    ]
    return make_model(nodes, [float_input("x", ["n", 64])], [float_input("z", ["n", 16])], [w8, d8, *scalars])


def test_21_already_quantized_graph_is_left_alone(tmp_path, rng):
    out = expect_skip(tmp_path, quantized_model(rng), x_feed(rng), "left dense: w_q", "already quantized", "left dense: d_q",
                      compressed=False)
    assert "nothing to compress in " in out and ": none of the 2 weights it considered qualifies" in out
    assert "the output is a copy of the input" in out and "fallback:" not in out


def test_22_integer_convolution_weights_are_left_alone(tmp_path, rng):
    w8 = numpy_helper.from_array(rng.integers(0, 50, (4, 3, 3, 3)).astype(np.uint8), "k_q")
    nodes = [helper.make_node("Cast", ["x"], ["x8"], to=TensorProto.UINT8), helper.make_node("ConvInteger", ["x8", "k_q"], ["y32"]),
             helper.make_node("Cast", ["y32"], ["y"], to=TensorProto.FLOAT)]
    model = make_model(nodes, [float_input("x", [1, 3, 8, 8])], [float_input("y", [1, 4, 6, 6])], [w8])
    feeds = {"x": rng.integers(0, 5, (1, 3, 8, 8)).astype(np.float32)}
    expect_skip(tmp_path, model, feeds, "left dense: k_q", "already quantized", compressed=False)


@pytest.mark.parametrize("bad,options", [(np.nan, []), (np.inf, []), (-np.inf, []), (np.nan, ["--bits", "4", "--sparsity", "0.5"]),
                                         (np.inf, ["--bits", "4", "--sparsity", "0.5", "--scope", "global"]),
                                         (np.nan, ["--calib", "random"])])
def test_23_non_finite_weight_is_left_dense(tmp_path, rng, bad, options, caplog):
    """A NaN or Inf cannot be clustered; the tensor stays dense (the model computes what it did) with a warning.
    Without calibration the first pass that reads the weight checks it (the allocation, the global pruning or the
    sharing); with it, the selection does (calibration runs the model on the weights first)."""
    w = rng.standard_normal((64, 32)).astype(np.float32)
    w[3, 5] = bad
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("MatMul", ["x", "v"], ["z"])],
                       [float_input("x", ["n", 64])], [float_input("y", ["n", 32]), float_input("z", ["n", 32])],
                       [numpy_helper.from_array(w, "w"), weight(rng, "v", (64, 32))])
    source = tmp_path / "in.onnx"
    onnx.save(model, source)
    result = cli("compress", source, tmp_path / "out.onnx", "--min-elements", "16", *options)
    assert result.exit_code == 0, result.stderr
    assert "left dense: w: holds 1 NaN/Inf value" in result.stdout
    assert any(r.levelname == "WARNING" and "holds 1 NaN/Inf value" in r.getMessage() for r in caplog.records)
    got = run_compressed(tmp_path / "out.onnx", x_feed(rng))
    assert not np.isfinite(got[0]).all() and np.isfinite(got[1]).all()


@pytest.mark.parametrize("options", [[], ["--bits", "4"], ["--bits", "4", "--sparsity", "0.5", "--scope", "global"]])
def test_23_streamed_non_finite_weight_is_left_dense(tmp_path, rng, options, caplog):
    """A weight in external data is checked by the first pass that reads it (the allocation, the global pruning
    or the sharing), with the same warning, and the rest is compressed."""
    w = rng.standard_normal((64, 32)).astype(np.float32)
    w[3, 5] = np.nan
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("MatMul", ["x", "v"], ["z"])],
                       [float_input("x", ["n", 64])], [float_input("y", ["n", 32]), float_input("z", ["n", 32])],
                       [numpy_helper.from_array(w, "w"), weight(rng, "v", (64, 32))])
    source = tmp_path / "in.onnx"
    onnx.save(model, source, save_as_external_data=True, all_tensors_to_one_file=True, location="in.onnx.data", size_threshold=0)
    result = cli("compress", source, tmp_path / "out.onnx", "--min-elements", "16", *options)
    assert result.exit_code == 0, result.stderr
    assert "left dense: w: holds 1 NaN/Inf value" in result.stdout
    assert any(r.levelname == "WARNING" and "holds 1 NaN/Inf value" in r.getMessage() for r in caplog.records)
    got = run_compressed(tmp_path / "out.onnx", x_feed(rng))
    assert not np.isfinite(got[0]).all() and np.isfinite(got[1]).all()


def test_24_zero_size_and_scalar_tensors(tmp_path, rng):
    empty = numpy_helper.from_array(np.zeros((0, 32), np.float32), "empty")
    scale = numpy_helper.from_array(np.array(0.5, np.float32), "scale")
    nodes = [helper.make_node("MatMul", ["e", "empty"], ["ey"]), helper.make_node("MatMul", ["x", "w"], ["y0"]),
             helper.make_node("Mul", ["y0", "scale"], ["y"])]
    model = make_model(nodes, [float_input("x", ["n", 64]), float_input("e", [2, 0])],
                       [float_input("y", ["n", 32]), float_input("ey", [2, 32])], [empty, scale, weight(rng, "w", (64, 32))])
    feeds = {**x_feed(rng), "e": np.zeros((2, 0), np.float32)}
    out = expect_skip(tmp_path, model, feeds, "left dense: empty", "0 elements", options=("--min-elements", "1", "--bits", "8"), compressed=True)
    assert "left dense: scale" in out and "not fewer than its 4 dense bytes" in out  # fixed bits: a record would not be smaller


def test_25_initializer_that_is_also_a_graph_input(tmp_path, rng, matmul_model):
    matmul_model.graph.input.append(float_input("w", [64, 32]))
    expect_skip(tmp_path, matmul_model, x_feed(rng), "left dense: w", "also a graph input", compressed=False)


def test_26_weight_feeding_a_prunable_and_a_non_prunable_op(tmp_path, rng):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("ReduceSum", ["w"], ["s"], keepdims=0),
             helper.make_node("Add", ["y", "s"], ["z"])]
    model = make_model(nodes, [float_input("x", ["n", 64])], [float_input("z", ["n", 32])], [weight(rng, "w", (64, 32))])
    expect_skip(tmp_path, model, x_feed(rng), "w ", compressed=True)
    ops = {n.op_type for n in onnx.load(tmp_path / "out.onnx", load_external_data=False).graph.node}
    assert {"CodebookMatMul", "CodebookDecode", "ReduceSum"} <= ops


def test_27_symbolic_and_dynamic_shapes(tmp_path, rng):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    model = make_model(nodes, [float_input("x", ["batch", None, 64])], [float_input("y", ["batch", None, 32])],
                       [weight(rng, "w", (64, 32))])
    expect_skip(tmp_path, model, {"x": rng.standard_normal((2, 5, 64)).astype(np.float32)}, "w ",
                options=("--min-elements", "16", "--calib", "random", "--prune", "activation"), compressed=True)


def test_28_custom_domain_ops_of_other_libraries(tmp_path, rng):
    """A com.microsoft op stays as it is and reads its weight decoded (kind other: unpruned); standard weights fuse."""
    nodes = [helper.make_node("FusedMatMul", ["x", "m"], ["a"], domain="com.microsoft", alpha=0.5),
             helper.make_node("MatMul", ["a", "w"], ["y"])]
    graph = helper.make_graph(nodes, "ms", [float_input("x", ["n", 64])], [float_input("y", ["n", 32])],
                              [weight(rng, "m", (64, 64)), weight(rng, "w", (64, 32))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    expect_skip(tmp_path, model, x_feed(rng), "w ", compressed=True)
    out = onnx.load(tmp_path / "out.onnx", load_external_data=False)
    assert [(n.domain, n.op_type) for n in out.graph.node] == [("ai.onnxcomp", "CodebookDecode"), ("com.microsoft", "FusedMatMul"),
                                                               ("ai.onnxcomp", "CodebookMatMul")]
    assert {o.domain for o in out.opset_import} == {"", "com.microsoft", "ai.onnxcomp"}


# --- calibration data ---------------------------------------------------------------------------------------

def calib_args(model_file, tmp_path, data):
    return ["compress", model_file, tmp_path / "out.onnx", "--calib", data, "--prune", "activation", "--min-elements", "16"]


def test_29_calibration_data_missing_an_input(tmp_path, model_file):
    np.savez(tmp_path / "c.npz", other=np.zeros((4, 64), np.float32))
    expect_failure(tmp_path, calib_args(model_file, tmp_path, tmp_path / "c.npz"), "no array for model input 'x'", "other")


def test_30_calibration_data_with_the_wrong_shape(tmp_path, model_file):
    np.savez(tmp_path / "c.npz", x=np.zeros((4, 63), np.float32))
    expect_failure(tmp_path, calib_args(model_file, tmp_path, tmp_path / "c.npz"), "shape [4, 63]", "wants ['?', 64]")


def test_31_calibration_data_with_the_wrong_dtype(tmp_path, model_file):
    np.savez(tmp_path / "c.npz", x=np.zeros((4, 64), np.float64))
    expect_failure(tmp_path, calib_args(model_file, tmp_path, tmp_path / "c.npz"), "float64", "wants float32")


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 broken zip"])
def test_32_calibration_file_empty_or_broken(tmp_path, model_file, content):
    (tmp_path / "c.npz").write_bytes(content)
    expect_failure(tmp_path, calib_args(model_file, tmp_path, tmp_path / "c.npz"), "c.npz", "not a readable .npz")


def test_33_calibration_data_with_no_samples(tmp_path, model_file):
    np.savez(tmp_path / "c.npz", x=np.zeros((0, 64), np.float32))
    expect_failure(tmp_path, calib_args(model_file, tmp_path, tmp_path / "c.npz"), "no samples")


def test_34_calibration_file_missing(tmp_path, model_file):
    expect_failure(tmp_path, calib_args(model_file, tmp_path, tmp_path / "none.npz"), "none.npz", "no such data file")


# --- option values ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("option,words", [(["--bits", "0"], ["--bits", "1 to 16"]), (["--bits", "17"], ["--bits", "1 to 16"]),
                                          (["--sparsity", "1.5"], ["--sparsity"]), (["--conv-bits", "-1"], ["--conv-bits"]),
                                          (["--sparsity", "-0.1"], ["--sparsity"]), (["--min-elements", "0"], ["--min-elements"]),
                                          (["--rounding", "stochastic"], ["--rounding"]), (["--score", "sparsegpt"], ["--score"])])
def test_35_invalid_option_values_are_usage_errors(tmp_path, model_file, option, words):
    expect_failure(tmp_path, ["compress", model_file, tmp_path / "out.onnx", *option], *words, exit_code=2)


@pytest.mark.parametrize("options", [dict(bits=0), dict(bits=17), dict(sparsity=1.5), dict(bits={"fc": 20}), dict(prune="random"),
                                     dict(rounding="stochastic"), dict(score="sparsegpt")])
def test_36_invalid_option_values_in_the_python_api(tmp_path, model_file, options):
    before = snapshot(tmp_path)
    with pytest.raises(InvalidOptionError):
        onnxcomp.compress(model_file, tmp_path / "out.onnx", **options)
    assert snapshot(tmp_path) == before


# --- what the user sees -------------------------------------------------------------------------------------

def test_37_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"junk")
    result = cli("compress", bad, tmp_path / "out.onnx", "--debug")
    assert result.exit_code != 0 and result.exception is not None and not isinstance(result.exception, SystemExit)


def test_38_a_user_sees_one_line_in_a_real_process(tmp_path):
    import subprocess
    import sys
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"junk")
    home = str(Path(onnxcomp.__file__).resolve().parents[1])
    code = f"import sys; sys.path.insert(0, {home!r}); from onnxcomp.front.cli import run; run()"
    result = subprocess.run([sys.executable, "-c", code, "compress", str(bad), str(tmp_path / "o.onnx")], capture_output=True, text=True)
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: "), result.stderr


def test_39_output_error_type_in_the_python_api(tmp_path, model_file):
    with pytest.raises(OutputError):
        onnxcomp.compress(model_file, model_file)


def test_40_same_input_and_options_give_byte_identical_outputs(tmp_path, model_file):
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        onnxcomp.compress(model_file, tmp_path / run / "out.onnx", min_elements=16, calib="random", prune="activation")
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")


def test_41_large_output_keeps_dense_initializers_in_a_data_file(tmp_path, rng, monkeypatch):
    """An output past protobuf's 2 GB limit (simulated by lowering the limit) keeps its dense weights in
    OUT.data; the model still runs, and a failure while writing leaves none of the three files."""
    from onnxcomp.passes import model_io
    monkeypatch.setattr(model_io, "LARGE_MODEL_BYTES", 0)
    table = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float64), "table")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"]), helper.make_node("Cast", ["rows"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", "v"], ["y"])]
    model = make_model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])], [float_input("y", ["n", 8])],
                       [table, weight(rng, "v", (32, 8))])
    expect_skip(tmp_path, model, {"ids": np.array([1, 2, 63], np.int64)}, "left dense: table", compressed=True)
    out = onnx.load(tmp_path / "out.onnx", load_external_data=False)
    locations = {e.value for t in out.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"out.onnx.data", "out.onnxcomp"}

    (tmp_path / "out.onnx").unlink(), (tmp_path / "out.onnxcomp").unlink(), (tmp_path / "out.onnx.data").unlink()
    monkeypatch.setattr(model_io, "_write_model", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    expect_failure(tmp_path, ["compress", tmp_path / "in.onnx", tmp_path / "out.onnx", "--min-elements", "16"], "free some space")
