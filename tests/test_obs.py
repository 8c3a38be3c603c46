"""OBS pruning and OBS rounding (onnxcomp/core/obs.py) against closed-form numpy references, and end to end."""

import numpy as np
import onnx
import pytest

import onnxcomp
from onnxcomp.core import codebook, obs, reconstruction

from conftest import run_plain
from test_calibration import two_layer_model


def correlated_gram(rng, n=10, samples=300):
    x = rng.standard_normal((samples, n)) @ rng.standard_normal((n, n))
    return x.T @ x


def test_saliency_is_w_squared_over_the_inverse_diagonal(rng):
    gram = correlated_gram(rng)
    w = rng.standard_normal((3, 10))
    damped = gram + 0.01 * np.mean(np.diag(gram)) * np.eye(10)
    expected = w ** 2 / np.diag(np.linalg.inv(damped))[None, :]
    assert np.allclose(obs.saliency(w, gram), expected)


def test_pruning_one_weight_gives_the_least_squares_update_of_the_later_inputs(rng):
    gram = correlated_gram(rng, n=6)
    w = rng.standard_normal((1, 6))
    keep, rows = obs.prune(w, gram, sparsity=1 / 6, damp=0.0)
    (j,) = np.flatnonzero(~keep[0])
    # Columns before j are fixed; the later ones S solve min (v - w)^T H (v - w) with v_j = 0:
    # v_S = w_S + H_SS^-1 H_Sj w_j.
    later = np.arange(j + 1, 6)
    expected = w[0].copy()
    expected[j] = 0.0
    expected[later] += np.linalg.solve(gram[np.ix_(later, later)], gram[later, j] * w[0, j])
    assert np.allclose(rows[0], expected, rtol=1e-4, atol=1e-5)


def test_pruning_meets_the_sparsity_and_beats_plain_zeroing(rng):
    gram = correlated_gram(rng, n=40, samples=400)
    w = rng.standard_normal((12, 40))
    keep, rows = obs.prune(w, gram, sparsity=0.75, block=16)
    assert keep.sum() == pytest.approx(0.25 * w.size, abs=3)
    assert np.all(rows[~keep] == 0)
    plain = reconstruction.row_errors(np.where(keep, w, 0.0), w, gram).sum()
    assert reconstruction.row_errors(rows.astype(np.float64), w, gram).sum() < 0.9 * plain


def test_dead_inputs_are_pruned_first(rng):
    x = rng.standard_normal((100, 8))
    x[:, [2, 5]] = 0.0  # two inputs that never carry a signal
    keep, _ = obs.prune(rng.standard_normal((4, 8)), x.T @ x, sparsity=0.25)
    assert not keep[:, [2, 5]].any() and keep.sum() == 24


def test_rounding_with_uncorrelated_inputs_is_nearest_rounding(rng):
    w = rng.standard_normal((5, 20))
    book = np.sort(rng.standard_normal(8)).astype(np.float32)
    gram = np.diag(rng.uniform(0.5, 2.0, 20))  # diagonal H: no error can be compensated elsewhere
    assert np.array_equal(obs.round_to_codebook(w, None, book, gram), codebook.assign(w, book).reshape(w.shape))


def test_rounding_keeps_pruned_weights_at_zero_and_lowers_the_error(rng):
    gram = correlated_gram(rng, n=30, samples=400)
    w = rng.standard_normal((10, 30))
    keep = rng.random((10, 30)) > 0.4
    book, nearest = codebook.quantize(w, keep, bits=3)
    nearest = nearest.reshape(w.shape)
    book = book[np.r_[0, 1 + rng.permutation(len(book) - 1)]]  # unsorted entries (as after a refit) must work too
    nearest = codebook.assign(w, np.sort(book[1:])).reshape(w.shape)
    nearest = np.where(keep, np.argsort(book[1:])[nearest] + 1, 0)
    compensated = obs.round_to_codebook(w, keep, book, gram)
    assert np.array_equal(compensated == 0, ~keep)
    error = lambda idx: reconstruction.row_errors(book[idx].astype(np.float64), w, gram).sum()  # noqa: E731
    assert error(compensated) < error(nearest)


def test_obs_pruning_and_rounding_end_to_end(tmp_path, rng):
    model = two_layer_model(rng)
    onnx.save(model, tmp_path / "in.onnx")
    data = tmp_path / "calib.npz"
    x = rng.standard_normal((64, 12)).astype(np.float32)
    np.savez(data, x=x)
    outputs = {}
    for rounding in ("obs", "nearest"):
        report = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / f"{rounding}.onnx", prune="activation", score="obs",
                                   calib=str(data), sparsity=0.5, bits=3, min_elements=16, rounding=rounding)
        assert [round(layer.sparsity, 2) for layer in report.layers] == [0.5, 0.5]
        outputs[rounding] = onnxcomp.InferenceSession(tmp_path / f"{rounding}.onnx").run(None, {"x": x})[0]
    reference = run_plain(model, {"x": x})[0]
    errors = {k: np.linalg.norm(v - reference) for k, v in outputs.items()}
    assert errors["obs"] <= errors["nearest"] * 1.05, errors


def test_sensitivity_threshold_ranks_the_one_shot_saliency(rng):
    from onnxcomp.passes import CompressionState, PruneWeightsPass
    from onnxcomp.passes.base import WeightTarget
    from onnxcomp.passes.calibration import LayerInput, LayerStatistics
    import onnx_graphsurgeon as gs
    w = rng.standard_normal((6, 10)).astype(np.float32)
    gram = correlated_gram(rng)
    stats = LayerStatistics(features=10)
    stats.gram = gram
    target = WeightTarget("w", gs.Constant("w", w), "fc", [], layer_input=LayerInput("x", "nk"), statistics=stats)
    PruneWeightsPass(method="activation", score="obs", threshold="sensitivity", sensitivity=0.5)(CompressionState(None, [target]))
    saliency = obs.saliency(w, gram)
    assert np.array_equal(target.keep, saliency >= 0.5 * saliency.std())


def test_act_order_rounds_the_high_energy_inputs_first_and_lowers_the_layer_error(rng):
    # inputs whose energies grow along the columns: in their own order the rounding fixes the weak inputs first
    # and the strong ones last, with no column left to compensate them; act-order (obs.rounding_order) reverses it
    x = rng.standard_normal((400, 48)) @ (np.eye(48) + 0.3 * rng.standard_normal((48, 48)))
    x *= np.geomspace(0.05, 5.0, 48)
    gram = x.T @ x
    w = rng.standard_normal((16, 48))
    book, _ = codebook.quantize(w, None, bits=3)
    order = obs.rounding_order(np.diag(gram))
    assert list(order[:3]) == list(np.argsort(-np.diag(gram))[:3])
    error = lambda idx: reconstruction.row_errors(book[idx].astype(np.float64), w, gram).sum()  # noqa: E731
    natural, ordered = obs.round_to_codebook(w, None, book, gram), obs.round_to_codebook(w, None, book, gram, order=order)
    assert error(ordered) < 0.8 * error(natural)


def test_rounding_in_an_order_is_rounding_the_permuted_columns(rng):
    gram = correlated_gram(rng, n=24, samples=300)
    gram[5, :] = gram[:, 5] = 0.0  # a dead input: last in the order
    w = rng.standard_normal((6, 24))
    keep = rng.random((6, 24)) > 0.3
    exact = (rng.random((6, 24)) > 0.9) & keep
    book, _ = codebook.quantize(w, keep, bits=3)
    order = obs.rounding_order(np.diag(gram))
    assert order[-1] == 5 and sorted(order) == list(range(24))
    back = np.argsort(order)
    factor = obs._inverse_factor(gram, 0.01, order)
    indices, values = obs.round_to_codebook(w, keep, book, None, exact=exact, factor=factor, order=order)
    permuted_indices, permuted_values = obs.round_to_codebook(w[:, order], keep[:, order], book, gram[np.ix_(order, order)],
                                                              exact=exact[:, order])
    assert np.array_equal(indices, permuted_indices[:, back]) and np.array_equal(values, permuted_values[:, back])
    assert np.array_equal(indices == 0, ~keep)
    # the outliers' sparse values come in the row-major order of ``exact``, as without an order
    _, sparse = obs.round_to_codebook(w, keep, book, None, exact=exact, factor=factor, order=order, dense_values=False)
    assert np.array_equal(sparse, values[exact])
    # the identity order is no order
    identity = np.arange(24)
    assert np.array_equal(obs.round_to_codebook(w, keep, book, gram, order=identity), obs.round_to_codebook(w, keep, book, gram))


def test_the_ordered_layer_factor_is_the_factor_of_the_permuted_gram_in_every_form(rng):
    from onnxcomp.passes import calibration
    x = rng.standard_normal((30, 60)) * np.geomspace(0.1, 10.0, 60)
    x[:, 7] = 0.0  # a dead input
    gram = x.T @ x
    order = obs.rounding_order(np.diag(gram))
    expected, dead = obs._inverse_factor(gram[np.ix_(order, order)], 0.01)
    stats = calibration.LayerStatistics(60)
    stats.gram = gram
    u, mask, got = obs.layer_factor(stats, ordered=True)
    assert np.array_equal(got, order) and np.array_equal(mask, dead) and mask[-1]
    np.testing.assert_allclose(u, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())
    for kwargs in ({"gram": gram.astype(np.float32)}, {"activations": x.astype(np.float32)}):
        single, mask = obs.inverse_factor_in_place(damp=0.01, order=order, **kwargs)
        assert single.dtype == np.float32 and np.array_equal(mask, dead)
        np.testing.assert_allclose(single, expected, atol=1e-4 * np.abs(expected).max())
    stats.factor_cache = {}  # cached apart from the unordered factor (OBS pruning's)
    assert len(obs.layer_factor(stats)) == 2 and len(obs.layer_factor(stats, ordered=True)) == 3 and len(stats.factor_cache) == 2


def test_act_order_is_off_by_default_and_unpruned_takes_only_weights_nothing_is_pruned_from(monkeypatch):
    assert obs.ACT_ORDER is False and not obs.act_order_for(None)
    monkeypatch.setattr(obs, "ACT_ORDER", "unpruned")
    assert obs.act_order_for(None) and obs.act_order_for(np.ones((2, 3), bool))
    assert not obs.act_order_for(np.array([[True, False, True]]))
    monkeypatch.setattr(obs, "ACT_ORDER", True)
    assert obs.act_order_for(np.array([[True, False, True]]))
