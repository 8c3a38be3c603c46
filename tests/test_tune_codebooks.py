"""Fine-tuning the shared codebooks of a distilled chain (onnxcomp/core/distillation.py ``fit_shared``,
passes/tune_codebooks.py)."""

import numpy as np
import onnx
import pytest

from onnxcomp.core import distillation, sidecar
from onnxcomp.passes.base import PassResult
from onnxcomp.passes.tune_codebooks import TuneCodebooksPass
from onnxcomp.pipeline.compression import compress, decoded_weights

from conftest import run_compressed, run_plain
from test_distillation import chain_model, layers_of


def shared_of(rng, shape, entries=5, scaled=False):
    """A seeded codebook lookup of ``shape``: entry 0 the pruned +0.0 (fixed), two outliers, optional scales."""
    codebook = np.concatenate([[0.0], rng.standard_normal(entries - 1)])
    indices = rng.integers(0, entries, size=shape)
    positions = rng.choice(int(np.prod(shape)), size=2, replace=False)
    scales = rng.uniform(0.5, 2.0, size=shape) if scaled else None
    fixed = np.arange(entries) == 0
    return distillation.SharedValues(codebook, indices, positions, rng.standard_normal(2), scales, fixed)


def test_codebook_gradient_matches_finite_differences(rng):
    """dE/dcodebook and dE/doutliers (the chain rule through the lookup) against central differences of E, for a
    scaled weight, an unscaled one and a coded bias."""
    layers = layers_of(rng)
    coded = [(0, "weight", shared_of(rng, layers[0].weight.shape, scaled=True)),
             (1, "weight", shared_of(rng, layers[1].weight.shape)),
             (2, "bias", shared_of(rng, layers[2].bias.shape, entries=3))]
    x, target = rng.standard_normal((9, 6)), rng.standard_normal((9, 3))

    def energy() -> float:
        for index, slot, shared in coded:
            setattr(layers[index], slot, shared.decoded(np.float64))
        return distillation.error(layers, x, target)

    energy()
    _, grads = distillation.gradients(layers, x, target)
    step = 1e-6
    for index, slot, shared in coded:
        grad_codebook, grad_values = shared.gradients(grads[index][0 if slot == "weight" else 1])
        for array, analytic in ((shared.codebook, grad_codebook), (shared.values, grad_values)):
            numeric = np.zeros_like(array)
            for k in range(len(array)):
                saved = array[k]
                array[k] = saved + step
                up = energy()
                array[k] = saved - step
                down = energy()
                array[k] = saved
                numeric[k] = (up - down) / (2 * step)
            np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)
        energy()


def test_fit_shared_moves_only_the_free_entries_and_lowers_the_error_on_unseen_samples(rng):
    teacher = layers_of(rng, (20, 24, 12, 4))
    x = rng.standard_normal((900, 20))
    target = distillation.output(teacher, x)
    weights = []
    for layer in teacher:  # 8-entry codebooks from the weights' quantiles, 0 the pruned entry
        codebook = np.concatenate([[0.0], np.quantile(layer.weight, np.linspace(0.05, 0.95, 7))])
        indices = np.abs(layer.weight[..., None] - codebook).argmin(axis=-1)
        weights.append(distillation.SharedValues(codebook, indices, np.zeros(0, np.int64), np.zeros(0),
                                                 fixed=np.arange(8) == 0))
    biases = [None] * len(teacher)
    start = [distillation.DenseLayer(w.decoded(np.float64), layer.bias.copy(), layer.relu) for w, layer in zip(weights, teacher)]
    result = distillation.fit_shared(start, weights, biases, x[:400], target[:400], x[400:600], target[400:600],
                                     dtype=np.float64)
    assert 0 < result.best_step <= result.steps and result.best_error < 0.8 * result.start_error
    tuned = []
    for before, after, bias, layer in zip(weights, result.weights, result.biases, teacher):
        assert after.indices is before.indices and after.codebook[0] == 0 and not np.array_equal(after.codebook, before.codebook)
        tuned.append(distillation.DenseLayer(after.decoded(np.float64), bias, layer.relu))
    unseen = distillation.error(start, x[600:], target[600:])
    assert distillation.error(tuned, x[600:], target[600:]) < 0.8 * unseen


def _compress(tmp_path, name, model, data):
    source = tmp_path / "in.onnx"
    onnx.save(model, source)
    (tmp_path / name).mkdir()
    out = tmp_path / name / "out.onnx"  # the model names its sidecar: the same name in each folder
    compress(str(source), str(out), calib=data, prune="activation", score="obs", sequential=True, fidelity=False,
             min_elements=1, settings={n: {"sparsity": 0.7, "bits": 3} for n in ("w0", "w1", "w2")})
    return out


def _records(path) -> dict[str, sidecar.Record]:
    data = path.with_suffix(".onnxcomp").read_bytes()
    return {entry.name: sidecar.decode_record(data[entry.offset:entry.offset + entry.length])
            for entry in sidecar.read_directory(str(path.with_suffix(".onnxcomp")))}


def test_tuned_chain_runs_in_onnxruntime_closer_to_the_original_with_the_same_indices(tmp_path, rng, monkeypatch):
    """Through onnxruntime with the custom ops: tuning lowers the output error on samples no fit saw; the records
    keep their indices, outlier positions and pruned zeros; the numpy chain of the written weights computes what
    onnxruntime runs; a rerun writes the same bytes."""
    model = chain_model(rng)
    data = {"x": rng.standard_normal((600, 4, 6)).astype(np.float32)}
    unseen = {"x": rng.standard_normal((300, 4, 6)).astype(np.float32)}
    expected = run_plain(model, unseen)[0]
    tuned = _compress(tmp_path, "tuned", model, data)
    again = _compress(tmp_path, "again", model, data)
    with monkeypatch.context() as patch:
        patch.setattr(TuneCodebooksPass, "run", lambda self, state: PassResult(False, "off"))
        untuned = _compress(tmp_path, "untuned", model, data)
    outputs = {name: run_compressed(path, unseen)[0] for name, path in (("tuned", tuned), ("untuned", untuned))}
    errors = {name: float(np.mean(np.sum((out - expected) ** 2, axis=1))) for name, out in outputs.items()}
    assert errors["tuned"] < 0.95 * errors["untuned"]  # (0.926x when written)
    assert tuned.read_bytes() == again.read_bytes()
    assert tuned.with_suffix(".onnxcomp").read_bytes() == again.with_suffix(".onnxcomp").read_bytes()
    after, before = _records(tuned), _records(untuned)
    assert set(after) == set(before) >= {"w0", "w1", "w2"}
    for name, record in after.items():
        old = before[name]
        np.testing.assert_array_equal(record.indices, old.indices)
        np.testing.assert_array_equal(record.outlier_positions, old.outlier_positions)
        np.testing.assert_array_equal(record.to_dense() == 0, old.to_dense() == 0)
        assert (record.codebook[0] == 0) == (old.codebook[0] == 0)
    assert any(not np.array_equal(after[n].codebook, before[n].codebook) for n in after)
    # the written weights (records decoded, in their original orientation; float initializers as stored, a binary16
    # one widened) through numpy
    values = {t.name.removesuffix("__float16"): onnx.numpy_helper.to_array(t).astype(np.float64)
              for t in onnx.load(str(tuned)).graph.initializer}
    values.update({name: v.astype(np.float64) for name, v in decoded_weights(str(tuned.with_suffix(".onnxcomp"))).items()})
    layers = [distillation.DenseLayer(values["w0"], values["b0"], True), distillation.DenseLayer(values["w1"], values["b1"], True),
              distillation.DenseLayer(values["w2"].T, values["b2"], False)]  # MatMul's weight is [inputs, outputs]
    numpy_chain = distillation.output(layers, unseen["x"].reshape(300, -1).astype(np.float64))
    np.testing.assert_allclose(numpy_chain, outputs["tuned"], rtol=1e-4, atol=1e-4)


def test_lookup_products_give_the_decoded_weights_product_and_gradients(rng):
    """LookupProducts (the first layer's product by codebook entry, computed once) against the decoded weight: the
    product x W^T and the codebook and outlier gradients of SharedValues.gradients, scaled and unscaled."""
    x = rng.standard_normal((40, 12))
    x[:, 3] = 0
    for scaled in (False, True):
        shared = shared_of(rng, (7, 12), entries=6, scaled=scaled)
        shared.positions = np.array([5, 30, 31, 77])  # two outliers in one row: summed together
        shared.values = rng.standard_normal(4)
        lookup = distillation.LookupProducts(shared, x, np.float64)
        np.testing.assert_allclose(lookup.product(shared.codebook, shared.values), x @ shared.decoded(np.float64).T,
                                   rtol=1e-12, atol=1e-12)
        delta = rng.standard_normal((40, 7))
        (codebook, values), (want_codebook, want_values) = lookup.gradients(delta), shared.gradients(delta.T @ x)
        assert codebook[0] == 0  # the fixed +0.0 entry has no product and no gradient (it never moves)
        np.testing.assert_allclose(codebook[1:], want_codebook[1:], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(values, want_values, rtol=1e-10, atol=1e-12)


def test_fit_shared_by_lookup_products_follows_the_decoded_path(rng, monkeypatch):
    """fit_shared with the first layer's products by entry (the default) and without them (LOOKUP_BYTES 0: every
    step decodes the weight and multiplies by it) run the same fit: the same steps and step kept, codebooks and
    outlier values equal to rounding (float64)."""
    teacher = layers_of(rng, (20, 24, 12, 4))
    x = rng.standard_normal((700, 20))
    target = distillation.output(teacher, x)
    weights = [shared_of(rng, layer.weight.shape, entries=6, scaled=index == 0) for index, layer in enumerate(teacher)]
    start = [distillation.DenseLayer(w.decoded(np.float64), layer.bias.copy(), layer.relu)
             for w, layer in zip(weights, teacher)]

    def run():
        return distillation.fit_shared(start, weights, [None] * 3, x[:400], target[:400], x[400:600], target[400:600],
                                       max_steps=300, dtype=np.float64)
    by_entry = run()
    monkeypatch.setattr(distillation, "LOOKUP_BYTES", 0)
    decoded = run()
    assert (by_entry.steps, by_entry.best_step) == (decoded.steps, decoded.best_step) and by_entry.best_step > 0
    assert by_entry.best_error == pytest.approx(decoded.best_error, rel=1e-9)
    for a, b in zip(by_entry.weights, decoded.weights):
        np.testing.assert_allclose(a.codebook, b.codebook, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(a.values, b.values, rtol=1e-8, atol=1e-10)
