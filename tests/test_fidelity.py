"""Every compress run states its fidelity: the one-line summary, the report fields, the warning below cosine
0.99, the --min-cosine gate (nothing written, input untouched), and inputs that cannot be synthesised."""

import hashlib
import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import float_input, make_model, weight
from test_cli import onnxcomp

import onnxcomp as package
from onnxcomp.pipeline import fidelity


@pytest.fixture
def mlp(tmp_path, rng):
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    model = make_model(nodes, [float_input("x", ["n", 64])], [float_input("y", ["n", 10])],
                       [weight(rng, "w1", (64, 48)), weight(rng, "w2", (48, 10), 0.3)])
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    return path


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_compress_prints_fidelity_and_reports_it(tmp_path, mlp):
    result = onnxcomp("compress", mlp, tmp_path / "out.onnx", "--min-elements", "256", "--report", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    line = next(l for l in result.stdout.splitlines() if l.startswith("fidelity"))
    assert "16 synthesised inputs" in line and "min cosine" in line and "top-1 agreement" in line
    report = json.loads((tmp_path / "r.json").read_text())["fidelity"]
    assert report["inputs"] == "synthesised" and report["samples"] == 16
    assert 0.99 <= report["min_cosine"] <= report["mean_cosine"] <= 1.0 + 1e-9  # defaults keep it above the warning
    assert report["top1_agreement"] is not None and report["unavailable"] is None
    assert "warning" not in result.stderr


def test_fidelity_matches_an_independent_measurement(tmp_path, mlp):
    out = tmp_path / "out.onnx"
    report = package.compress(mlp, out, bits=2, min_elements=256)
    feeds = fidelity.synthesise(onnx.load(mlp), seed=0)
    import onnxruntime as ort
    a = ort.InferenceSession(str(mlp), providers=["CPUExecutionProvider"]).run(None, feeds[0])[0].astype(np.float64)
    b = package.InferenceSession(out).run(None, feeds[0])[0].astype(np.float64)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert report.fidelity["min_cosine"] == pytest.approx(cos.min(), abs=1e-9)
    assert report.fidelity["mean_cosine"] == pytest.approx(cos.mean(), abs=1e-9)
    assert report.fidelity["top1_agreement"] == pytest.approx(np.mean(a.argmax(1) == b.argmax(1)))


def test_low_fidelity_warns_in_one_line_and_exits_zero(tmp_path, mlp):
    result = onnxcomp("compress", mlp, tmp_path / "out.onnx", "--bits", "1", "--min-elements", "256")
    assert result.returncode == 0, result.stderr
    warnings = [l for l in result.stderr.splitlines() if l.startswith("warning: min cosine")]
    assert len(warnings) == 1 and "below 0.99" in warnings[0]
    assert (tmp_path / "out.onnx").is_file()


def test_min_cosine_gate_writes_nothing(tmp_path, mlp):
    before = digest(mlp)
    out = tmp_path / "out.onnx"
    result = onnxcomp("compress", mlp, out, "--bits", "1", "--min-elements", "256", "--min-cosine", "0.999")
    assert result.returncode == 4
    assert result.stderr.strip().count("\n") == 0 and "below --min-cosine 0.999" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]  # no output, no sidecar, no staging folder left
    assert digest(mlp) == before
    passed = onnxcomp("compress", mlp, out, "--bits", "8", "--sparsity", "0", "--min-elements", "256", "--min-cosine", "0.99")
    assert passed.returncode == 0, passed.stderr
    assert out.is_file() and (tmp_path / "out.onnxcomp").is_file()


def test_gate_keeps_a_previous_output(tmp_path, mlp):
    out = tmp_path / "out.onnx"
    assert onnxcomp("compress", mlp, out, "--bits", "8", "--sparsity", "0", "--min-elements", "256").returncode == 0
    model_before, sidecar_before = digest(out), digest(tmp_path / "out.onnxcomp")
    assert onnxcomp("compress", mlp, out, "--bits", "1", "--min-elements", "256", "--min-cosine", "0.999").returncode == 4
    assert digest(out) == model_before and digest(tmp_path / "out.onnxcomp") == sidecar_before


def sample_rate_model(tmp_path, rng):
    """A model with an int64 scalar input 'sr' whose valid value (16000) cannot be guessed."""
    nodes = [helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Mul", ["h", "srf"], ["y"])]
    model = make_model(nodes, [float_input("x", ["n", 64]), helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                       [float_input("y", ["n", 32])], [weight(rng, "w", (64, 32))])
    path = tmp_path / "sr.onnx"
    onnx.save(model, path)
    return path


def test_inputs_that_cannot_be_synthesised_are_named(tmp_path, rng):
    path = sample_rate_model(tmp_path, rng)
    result = onnxcomp("compress", path, tmp_path / "out.onnx")
    assert result.returncode == 0, result.stderr
    line = next(l for l in result.stdout.splitlines() if l.startswith("fidelity"))
    assert "not measured" in line and "'sr'" in line and "--input-range sr=" in line
    gated = onnxcomp("compress", path, tmp_path / "gated.onnx", "--min-cosine", "0.9")
    assert gated.returncode == 4 and "cannot be checked" in gated.stderr
    assert not (tmp_path / "gated.onnx").exists()
    given = onnxcomp("compress", path, tmp_path / "out.onnx", "--input-range", "sr=16000,16000", "--report", tmp_path / "r.json")
    assert given.returncode == 0, given.stderr
    assert json.loads((tmp_path / "r.json").read_text())["fidelity"]["min_cosine"] > 0.99


def test_token_ids_are_drawn_over_the_embedding_rows(rng):
    table = numpy_helper.from_array(rng.standard_normal((50, 8)).astype(np.float32), "table")
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["e"]), helper.make_node("Add", ["e", "e"], ["y"])]
    model = make_model(nodes, [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
                               helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
                       [float_input("y", ["batch", "seq", 8])], [table])
    feeds = fidelity.synthesise(model, samples=4, seed=0, shapes={"attention_mask": [4, 7]})
    ids = feeds[0]["input_ids"]
    assert ids.shape == (4, fidelity.DYNAMIC_DIM) and ids.min() >= 0 and ids.max() <= 49 and len(np.unique(ids)) > 10
    assert (feeds[0]["attention_mask"] == 1).all() and feeds[0]["attention_mask"].shape == (4, 7)


def test_stored_original_outputs_are_read_not_recomputed(tmp_path, mlp):
    """compare_runs with a ``reference`` dict stores the original's outputs on the first call and reads them on
    later calls (compress's back-off rounds): the same result as without it, and a changed stored output
    changes the measurement (so the original was not run again)."""
    out = tmp_path / "out.onnx"
    package.compress(mlp, out)
    feeds, source, _ = fidelity.prepare(str(mlp))
    plain = fidelity.compare_runs(str(mlp), str(out), feeds, source)
    reference = {}
    first = fidelity.compare_runs(str(mlp), str(out), feeds, source, reference=reference)
    again = fidelity.compare_runs(str(mlp), str(out), feeds, source, reference=reference)
    assert first.to_dict() == plain.to_dict() == again.to_dict()
    (stored,) = reference.values()
    assert len(stored) == len(feeds)
    for outputs in stored:
        outputs["y"] = -outputs["y"]
    flipped = fidelity.compare_runs(str(mlp), str(out), feeds, source, reference=reference)
    assert flipped.mean_cosine == pytest.approx(-plain.mean_cosine) and flipped.min_cosine < 0


def test_bad_override_is_a_one_line_error(tmp_path, mlp):
    result = onnxcomp("compress", mlp, tmp_path / "out.onnx", "--input-shape", "x=1,a")
    assert result.returncode == 1 and "--input-shape" in result.stderr and "Traceback" not in result.stderr
    result = onnxcomp("compress", mlp, tmp_path / "out.onnx", "--input-range", "nope=0,1")
    assert result.returncode == 1 and "nope" in result.stderr
    assert not (tmp_path / "out.onnx").exists()


def test_top1_only_for_class_scores(tmp_path, rng):
    """A pooled embedding [N, 64] is no class score: the fidelity line shows no top-1 (verify's rule), while the
    linear head's [N, 10] output of the same model does."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("ReduceMean", ["r"], ["embedding"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["embedding", "head"], ["scores"])]
    model = make_model(nodes, [float_input("x", ["n", 8, 32])],
                       [float_input("embedding", ["n", 64]), float_input("scores", ["n", 10])],
                       [weight(rng, "w", (32, 64), 0.3), weight(rng, "head", (64, 10), 0.3)])
    onnx.save(model, tmp_path / "in.onnx")
    report = package.compress(tmp_path / "in.onnx", tmp_path / "out.onnx", bits=8, min_elements=16)
    by_output = {o["name"]: o for o in report.fidelity["outputs"]}
    assert by_output["embedding"]["top1_agreement"] is None
    assert by_output["scores"]["top1_agreement"] is not None


def test_top1_of_a_head_whose_weight_and_bias_are_constant_nodes(tmp_path, rng):
    """Paddle exports (ppocr-cls) hold the head's weight and bias in Constant nodes, not initializers: the bias Add
    still counts as a pass-through and the head's [N, 2] output gets its top-1 agreement (it had none: the Add seemed
    to read two computed values)."""
    constant = lambda name, shape: helper.make_node(  # noqa: E731
        "Constant", [], [name], value=numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32)))
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             constant("head", (64, 2)), constant("bias16", (2,)),
             helper.make_node("MatMul", ["r", "head"], ["logits"]), helper.make_node("Add", ["logits", "bias16"], ["z"]),
             helper.make_node("Softmax", ["z"], ["probabilities"], axis=1)]
    model = make_model(nodes, [float_input("x", ["n", 32])], [float_input("probabilities", ["n", 2])],
                       [weight(rng, "w", (32, 64), 0.3)])
    onnx.save(model, tmp_path / "in.onnx")
    from onnxcomp.pipeline.verification import class_score_outputs
    assert class_score_outputs(model) == {"probabilities"}
    report = package.compress(tmp_path / "in.onnx", tmp_path / "out.onnx", bits=8, min_elements=16)
    assert report.fidelity["outputs"][0]["top1_agreement"] is not None
    assert report.fidelity["top1_agreement"] is not None


def test_saturated_sigmoid_is_compared_on_its_logits(tmp_path, rng):
    """A sigmoid map that is exactly 0 on every synthesised input (logits near -200) gives no cosine of its own:
    the check compares the Sigmoid's input (found through a Reshape), equal to an independent measurement."""
    w = (rng.standard_normal((64, 48)) * 0.1).astype(np.float32)
    shift = numpy_helper.from_array(np.full(48, -200.0, np.float32), "shift")
    shape = numpy_helper.from_array(np.array([-1, 6, 8], np.int64), "shape")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "shift"], ["logits"]),
             helper.make_node("Sigmoid", ["logits"], ["p"]), helper.make_node("Reshape", ["p", "shape"], ["y"])]
    model = make_model(nodes, [float_input("x", ["n", 64])], [float_input("y", ["n", 6, 8])],
                       [numpy_helper.from_array(w, "w"), shift, shape])
    onnx.save(model, tmp_path / "in.onnx")
    assert fidelity.logit_taps(model) == {"y": "logits"}
    report = package.compress(tmp_path / "in.onnx", tmp_path / "out.onnx", bits=4)
    out = report.fidelity["outputs"][0]
    assert out["compared"] == "logits"
    feeds = fidelity.synthesise(model, seed=0)
    from conftest import run_plain
    from onnxcomp.pipeline.compression import decoded_weights
    y, = run_plain(model, feeds[0])
    assert not np.any(y)  # saturated: the output itself says nothing
    x = feeds[0]["x"].astype(np.float64)
    a, b = x @ w - 200.0, x @ decoded_weights(str(tmp_path / "out.onnxcomp"))["w"] - 200.0
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert 0.99 < out["min_cosine"] < 1.0
    assert out["min_cosine"] == pytest.approx(cos.min(), abs=1e-6)


def test_image_inputs_are_smooth_images_in_range():
    """An input shaped like an image batch gets images whose neighbouring pixels correlate (iid noise: 0), in the
    declared [0, 1) range, NCHW or NHWC, the same for the same seed."""
    for dims, layout in (([4, 3, 64, 48], "NCHW"), ([4, 64, 48, 3], "NHWC")):
        assert fidelity.image_layout(dims) == layout
        images = fidelity.smooth_images(np.random.default_rng(1), dims, layout, 0.0, 1.0)
        again = fidelity.smooth_images(np.random.default_rng(1), dims, layout, 0.0, 1.0)
        np.testing.assert_array_equal(images, again)
        assert images.shape == tuple(dims) and images.min() >= 0.0 and images.max() < 1.0
        nchw = images if layout == "NCHW" else images.transpose(0, 3, 1, 2)
        left, right = nchw[..., :-1].ravel(), nchw[..., 1:].ravel()
        assert np.corrcoef(left, right)[0, 1] > 0.8
    assert fidelity.image_layout([4, 64]) is None and fidelity.image_layout([4, 8, 64, 64]) is None
