"""Distillation of a pruned fully connected chain (onnxcomp/core/distillation.py, passes/distill_weights.py)."""

import logging

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxcomp.core import distillation
from onnxcomp.errors import InvalidOptionError
from onnxcomp.passes import distill_weights
from onnxcomp.passes.distill_weights import recognise_chain
from onnxcomp.pipeline.compression import compress

from conftest import float_input, make_model, run_compressed, run_plain, weight


def chain_model(rng, sizes=(24, 32, 16, 5), matmul_last=True) -> onnx.ModelProto:
    """Gemm + Relu layers, the last a MatMul followed by a bias Add (both forms of a layer), input [N, 4, 6] flattened."""
    nodes = [helper.make_node("Flatten", ["x"], ["flat"], axis=1, name="flatten")]
    inits, current = [], "flat"
    for index, (inputs, outputs) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = index == len(sizes) - 2
        w, b, out = f"w{index}", f"b{index}", f"z{index}"
        inits.append(numpy_helper.from_array(rng.standard_normal(outputs).astype(np.float32) * 0.1, b))
        if last and matmul_last:
            inits.append(weight(rng, w, (inputs, outputs), scale=inputs ** -0.5))
            nodes += [helper.make_node("MatMul", [current, w], ["mm"], name="matmul"),
                      helper.make_node("Add", ["mm", b], ["y"], name="add")]
            break
        inits.append(weight(rng, w, (outputs, inputs), scale=inputs ** -0.5))
        nodes.append(helper.make_node("Gemm", [current, w, b], ["y" if last else out], transB=1, name=f"gemm{index}"))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"h{index}"], name=f"relu{index}"))
            current = f"h{index}"
    return make_model(nodes, [float_input("x", ["N", 4, 6])], [float_input("y", ["N", sizes[-1]])], inits)


def layers_of(rng, sizes=(6, 5, 4, 3)):
    return [distillation.DenseLayer(rng.standard_normal((o, i)), rng.standard_normal(o), k < len(sizes) - 2)
            for k, (i, o) in enumerate(zip(sizes[:-1], sizes[1:]))]


def test_backward_pass_matches_finite_differences(rng):
    layers = layers_of(rng)
    x, target = rng.standard_normal((7, 6)), rng.standard_normal((7, 3))
    _, grads = distillation.gradients(layers, x, target)
    step = 1e-6
    for layer, (weight_grad, bias_grad) in zip(layers, grads):
        for array, grad in ((layer.weight, weight_grad), (layer.bias, bias_grad)):
            numeric = np.zeros_like(array)
            for index in np.ndindex(array.shape):
                saved = array[index]
                array[index] = saved + step
                up = distillation.error(layers, x, target)
                array[index] = saved - step
                down = distillation.error(layers, x, target)
                array[index] = saved
                numeric[index] = (up - down) / (2 * step)
            np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


def test_fit_keeps_pruned_weights_at_zero_and_lowers_the_error_on_unseen_samples(rng):
    teacher = layers_of(rng, (20, 24, 12, 4))
    x = rng.standard_normal((900, 20))
    target = distillation.output(teacher, x)
    student = []
    for layer in teacher:  # magnitude pruning to 70 %
        keep = np.abs(layer.weight) >= np.quantile(np.abs(layer.weight), 0.7)
        student.append(distillation.DenseLayer(layer.weight * keep, layer.bias.copy(), layer.relu, keep))
    result = distillation.fit(student, x[:400], target[:400], x[400:600], target[400:600], dtype=np.float64)
    assert 0 < result.best_step <= result.steps and result.best_error < 0.8 * result.start_error
    for before, after in zip(student, result.layers):
        assert np.all(after.weight[~before.weight_mask] == 0)
    unseen = distillation.error(student, x[600:], target[600:])
    assert distillation.error(result.layers, x[600:], target[600:]) < 0.8 * unseen


@pytest.mark.parametrize("variant", ["conv", "branch", "softmax", "shared", "no_output", "cycle"])
def test_graphs_that_are_not_a_chain_are_refused(rng, variant):
    """A reason, never an exception or a hang, also for malformed graphs (a node writing nothing, a cycle), which
    onnx's checker would refuse: built here without it."""
    if variant in ("no_output", "cycle"):
        tail = ([helper.make_node("Relu", ["a"], [], name="r")] if variant == "no_output" else
                [helper.make_node("Identity", ["a"], ["b"], name="i0"), helper.make_node("Identity", ["b"], ["a"], name="i1")])
        graph = helper.make_graph([helper.make_node("Gemm", ["x", "w0"], ["a"], transB=1, name="g0"), *tail], "t",
                                  [float_input("x", ["N", 4])], [float_input("y", ["N", 3])], [weight(rng, "w0", (3, 4))])
        model = helper.make_model(graph)
    elif variant == "conv":
        model = make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], [float_input("x", [1, 2, 5, 5])],
                           [float_input("y", [1, 3, 3, 3])], [weight(rng, "w", (3, 2, 3, 3))])
    elif variant == "branch":
        model = make_model([helper.make_node("Gemm", ["x", "w0"], ["a"], transB=1, name="g0"),
                            helper.make_node("Gemm", ["x", "w1"], ["b"], transB=1, name="g1"),
                            helper.make_node("Add", ["a", "b"], ["y"], name="add")],
                           [float_input("x", ["N", 4])], [float_input("y", ["N", 3])],
                           [weight(rng, "w0", (3, 4)), weight(rng, "w1", (3, 4))])
    elif variant == "softmax":
        model = make_model([helper.make_node("Gemm", ["x", "w0"], ["a"], transB=1, name="g0"),
                            helper.make_node("Softmax", ["a"], ["y"], axis=1, name="softmax")],
                           [float_input("x", ["N", 4])], [float_input("y", ["N", 3])], [weight(rng, "w0", (3, 4))])
    else:
        model = make_model([helper.make_node("Gemm", ["x", "w0"], ["a"], transB=1, name="g0"),
                            helper.make_node("Gemm", ["a", "w0"], ["y"], transB=1, name="g1")],
                           [float_input("x", ["N", 3])], [float_input("y", ["N", 3])], [weight(rng, "w0", (3, 3))])
    assert isinstance(recognise_chain(model), str)
    assert not isinstance(recognise_chain(chain_model(rng)), str)


def _compress(tmp_path, name, model, data, **options):
    source = tmp_path / "in.onnx"
    onnx.save(model, source)
    (tmp_path / name).mkdir()
    out = tmp_path / name / "out.onnx"  # the model names its sidecar: the same name in each folder
    report = compress(str(source), str(out), calib=data, prune="activation", score="obs", sequential=True, fidelity=False,
                      min_elements=1, settings={n: {"sparsity": 0.7, "bits": 3} for n in ("w0", "w1", "w2")}, **options)
    return out, report


def test_a_refused_graph_compresses_as_without_distillation_and_says_so_once(tmp_path, rng, caplog):
    """On by default (``--sequential``), a refusal is an info line; asked for (``--distill``), one warning per process.
    Either way the bytes are those of ``--no-distill``."""
    # a branch: the second layer's output is added to a side layer's
    model = make_model([helper.make_node("Gemm", ["x", "w0"], ["a"], transB=1, name="g0"),
                        helper.make_node("Relu", ["a"], ["h"], name="r0"),
                        helper.make_node("Gemm", ["h", "w1"], ["b"], transB=1, name="g1"),
                        helper.make_node("Gemm", ["x", "w2"], ["c"], transB=1, name="g2"),
                        helper.make_node("Add", ["b", "c"], ["y"], name="add")],
                       [float_input("x", ["N", 4])], [float_input("y", ["N", 16])],
                       [weight(rng, "w0", (16, 4)), weight(rng, "w1", (16, 16)), weight(rng, "w2", (16, 4))])
    data = {"x": rng.standard_normal((64, 4)).astype(np.float32)}
    distill_weights._SAID.clear()
    with caplog.at_level(logging.INFO, logger="onnxcomp"):
        default, _ = _compress(tmp_path, "default", model, data)
        said = [r for r in caplog.records if "distillation skipped" in r.getMessage()]
        assert said and all(r.levelno == logging.INFO for r in said)
        caplog.clear()
        on, _ = _compress(tmp_path, "on", model, data, distill=True)
        on_again, _ = _compress(tmp_path, "on_again", model, data, distill=True)
    off, _ = _compress(tmp_path, "off", model, data, distill=False)
    said = [r for r in caplog.records if r.levelno == logging.WARNING and "distillation skipped" in r.getMessage()]
    assert len(said) == 1 and "read by 2 nodes" in said[0].getMessage()
    for path in (default, on, on_again):
        assert path.read_bytes() == off.read_bytes()
        assert path.with_suffix(".onnxcomp").read_bytes() == off.with_suffix(".onnxcomp").read_bytes()


def test_distilled_chain_runs_in_onnxruntime_closer_to_the_original_and_reruns_byte_identical(tmp_path, rng):
    model = chain_model(rng)
    data = {"x": rng.standard_normal((600, 4, 6)).astype(np.float32)}
    unseen = {"x": rng.standard_normal((300, 4, 6)).astype(np.float32)}
    expected = run_plain(model, unseen)[0]
    outputs = {}
    for name, distill in (("off", False), ("on", None), ("again", True)):
        path, report = _compress(tmp_path, name, model, data, distill=distill)
        assert {layer.name for layer in report.layers} >= {"w0", "w1", "w2"}
        outputs[name] = (path, run_compressed(path, unseen)[0])
    errors = {name: float(np.mean(np.sum((out - expected) ** 2, axis=1))) for name, (_, out) in outputs.items()}
    assert errors["on"] < 0.9 * errors["off"]  # distillation lowers the output error on samples it never saw
    on, again = outputs["on"][0], outputs["again"][0]
    assert on.read_bytes() == again.read_bytes()  # deterministic: same input and options, same bytes
    assert on.with_suffix(".onnxcomp").read_bytes() == again.with_suffix(".onnxcomp").read_bytes()
    assert on.with_suffix(".onnxcomp").read_bytes() != outputs["off"][0].with_suffix(".onnxcomp").read_bytes()


def test_distill_needs_the_sequential_mode(tmp_path, rng):
    source = tmp_path / "in.onnx"
    onnx.save(chain_model(rng), source)
    with pytest.raises(InvalidOptionError, match="--sequential"):
        compress(str(source), str(tmp_path / "out.onnx"), calib={"x": rng.standard_normal((32, 4, 6)).astype(np.float32)},
                 distill=True, fidelity=False)


def test_fit_leaves_out_input_columns_that_cannot_matter_and_fits_as_on_all_of_them(rng):
    """fit skips the first layer's input columns that are zero in every sample or read by no kept weight: the result
    is Adam's on the whole chain (the plain loop below) to rounding, and those columns' weights are as they started."""
    teacher = layers_of(rng, (20, 24, 12, 4))
    x = rng.standard_normal((600, 20))
    x[:, [2, 7]] = 0
    target = distillation.output(teacher, x)
    student = []
    for layer in teacher:
        keep = np.abs(layer.weight) >= np.quantile(np.abs(layer.weight), 0.7)
        student.append(distillation.DenseLayer(layer.weight * keep, layer.bias.copy(), layer.relu, keep))
    student[0].weight_mask[:, 11] = False
    student[0].weight = student[0].weight * student[0].weight_mask
    result = distillation.fit(student, x[:400], target[:400], x[400:], target[400:], max_steps=200, dtype=np.float64)
    plain = [distillation.DenseLayer(layer.weight.copy(), layer.bias.copy(), layer.relu) for layer in student]
    params = [p for layer in plain for p in (layer.weight, layer.bias)]
    masks = [m for layer in student for m in (layer.weight_mask.astype(np.float64), None)]
    kept, steps, best_step, _, best = distillation.adam(
        params, masks, lambda: [g for pair in distillation.gradients(plain, x[:400], target[:400])[1] for g in pair],
        lambda: distillation.error(plain, x[400:], target[400:]), learning_rate=distillation.LEARNING_RATE,
        max_steps=200, patience=distillation.PATIENCE)
    assert (result.steps, result.best_step) == (steps, best_step) and best_step > 0
    assert result.best_error == pytest.approx(best, rel=1e-9)
    for layer, weight in zip(result.layers, kept[0::2]):
        np.testing.assert_allclose(layer.weight, weight, rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(result.layers[0].weight[:, [2, 7, 11]], student[0].weight[:, [2, 7, 11]])
