"""inspect, decompress and verify: Python API and command line, checked on their output."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcomp
from onnxcomp.core import sidecar
from onnxcomp.pipeline.compression import decoded_weights
from conftest import float_input, make_model, run_compressed, run_plain, weight
from test_cli import BUNDLED, BUNDLED_EVAL, expect_error, onnxcomp as cli


@pytest.fixture
def mixed_model(tmp_path, rng):
    """One weight of each rewrite: Gemm transB=1 (stored transposed), MatMul, Gather, Conv (CodebookConv)."""
    nodes = [
        helper.make_node("Gemm", ["x", "w_gemm", "b_gemm"], ["h1"], transB=1),
        helper.make_node("MatMul", ["h1", "w_matmul"], ["h2"]),
        helper.make_node("Gather", ["table", "ids"], ["emb"], axis=0),
        helper.make_node("Conv", ["img", "w_conv"], ["conv"], pads=[1, 1, 1, 1]),
    ]
    inputs = [float_input("x", ["n", 64]), helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 3]),
              float_input("img", ["n", 8, 6, 6])]
    outputs = [float_input("h2", ["n", 16]), float_input("emb", ["n", 3, 32]), float_input("conv", ["n", 16, 6, 6])]
    initializers = [weight(rng, "w_gemm", (48, 64)), weight(rng, "b_gemm", (48,)), weight(rng, "w_matmul", (48, 16)),
                    weight(rng, "table", (100, 32)), weight(rng, "w_conv", (16, 8, 3, 3), 0.3)]
    path = tmp_path / "mixed.onnx"
    onnx.save(make_model(nodes, inputs, outputs, initializers), path)
    return path


def mixed_feeds(rng):
    return {"x": rng.standard_normal((5, 64)).astype(np.float32), "ids": rng.integers(-100, 100, (5, 3)),
            "img": rng.standard_normal((5, 8, 6, 6)).astype(np.float32)}


def test_inspect_compressed_model(mixed_model, tmp_path):
    out = tmp_path / "small.onnx"
    report = onnxcomp.compress(mixed_model, out, sparsity=0.5, bits=4, min_elements=100)
    result = onnxcomp.inspect(out)
    assert result.format == "custom-op"
    weights = {w.name: w for w in result.weights}
    assert set(weights) == {"w_gemm", "w_matmul", "table", "w_conv"}
    assert weights["w_gemm"].shape == [48, 64] and weights["w_gemm"].op == "CodebookMatMul"
    assert weights["table"].op == "CodebookGather" and weights["table"].kind == "embedding"
    assert weights["w_conv"].op == "CodebookConv" and weights["w_conv"].kind == "conv"
    directory = {e.name: e for e in sidecar.read_directory(str(tmp_path / "small.onnxcomp"))}
    assert directory["w_gemm"].transposed
    for layer in report.layers:
        info = weights[layer.name]
        assert info.storage == "record" and info.bits == 4 and info.codebook_size <= 16
        assert info.stored_bytes == directory[layer.name].length == layer.bytes_after
        assert info.sparsity == pytest.approx(layer.sparsity, abs=1e-6)
        assert info.bits_per_weight == pytest.approx(8 * info.stored_bytes / info.params)
        assert 0 < info.entropy_bytes <= info.stored_bytes + 64  # Huffman stays close to the entropy
    assert result.stored_bytes == sum(w.stored_bytes for w in result.weights)
    assert result.ratio == pytest.approx(result.dense_bytes / result.stored_bytes)


def test_inspect_original_model_and_json(tmp_path):
    result = cli("inspect", BUNDLED, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["format"] == "original"
    assert [w["name"] for w in data["weights"]] == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert data["params"] == 784 * 300 + 300 * 100 + 100 * 10
    assert all(w["bits"] == 32 and w["storage"] == "dense" for w in data["weights"])
    assert data["ratio"] == pytest.approx(1.0)
    table = cli("inspect", BUNDLED)
    assert table.returncode == 0 and "fc1.weight" in table.stdout and "300x784" in table.stdout
    assert "1.0x" in table.stdout.splitlines()[-1]


def test_decompress_runs_without_the_library(mixed_model, tmp_path, rng):
    out, dense = tmp_path / "small.onnx", tmp_path / "dense.onnx"
    onnxcomp.compress(mixed_model, out, sparsity=0.5, bits=4, min_elements=100)
    onnxcomp.decompress(out, dense)
    model = onnx.load(dense)
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    assert all(o.domain != onnxcomp.DOMAIN for o in model.opset_import)
    assert {n.op_type for n in model.graph.node} == {"Gemm", "MatMul", "Gather", "Conv"}
    names = {t.name for t in model.graph.initializer}
    assert {"w_gemm", "w_matmul", "table", "w_conv"} <= names
    assert not any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)
    gemm = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w_gemm"))
    assert gemm.shape == (48, 64)  # original orientation, restored from the directory's transposed flag
    feeds = mixed_feeds(rng)
    expected = run_compressed(out, feeds)
    actual = run_plain(dense, feeds)  # stock onnxruntime, no custom-op library
    for a, b in zip(actual, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())  # fp32 summation order


def test_decompress_keeps_a_transposed_weight_valid_for_3d_inputs(tmp_path, rng):
    """A MatMul by Transpose(W) over a 3-D X is stored transposed like Gemm(transB=1), but Gemm takes 2-D X only:
    decompress writes MatMul(X, Transpose(W)) there, and Gemm where X is 2-D."""
    nodes = [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]), helper.make_node("MatMul", ["x", "wt"], ["h"]),
             helper.make_node("Add", ["h", "b"], ["y"]),
             helper.make_node("Gemm", ["z", "v", "c"], ["u"], transB=1)]
    model = make_model(nodes, [float_input("x", [2, "t", 64]), float_input("z", ["n", 64])],
                       [float_input("y", [2, "t", 48]), float_input("u", ["n", 48])],
                       [weight(rng, "w", (48, 64)), weight(rng, "b", (48,)), weight(rng, "v", (48, 64)),
                        weight(rng, "c", (48,))])
    source, out, dense = tmp_path / "in.onnx", tmp_path / "small.onnx", tmp_path / "dense.onnx"
    onnx.save(model, source)
    onnxcomp.compress(source, out, sparsity=0.5, bits=4, min_elements=100)
    assert {n.op_type for n in onnx.load(out).graph.node} == {"CodebookMatMul"}
    onnxcomp.decompress(out, dense)
    ops = sorted(n.op_type for n in onnx.load(dense).graph.node)
    assert ops == ["Add", "Gemm", "MatMul", "Transpose"]
    feeds = {"x": rng.standard_normal((2, 5, 64)).astype(np.float32), "z": rng.standard_normal((3, 64)).astype(np.float32)}
    for a, b in zip(run_plain(dense, feeds), run_compressed(out, feeds)):  # loads in stock onnxruntime
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


def test_inference_session_registers_the_library_only_when_declared(mixed_model, tmp_path, rng, monkeypatch):
    out, dense = tmp_path / "small.onnx", tmp_path / "dense.onnx"
    onnxcomp.compress(mixed_model, out, sparsity=0.5, bits=4, min_elements=100)
    onnxcomp.decompress(out, dense)
    for path in (out, dense, mixed_model):  # the top-level walk agrees with protobuf's full parse
        expected = {o.domain for o in onnx.load(path, load_external_data=False).opset_import}
        assert onnxcomp.runtime.declared_domains(str(path)) == expected
        assert onnxcomp.runtime.declared_domains(path.read_bytes()) == expected
    assert onnxcomp.DOMAIN in onnxcomp.runtime.declared_domains(str(out))
    truncated = out.read_bytes()[:-3]
    assert onnxcomp.runtime.declared_domains(truncated) is None
    # With the library made unfindable, a plain model still opens (nothing registered), a compressed one cannot.
    monkeypatch.setenv("ONNXCOMP_LIBRARY", str(tmp_path / "missing.so"))
    feeds = mixed_feeds(rng)
    np.testing.assert_array_equal(onnxcomp.InferenceSession(dense).run(None, feeds)[0], run_plain(dense, feeds)[0])
    with pytest.raises(onnxcomp.OnnxcompError, match="ONNXCOMP_LIBRARY"):
        onnxcomp.InferenceSession(out)


def test_decompress_cli(tmp_path):
    small, dense = tmp_path / "small.onnx", tmp_path / "dense.onnx"
    onnxcomp.compress(BUNDLED, small)
    result = cli("decompress", small, dense)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and dense.is_file()
    # fc3.weight (below --min-elements) stays as the compressed model stores it: float16 widened by a Cast
    assert [n.op_type for n in onnx.load(dense).graph.node] == ["Cast", "Gemm", "Relu", "Gemm", "Relu", "Gemm"]
    expect_error(cli("decompress", tmp_path / "missing.onnx", tmp_path / "x.onnx"), "no such file")


def test_decompress_missing_sidecar(tmp_path):
    small = tmp_path / "small.onnx"
    onnxcomp.compress(BUNDLED, small)
    (tmp_path / "small.onnxcomp").unlink()
    expect_error(cli("decompress", small, tmp_path / "dense.onnx"), "sidecar", "missing")


def test_verify_random_inputs_and_gates(tmp_path):
    small = tmp_path / "small.onnx"
    onnxcomp.compress(BUNDLED, small, sparsity=0.5, bits=4)
    result = onnxcomp.verify(BUNDLED, small, samples=32, seed=3)
    assert result.inputs == "random (seed 3)" and result.samples == 32
    (output,) = result.outputs
    assert output.name == "logits" and output.shape == [32, 10]
    assert 0.9 < output.cosine < 1.0 and 0 < output.relative_l2_error < 0.5 and output.max_abs_error > 0
    assert output.top1_agreement is not None and output.top1_agreement > 0.7
    assert result.failures(min_cosine=0.5, min_top1=0.5) == []
    assert len(result.failures(min_cosine=0.99999)) == 1

    text = cli("verify", BUNDLED, small, "--samples", "32", "--seed", "3")
    assert text.returncode == 0, text.stderr
    assert "random inputs" in text.stdout and "logits" in text.stdout
    gated = cli("verify", BUNDLED, small, "--min-cosine", "0.99999")
    assert gated.returncode == 3 and "cosine" in gated.stderr and "below 0.99999" in gated.stderr
    assert cli("verify", BUNDLED, small, "--min-top1", "1.5").returncode == 2  # usage error


def test_verify_on_data_json_and_identity(tmp_path):
    small, dense = tmp_path / "small.onnx", tmp_path / "dense.onnx"
    onnxcomp.compress(BUNDLED, small)
    onnxcomp.decompress(small, dense)
    result = cli("verify", BUNDLED, small, "--calib", BUNDLED_EVAL, "--samples", "500", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["inputs"] == str(BUNDLED_EVAL) and data["samples"] == 500
    assert data["outputs"][0]["top1_agreement"] > 0.9 and data["min_cosine"] > 0.99
    same = onnxcomp.verify(small, dense, BUNDLED_EVAL, samples=200)  # decompressed equals compressed
    assert same.outputs[0].max_abs_error < 1e-4 and same.outputs[0].top1_agreement == 1.0
    assert same.min_cosine == pytest.approx(1.0, abs=1e-9)
    expect_error(cli("verify", BUNDLED, small, "--calib", tmp_path / "none.npz"), "no such data file")


def two_layer_model(tmp_path, rng):
    """x -> MatMul w1 -> Relu -> Gemm(transB=1) w2 -> scores: two weights of the same size."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2"], ["scores"], transB=1)]
    model = make_model(nodes, [float_input("x", ["n", 64])], [float_input("scores", ["n", 64])],
                       [weight(rng, "w1", (64, 64), 0.2), weight(rng, "w2", (64, 64), 0.2)])
    path = tmp_path / "two.onnx"
    onnx.save(model, path)
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.standard_normal((200, 64)).astype(np.float32))
    return model, path, data


@pytest.mark.parametrize("coarse", ["w1", "w2"])
def test_verify_per_layer_ranks_the_2_bit_layer_first(tmp_path, rng, coarse):
    model, path, data = two_layer_model(tmp_path, rng)
    fine = {"w1": "w2", "w2": "w1"}[coarse]
    small = tmp_path / "small.onnx"
    onnxcomp.compress(path, small, min_elements=100, settings={coarse: {"sparsity": 0.0, "bits": 2},
                                                               fine: {"sparsity": 0.0, "bits": 8}})
    result = onnxcomp.verify(path, small, str(data), per_layer=True)
    assert result.per_layer_output == "scores"
    worst, best = result.layers
    assert (worst.name, worst.bits, worst.codebook_size) == (coarse, 2, 4)
    assert (best.name, best.bits) == (fine, 8)
    assert worst.relative_l2_error > 10 * best.relative_l2_error
    assert worst.share > 0.9 and worst.share + best.share == pytest.approx(1.0)
    assert worst.cosine < best.cosine <= 1.0 and worst.top1_agreement < best.top1_agreement
    assert result.layers_error_sum == pytest.approx(worst.relative_l2_error + best.relative_l2_error)
    # Each row is exactly "the original with only that weight decoded": recompute it in onnxruntime.
    x = np.load(data)["x"]
    want = run_plain(model, {"x": x})[0]
    decoded = decoded_weights(str(tmp_path / "small.onnxcomp"))
    for layer in result.layers:
        alone = onnx.ModelProto()
        alone.CopyFrom(model)
        tensor = next(t for t in alone.graph.initializer if t.name == layer.name)
        tensor.CopyFrom(numpy_helper.from_array(decoded[layer.name], layer.name))
        got = run_plain(alone, {"x": x})[0]
        assert layer.max_abs_error == pytest.approx(np.abs(got - want).max(), rel=1e-4, abs=1e-6)
        assert layer.relative_l2_error == pytest.approx(np.linalg.norm(got - want) / np.linalg.norm(want), rel=1e-4)

    text = cli("verify", path, small, "--calib", data, "--per-layer")
    assert text.returncode == 0, text.stderr
    table = text.stdout.split("per layer")[1].splitlines()
    rows = [line.split()[0] for line in table if line.split() and line.split()[0] in ("w1", "w2")]
    assert rows == [coarse, fine] and "add up to" in text.stdout
    as_json = cli("verify", path, small, "--calib", data, "--per-layer", "--json")
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert [layer["name"] for layer in report["layers"]] == [coarse, fine]
    assert report["layers"][0]["share"] == pytest.approx(worst.share)
    assert report["per_layer_output"] == "scores" and report["layers_error_sum"] > 0
    plain = json.loads(cli("verify", path, small, "--calib", data, "--json").stdout)
    assert plain["layers"] is None  # only with --per-layer


def test_verify_per_layer_orientation_and_unrelated_layers(mixed_model, tmp_path, rng):
    """Transposed records come back in the original orientation; weights the first output does not read cost 0."""
    small = tmp_path / "small.onnx"
    onnxcomp.compress(mixed_model, small, sparsity=0.5, bits=3, min_elements=100)
    result = onnxcomp.verify(mixed_model, small, per_layer=True, samples=16)
    layers = {layer.name: layer for layer in result.layers}
    assert set(layers) == {"w_gemm", "w_matmul", "table", "w_conv"} and result.per_layer_output == "h2"
    assert layers["w_gemm"].shape == [48, 64] and layers["w_conv"].shape == [16, 8, 3, 3]
    assert layers["table"].relative_l2_error == 0 and layers["w_conv"].share == 0  # they feed other outputs
    assert {layer.name for layer in result.layers[:2]} == {"w_gemm", "w_matmul"}
    assert all(0.4 < layer.sparsity < 0.6 for layer in result.layers)


def test_verify_per_layer_portable_and_errors(tmp_path):
    portable, dense = tmp_path / "portable.onnx", tmp_path / "dense.onnx"
    onnxcomp.compress(BUNDLED, portable, format="portable", bits=4)
    result = onnxcomp.verify(BUNDLED, portable, samples=16, per_layer=True)
    assert {layer.name for layer in result.layers} == {"fc1.weight", "fc2.weight"}
    assert all(layer.bits == 4 and 0 < layer.share < 1 for layer in result.layers)
    onnxcomp.decompress(tmp_path / "portable.onnx", dense)
    expect_error(cli("verify", BUNDLED, dense, "--per-layer"), "no compressed weight", "--per-layer")
    assert cli("verify", BUNDLED, dense).returncode == 0  # without --per-layer a dense model is fine
