"""Outliers end to end: exact values beside the codebook (record version 2), the per-layer choice, the option.

The spike test's tolerance: a layer whose weights hold a few values up to 50x the 99.9th percentile of |w|
must come out of the default compression with an output error (Frobenius norm of Y - Y_original over 64
random inputs) at most 1.25x that of the same layer without the spikes (same other weights, same settings):
the spikes may not cost more than a quarter on top of what pruning and the codebook already cost. (A
relative error would flatter the spiky layer: the spikes add output energy.) Without outliers the same
check fails.
"""

from __future__ import annotations

import struct
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcomp
import onnxcomp.pipeline.inspection
from onnxcomp.core import outliers, sidecar
from onnxcomp.errors import InvalidOptionError
from onnxcomp.pipeline.compression import compress_model

from conftest import float_input, make_model, run_compressed, run_plain, weight
from test_compress import OPTIONS, compress_and_check

FORCED = dict(OPTIONS, outliers=0.02)
SPIKE_TOLERANCE = 1.25


def record_versions(sidecar_file: str) -> list[int]:
    data = open(sidecar_file, "rb").read()
    return [struct.unpack("<H", data[e.offset + 4:e.offset + 6])[0] for e in sidecar.read_directory(sidecar_file)]


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_with_outliers(tmp_path, rng, trans_b):
    shape = (20, 32) if trans_b else (32, 20)
    model = make_model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=trans_b)], [float_input("x", ["n", 32])],
                       [float_input("y", ["n", 20])], [weight(rng, "w", shape), weight(rng, "b", (20,))])
    _, report, _ = compress_and_check(tmp_path, model, {"x": rng.standard_normal((5, 32)).astype(np.float32)}, FORCED)
    assert record_versions(report.sidecar_path) == [sidecar.RECORD_VERSION_OUTLIERS]
    assert report.layers[0].outliers == round(0.02 * 0.5 * 640)


def test_conv_gather_and_decoded_uses_with_outliers(tmp_path, rng):
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("ConvTranspose", ["h", "wt"], ["y"], strides=[2, 2]),
             helper.make_node("Gather", ["table", "ids"], ["e"]),
             helper.make_node("MatMul", ["v", "x2"], ["z"])]
    model = make_model(nodes, [float_input("x", [1, 3, 8, 8]), helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 3]),
                               float_input("x2", [40, 5])],
                       [float_input("y", [1, 4, 17, 17]), float_input("e", [2, 3, 16]), float_input("z", [30, 5])],
                       [weight(rng, "w", (6, 3, 3, 3)), weight(rng, "wt", (6, 4, 3, 3), 0.5), weight(rng, "table", (50, 16)),
                        weight(rng, "v", (30, 40))])
    feeds = {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32), "ids": np.array([[0, 49, 7], [3, 3, 11]]),
             "x2": rng.standard_normal((40, 5)).astype(np.float32)}
    _, report, _ = compress_and_check(tmp_path, model, feeds, dict(FORCED, min_elements=20))
    assert record_versions(report.sidecar_path) == [sidecar.RECORD_VERSION_OUTLIERS] * 4


def spiky_layer(rng, spikes: bool):
    """A 256x128 MatMul weight; with ``spikes``, 12 weights become 10-50x the 99.9th percentile of |w|."""
    w = (rng.standard_normal((256, 128)) * 0.05).astype(np.float32)
    if spikes:
        flat = w.ravel()
        top = np.quantile(np.abs(flat), 0.999)
        chosen = rng.choice(flat.size, 12, replace=False)
        flat[chosen] = np.sign(flat[chosen]) * top * rng.uniform(10, 50, 12)
        flat[chosen[0]] = 50 * np.quantile(np.abs(flat), 0.999)  # the spikes moved the percentile a little
    return make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [float_input("x", ["b", 256])],
                      [float_input("y", ["b", 128])], [numpy_helper.from_array(w, "w")])


def output_error(tmp_path, model, name, **options) -> float:
    onnx.save(model, tmp_path / f"{name}.onnx")
    # The fixed per-kind bits, so both layers get the same codebook size (the data-free allocation of the CLI's
    # defaults picks bits per weight: tests/test_allocation.py covers that path).
    onnxcomp.compress(tmp_path / f"{name}.onnx", tmp_path / f"{name}_small.onnx", allocation="fixed", **options)
    x = np.random.default_rng(3).standard_normal((64, 256)).astype(np.float32)
    want = run_plain(model, {"x": x})[0]
    got = run_compressed(tmp_path / f"{name}_small.onnx", {"x": x})[0]
    return float(np.linalg.norm(got - want))


def test_extreme_outliers_keep_the_output_at_default_settings(tmp_path):
    spiky = spiky_layer(np.random.default_rng(0), spikes=True)
    w = numpy_helper.to_array(spiky.graph.initializer[0])
    assert np.abs(w).max() >= 50 * np.quantile(np.abs(w), 0.999) * (1 - 1e-6)
    plain = output_error(tmp_path, spiky_layer(np.random.default_rng(0), spikes=False), "plain")
    default = output_error(tmp_path, spiky, "default")
    assert default <= SPIKE_TOLERANCE * plain, (default, plain)
    without = output_error(tmp_path, spiky, "without", outliers=0)
    assert without > SPIKE_TOLERANCE * plain, (without, plain)  # the check can fail: it does without outliers


def test_auto_choice_on_synthetic_tensors():
    rng = np.random.default_rng(0)
    few_values = rng.choice(np.linspace(-1, 1, 8).astype(np.float32), (64, 64))
    assert outliers.share(few_values, None, 4).fraction == 0.0  # the codebook is exact: nothing to gain
    spiky = rng.standard_normal((128, 256)).astype(np.float32)
    spikes = rng.choice(spiky.size, 30, replace=False)
    spiky.ravel()[spikes] = rng.choice([-1, 1], 30) * rng.uniform(20, 60, 30)
    chosen = outliers.share(spiky, None, 4)
    assert chosen.fraction > 0 and set(spikes) <= set(chosen.positions.tolist())
    assert chosen.damage < 0.5 * outliers.share(spiky, None, 4, option=0).damage
    fixed = outliers.share(spiky, None, 4, option=0.01)
    assert len(fixed.positions) == round(0.01 * spiky.size)
    keep = rng.random(spiky.shape) > 0.5
    pruned = outliers.share(spiky, keep, 4, option=0.01)
    assert keep.ravel()[pruned.positions].all() and len(pruned.positions) == round(0.01 * keep.sum())
    assert pruned.codebook[0] == 0.0


def test_choice_is_deterministic(rng):
    values = rng.standard_t(3, (64, 100)).astype(np.float32)
    a, b = outliers.share(values, None, 5), outliers.share(values, None, 5)
    assert a.fraction == b.fraction and np.array_equal(a.positions, b.positions)
    assert np.array_equal(a.codebook, b.codebook) and np.array_equal(a.values, b.values)


@pytest.mark.parametrize("value", ["-0.1", "0.6", "most", "nan"])
def test_bad_outlier_option(tmp_path, rng, value):
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [float_input("x", ["n", 48])],
                       [float_input("y", ["n", 20])], [weight(rng, "w", (48, 20))])
    onnx.save(model, tmp_path / "in.onnx")
    with pytest.raises(InvalidOptionError):
        onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx", outliers=value)
    result = subprocess.run([sys.executable, "-m", "onnxcomp", "compress", str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"),
                             "--outliers", value], capture_output=True, text=True)
    assert result.returncode != 0 and "outliers" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.onnx").exists()
    with pytest.raises(InvalidOptionError):
        onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx", layers=[{"pattern": "w", "outliers": value}])


def test_recipe_rule_sets_outliers_per_layer(tmp_path, rng):
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("MatMul", ["h", "v"], ["y"])],
                       [float_input("x", ["n", 64])], [float_input("y", ["n", 16])],
                       [weight(rng, "w", (64, 32)), weight(rng, "v", (32, 16))])
    recipe = tmp_path / "r.toml"
    recipe.write_text('[options]\noutliers = 0\n[[layer]]\npattern = "v"\noutliers = 0.05\n')
    onnx.save(model, tmp_path / "in.onnx")
    report = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx", config=str(recipe), min_elements=16)
    counts = {layer.name: layer.outliers for layer in report.layers}
    assert counts == {"w": 0, "v": round(0.05 * 0.5 * 512)}


def test_calibrated_refit_keeps_outliers_exact(tmp_path, rng):
    """With --calib (compensated rounding + codebook refit) outliers stay fixed and the error does not grow."""
    model = spiky_layer(np.random.default_rng(1), spikes=True)
    onnx.save(model, tmp_path / "in.onnx")
    calib = {"x": rng.standard_normal((128, 256)).astype(np.float32)}
    errors = {}
    for option in ("auto", 0):
        compressed, state = compress_model(onnx.load(tmp_path / "in.onnx"), calib=calib, outliers=option, min_elements=16)
        target = state.targets[0]
        decoded = sidecar.decode_record(target.record).to_dense()
        assert np.array_equal(decoded, target.decoded())
        if option == "auto":
            assert len(target.outlier_positions) > 0
        x = calib["x"]
        want = x @ numpy_helper.to_array(model.graph.initializer[0])
        errors[option] = np.linalg.norm(x @ decoded - want) / np.linalg.norm(want)
    assert errors["auto"] < errors[0]


# ---- Portable format, inspect and decompress --------------------------------------------------------------

from test_tools import mixed_feeds, mixed_model  # noqa: E402,F401 - fixture

MIXED = dict(sparsity=0.5, bits=4, min_elements=100, outliers=0.03)
MIXED_NAMES = {"w_gemm", "w_matmul", "table", "w_conv"}


def test_portable_outliers_equal_the_custom_op_weights(mixed_model, tmp_path, rng):  # noqa: F811
    custom, portable = tmp_path / "custom.onnx", tmp_path / "portable.onnx"
    custom_report = onnxcomp.compress(mixed_model, custom, **MIXED)
    report = onnxcomp.compress(mixed_model, portable, format="portable", **MIXED)
    model = onnx.load(portable)
    onnx.checker.check_model(model, full_check=True)
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    # one ScatterElements per weight puts its outliers on its lookup, whose codebook keeps the weight's name
    assert len([n for n in model.graph.node if n.op_type == "ScatterElements"]) == len(MIXED_NAMES)
    assert [layer.outliers for layer in report.layers] == [layer.outliers for layer in custom_report.layers]
    # The same weights: the lookup with outliers scattered on equals the numpy decoding of the records.
    stored = {w.name: w.dense() for w in onnxcomp.pipeline.inspection.stored_weights(model, str(portable)).values()}
    from onnxcomp.pipeline.compression import decoded_weights
    for name, dense in decoded_weights(custom_report.sidecar_path).items():
        np.testing.assert_array_equal(stored[name], dense)
    feeds = mixed_feeds(rng)
    for a, b in zip(run_plain(portable, feeds), run_compressed(custom, feeds)):  # stock onnxruntime vs the library
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
    for layer in report.layers:  # bytes_after counts the stored gaps and values
        gaps = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == layer.name + ".outlier_gaps"))
        values = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == layer.name + ".outlier_values"))
        assert len(gaps) == len(values) == layer.outliers
        assert layer.bytes_after == -(-layer.params * 4 // 8) + 4 * layer.codebook_size + gaps.nbytes + values.nbytes


def test_portable_old_opset_has_no_outliers(tmp_path, rng):
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [float_input("x", ["n", 64])],
                       [float_input("y", ["n", 32])], [weight(rng, "w", (64, 32))], opset=10)
    onnx.save(model, tmp_path / "old.onnx")
    report = onnxcomp.compress(tmp_path / "old.onnx", tmp_path / "out.onnx", format="portable", outliers=0.05)
    assert report.layers[0].outliers == 0
    assert not any(n.op_type == "ScatterElements" for n in onnx.load(tmp_path / "out.onnx").graph.node)


@pytest.mark.parametrize("fmt", ["custom-op", "portable"])
def test_inspect_and_decompress_count_and_apply_outliers(mixed_model, tmp_path, rng, fmt):  # noqa: F811
    out, dense = tmp_path / "small.onnx", tmp_path / "dense.onnx"
    report = onnxcomp.compress(mixed_model, out, format=fmt, **MIXED)
    inspected = {w.name: w for w in onnxcomp.inspect(out).weights}
    for layer in report.layers:
        info = inspected[layer.name]
        assert info.outliers == layer.outliers > 0
        assert 0 < info.outlier_bytes < info.stored_bytes
    if fmt == "custom-op":
        data = open(report.sidecar_path, "rb").read()
        for entry in sidecar.read_directory(report.sidecar_path):
            record = sidecar.decode_record(data[entry.offset:entry.offset + entry.length])
            assert inspected[entry.name].outlier_bytes == outliers.encoded_bytes(record.outlier_positions, record.outlier_values)
            assert inspected[entry.name].stored_bytes == entry.length
    table = subprocess.run([sys.executable, "-m", "onnxcomp", "inspect", str(out)], capture_output=True, text=True)
    assert table.returncode == 0 and "outliers" in table.stdout.splitlines()[1]
    onnxcomp.decompress(out, dense)
    assert not any(n.op_type == "ScatterElements" or n.domain == onnxcomp.DOMAIN for n in onnx.load(dense).graph.node)
    feeds = mixed_feeds(rng)
    for a, b in zip(run_plain(dense, feeds), run_compressed(out, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())  # fp32 summation order


# ---- Calibrated math with outliers held fixed -----------------------------------------------------------------

def test_obs_rounding_leaves_outliers_unrounded(rng):
    from onnxcomp.core import obs
    rows = rng.standard_normal((6, 20))
    x = rng.standard_normal((100, 20))
    gram = x.T @ x
    codebook = np.sort(rng.standard_normal(4)).astype(np.float32)
    none = np.zeros(rows.shape, dtype=bool)
    plain = obs.round_to_codebook(rows, None, codebook, gram)
    indices, values = obs.round_to_codebook(rows, None, codebook, gram, exact=none)
    assert np.array_equal(indices, plain) and not values.any()
    everything = np.ones(rows.shape, dtype=bool)
    _, values = obs.round_to_codebook(rows, None, codebook, gram, exact=everything)
    np.testing.assert_allclose(values, rows, rtol=1e-6)  # nothing rounded, so nothing compensated


def test_codebook_refit_with_fixed_outliers_is_the_least_squares_optimum(rng):
    """Against a brute-force least squares over the free codebook entries, outliers fixed at their values."""
    from onnxcomp.core import reconstruction
    outputs, inputs, k = 5, 12, 4
    original = rng.standard_normal((outputs, inputs))
    x = rng.standard_normal((200, inputs))
    gram = x.T @ x
    indices = rng.integers(0, k, (outputs, inputs))
    exact = rng.random((outputs, inputs)) < 0.15
    exact_values = np.where(exact, original * 1.1, 0.0).astype(np.float32)
    start = np.sort(rng.standard_normal(k)).astype(np.float32)
    refit = reconstruction.refit_codebook(original, indices, start, gram, False, ridge=0.0, exact=exact, exact_values=exact_values)
    # ||X (M c + v) - X w||^2 summed over rows, M the one-hot of non-outlier entries: linear least squares in c.
    design, target = [], []
    for i in range(outputs):
        onehot = np.zeros((inputs, k))
        onehot[np.flatnonzero(~exact[i]), indices[i][~exact[i]]] = 1.0
        design.append(x @ onehot)
        target.append(x @ original[i] - x @ exact_values[i])
    best = np.linalg.lstsq(np.vstack(design), np.concatenate(target), rcond=None)[0]
    np.testing.assert_allclose(refit, best, rtol=1e-4, atol=1e-5)
