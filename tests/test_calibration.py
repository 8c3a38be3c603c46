"""Calibration statistics, activation-aware scores and reconstruction against independent numpy references."""

import numpy as np
import onnx
import pytest
from onnx import helper

import onnxcomp
from onnxcomp.passes import calibration
from onnxcomp.core import pruning, reconstruction
from onnxcomp.errors import CalibrationError
from onnxcomp.pipeline.evaluate import load_calibration

from conftest import float_input, make_model, weight


def two_layer_model(rng):
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1)]
    return make_model(nodes, [float_input("x", ["n", 12])], [float_input("y", ["n", 5])],
                      [weight(rng, "w1", (12, 20)), weight(rng, "w2", (5, 20))])


def test_statistics_match_a_direct_computation(rng):
    model = two_layer_model(rng)
    x = rng.standard_normal((37, 12)).astype(np.float32)
    layers = {"w1": calibration.LayerInput("x", "kn"), "w2": calibration.LayerInput("r", "nk")}
    stats = calibration.collect(model, layers, {"x": x}, batch=8, threshold=0.1)
    w1 = onnx.numpy_helper.to_array(model.graph.initializer[0])
    r = np.maximum(x @ w1, 0)
    for name, acts in (("w1", x), ("w2", r)):
        acts = acts.astype(np.float64)
        s = stats[name]
        assert s.rows == 37 and s.samples == 37
        np.testing.assert_allclose(s.norms, np.linalg.norm(acts, axis=0), rtol=1e-5)
        np.testing.assert_allclose(s.gram, acts.T @ acts, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(s.fire_rows, (acts > 0.1).sum(axis=0))
        np.testing.assert_allclose(s.sum_abs, np.abs(acts).sum(axis=0), rtol=1e-5)


def test_im2col_matches_a_naive_loop(rng):
    x = rng.standard_normal((2, 3, 7, 6))
    spec = calibration.LayerInput("x", "conv", (3, 2), (2, 1), (1, 0, 1, 1), (1, 2))
    rows = calibration.im2col(x, spec)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 1)))
    expected = []
    for b in range(2):
        for i in range(0, padded.shape[2] - 3 + 1, 2):
            for j in range(0, padded.shape[3] - (1 * 2 + 1) + 1, 1):
                expected.append(padded[b, :, i:i + 3, j:j + 3:2].ravel())
    np.testing.assert_array_equal(rows, np.array(expected))


def test_conv_statistics_make_the_layer_a_matmul(rng):
    # W reshaped to [O, C*kh*kw] times the im2col rows must reproduce the convolution: the features line up.
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2])]
    model = make_model(nodes, [float_input("x", [2, 3, 8, 8])], [float_input("y", [2, 4, 4, 4])], [weight(rng, "w", (4, 3, 3, 3))])
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    spec = calibration.LayerInput("x", "conv", (3, 3), (2, 2), (1, 1, 1, 1), (1, 1))
    w = onnx.numpy_helper.to_array(model.graph.initializer[0])
    from conftest import run_plain
    y = run_plain(model, {"x": x})[0]
    rows = calibration.im2col(x, spec)
    np.testing.assert_allclose(rows @ calibration.to_rows(w, "conv").T, y.transpose(0, 2, 3, 1).reshape(-1, 4), rtol=1e-4, atol=1e-5)


def test_scores_match_their_formulas(rng):
    stats = calibration.LayerStatistics(6)
    acts = np.maximum(rng.standard_normal((40, 6)), 0)
    stats.add(acts, samples=40, threshold=0.0)
    w = rng.standard_normal((3, 6))
    for i in range(3):
        for j in range(6):
            assert pruning.wanda_score(w, stats)[i, j] == pytest.approx(abs(w[i, j]) * np.sqrt((acts[:, j] ** 2).sum()))
    params = pruning.TfidfParameters(power=2.0, smoothing=0.5, constant=0.3, exponent=1.5)
    got = pruning.tfidf_score(w, stats, params)
    for j in range(6):
        fires = (acts[:, j] > 0).sum()
        tf = (fires + 0.5) / (40 + 0.5) * np.abs(acts[:, j]).mean()
        idf = np.log((40 + 0.5) / (fires + 0.5)) + 0.3
        for i in range(3):
            assert got[i, j] == pytest.approx(abs(w[i, j]) ** 2 * (tf * idf) ** 1.5)


def test_row_and_sensitivity_masks(rng):
    scores = rng.random((4, 10))
    keep = pruning.row_keep_mask(scores, 0.3)
    assert (keep.sum(axis=1) == 7).all()
    keep = pruning.sensitivity_keep_mask(scores, 2.0)
    assert np.array_equal(keep, scores >= 2.0 * scores.std())


def test_reconstruction_never_increases_the_layer_error(rng):
    x = rng.standard_normal((200, 12)) @ rng.standard_normal((12, 30))  # correlated inputs, as in real layers
    gram = x.T @ x
    w = rng.standard_normal((8, 30))
    keep = pruning.row_keep_mask(np.abs(w), 0.6)
    pruned = np.where(keep, w, 0)
    refit = reconstruction.refit_rows(w, keep, gram, ridge=1e-3)
    assert np.array_equal(refit == 0, ~keep)
    before = reconstruction.row_errors(pruned, w, gram)
    after = reconstruction.row_errors(refit.astype(np.float64), w, gram)
    assert (after <= before + 1e-6).all() and after.sum() < 0.8 * before.sum()
    codebook = np.array([0.0, -1.0, -0.3, 0.3, 1.0], np.float32)
    indices = np.where(keep, 1 + np.abs(refit[..., None] - codebook[1:]).argmin(-1), 0)
    refined = reconstruction.refit_codebook(w, indices, codebook, gram, pruned_zero=True)
    assert refined[0] == 0.0
    error = lambda c: reconstruction.row_errors(c[indices].astype(np.float64), w, gram).sum()  # noqa: E731
    assert error(refined) <= error(codebook)


def _refit_rows_by_scipy_solve(original, keep, gram, ridge):
    """The straightforward refit refit_rows replaced: scipy.linalg.solve(assume_a="pos") per row, the same
    keep-only-if-better rule."""
    from scipy import linalg
    original = original.astype(np.float64)
    lam = ridge * float(np.mean(np.diag(gram))) + 1e-12
    refit = np.where(keep, original, 0.0)
    candidates = refit.copy()
    for i in range(len(original)):
        support = np.flatnonzero(keep[i])
        if 0 < len(support) < keep.shape[1]:
            system = gram[np.ix_(support, support)]
            system[np.diag_indices_from(system)] += lam  # in the Gram matrix's dtype, as refit_rows adds it
            candidates[i] = 0.0
            candidates[i, support] = linalg.solve(system, (gram @ original.T)[support, i], assume_a="pos")
    better = reconstruction.row_errors(candidates, original, gram) < reconstruction.row_errors(refit, original, gram)
    refit[better] = candidates[better]
    return refit.astype(np.float32)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ridge_refit_by_posv_is_bit_identical_to_scipy_solve(rng, dtype):
    x = rng.standard_normal((300, 16)) @ rng.standard_normal((16, 40))
    x[:, 5] = 0.0  # a dead input
    gram = (x.T @ x).astype(dtype)
    w = rng.standard_normal((12, 40)).astype(np.float32)
    keep = pruning.row_keep_mask(np.abs(w), 0.5)
    keep[0] = True  # a row with nothing pruned keeps its values
    assert np.array_equal(reconstruction.refit_rows(w, keep, gram, 1e-2), _refit_rows_by_scipy_solve(w, keep, gram, 1e-2))


def test_ridge_refit_by_conjugate_gradients_is_close_to_the_exact_one(rng):
    x = rng.standard_normal((2000, 60)) @ rng.standard_normal((60, 256))  # correlated, as in real layers
    gram = x.T @ x
    w = rng.standard_normal((24, 256))
    for sparsity in (0.2, 0.5, 0.9):
        keep = pruning.row_keep_mask(np.abs(w), sparsity)
        exact = reconstruction.refit_rows(w, keep, gram, 1e-2)
        approximate = reconstruction.refit_rows(w, keep, gram, 1e-2, iterations=reconstruction.CG_ITERATIONS)
        assert np.array_equal(approximate == 0, ~keep)
        errors = [reconstruction.row_errors(v.astype(np.float64), w, gram).sum() for v in (exact, approximate)]
        pruned = reconstruction.row_errors(np.where(keep, w, 0.0), w, gram).sum()
        assert errors[1] <= pruned and abs(errors[1] / errors[0] - 1) < 0.02, (sparsity, errors)
        rows = np.count_nonzero(keep, axis=1) ** 3 / 3 > reconstruction.CG_EXACT_COST * 2 * reconstruction.CG_ITERATIONS * 256 ** 2
        assert np.array_equal(exact[~rows], approximate[~rows])  # the cheap rows are solved exactly
        assert rows.any() == (sparsity == 0.2)


def test_the_reconstruction_pass_hands_its_iterations_to_the_refit(rng):
    """ReconstructWeightsPass(iterations=N) (the budget's sensitivity trials, autotune._pruned) solves the lightly
    pruned rows by conjugate gradients, as refit_rows(iterations=N) does; before branch calvgg11 it kept N and
    solved every row exactly (vgg16-tumor: minutes per trial on its 4,608-input layers)."""
    import onnx_graphsurgeon as gs
    from onnxcomp.passes import CompressionState, ReconstructWeightsPass
    from onnxcomp.passes.base import WeightTarget
    x = rng.standard_normal((2000, 60)) @ rng.standard_normal((60, 256))
    w = rng.standard_normal((24, 256)).astype(np.float32)  # layout "nk": [outputs, inputs], its own rows
    keep = pruning.row_keep_mask(np.abs(w), 0.2)  # supports of 205: solved by CG at 50 iterations (test above)
    stats = calibration.LayerStatistics(256)
    stats.gram = x.T @ x
    refits = {}
    for iterations in (0, reconstruction.CG_ITERATIONS):
        target = WeightTarget("w", gs.Constant("w", w), "fc", [], keep=keep, layer_input=calibration.LayerInput("x", "nk"),
                              statistics=stats)
        ReconstructWeightsPass(ridge=1e-2, iterations=iterations)(CompressionState(None, [target]))
        refits[iterations] = target.refit
        assert np.array_equal(target.refit, reconstruction.refit_rows(w, keep, stats.gram, 1e-2, start=w, iterations=iterations))
    assert not np.array_equal(refits[0], refits[reconstruction.CG_ITERATIONS])


def _normal_equations_row_by_row(original, indices, k, gram, cross=None, exact=None, exact_values=None):
    """The straightforward assembly normal_equations replaced: each row's G restricted to its shared inputs,
    columns and rows summed per codebook entry."""
    normal, rhs = np.zeros((k, k)), np.zeros(k)
    gw = original.astype(np.float64) @ (gram if cross is None else cross).T
    for i in range(len(original)):
        idx, block, target = indices[i], gram, gw[i]
        if exact is not None and exact[i].any():
            shared, fixed = np.flatnonzero(~exact[i]), np.flatnonzero(exact[i])
            idx, block = idx[shared], gram[np.ix_(shared, shared)]
            target = gw[i][shared] - gram[np.ix_(shared, fixed)] @ exact_values[i, fixed].astype(np.float64)
        onehot = np.eye(k)[idx]  # [inputs, k]
        normal += onehot.T @ block @ onehot
        rhs += onehot.T @ target
    return normal, rhs


@pytest.mark.parametrize("with_outliers", [False, True])
def test_normal_equations_by_columns_give_the_bits_of_the_row_compressed_product(rng, with_outliers, monkeypatch):
    """normal_equations builds each chunk's one-hot matrix compressed by columns (one pass over G per chunk); the
    same sums in the same order as the row-compressed product it replaced (branch calvgg11), bit for bit: the
    sensitivity curves cached before stay valid."""
    from scipy import sparse
    x = rng.standard_normal((400, 30)) @ rng.standard_normal((30, 96))
    gram = (x.T @ x).astype(np.float32)  # float32, as above GRAM_FLOAT64_FEATURES inputs
    w = rng.standard_normal((40, 96)).astype(np.float32)  # three chunks of ROW_CHUNK rows
    indices = rng.integers(0, 6, size=w.shape).astype(np.uint8)
    exact = rng.random(w.shape) < 0.05 if with_outliers else None
    values = np.where(exact, rng.standard_normal(w.shape), 0.0).astype(np.float32) if with_outliers else None
    by_columns = reconstruction.normal_equations(w, indices, 6, gram, exact=exact, exact_values=values)
    monkeypatch.setattr(sparse, "csc_matrix", sparse.csr_matrix)
    by_rows = reconstruction.normal_equations(w, indices, 6, gram, exact=exact, exact_values=values)
    assert all(np.array_equal(a, b) for a, b in zip(by_columns, by_rows))


@pytest.mark.parametrize("symmetric", [True, False])
def test_a_float64_gram_cast_once_gives_the_bits_of_the_per_block_casts(rng, monkeypatch, symmetric):
    """refit_codebook and autotune._Proxy cast a float32 Gram matrix to float64 once (branch vgg12) where their
    float64 products cast it per row block before: the same bits as the mixed products of before (written out here),
    on row blocks of 1-16 rows too (a transposed view of the cast copy gives other bits on few rows), whether G is
    symmetric bit for bit (the calibration's) or not."""
    x = rng.standard_normal((400, 30)) @ rng.standard_normal((30, 96))
    gram = (x.T @ x).astype(np.float32)
    if not symmetric:
        gram[3, 5] *= 1.0001
    wide = reconstruction.float64_operand(gram)
    w = rng.standard_normal((40, 96))
    v = w + 0.01 * rng.standard_normal(w.shape)
    for rows in (1, 5, 12, 40):
        assert np.array_equal(w[:rows] @ gram, w[:rows] @ wide)
        assert np.array_equal(w[:rows] @ gram.T, w[:rows] @ reconstruction.float64_operand(gram.T))
    monkeypatch.setattr(reconstruction, "DENSE_CHUNK_ELEMENTS", 16 * 96)  # row blocks of 16, 16 and 8 rows
    assert np.array_equal(reconstruction.row_errors(v, w, gram), reconstruction.row_errors(v, w, wide))
    w32 = w.astype(np.float32)
    codebook = np.quantile(w32, (np.arange(6) + 0.5) / 6).astype(np.float32)
    indices = np.abs(w32[..., None] - codebook).argmin(-1)
    exact = rng.random(w.shape) < 0.05
    values = np.where(exact, rng.standard_normal(w.shape), 0.0).astype(np.float32)
    for outliers in (None, exact):
        kept = None if outliers is None else values
        normal, rhs = reconstruction.normal_equations(w32, indices, 6, gram, exact=outliers, exact_values=kept)
        before = np.zeros(7 if outliers is not None else 6)  # the right-hand side as before: mixed products per block
        for part in reconstruction.row_chunks(*indices.shape, reconstruction.DENSE_CHUNK_ELEMENTS, reconstruction.ROW_CHUNK):
            gw = np.asarray(w32[part], dtype=np.float64) @ gram.T
            idx = indices[part]
            if outliers is not None:
                idx = np.where(outliers[part], 6, idx)
                gw = gw - np.where(outliers[part], np.asarray(kept[part], dtype=np.float64), 0.0) @ gram
            np.add.at(before, idx.ravel(), gw.ravel())
        assert np.array_equal(rhs, before[:6])
    casts = []
    real = np.ascontiguousarray

    def counted(array, dtype=None):
        if dtype is not None and np.dtype(dtype) != array.dtype and array.shape == gram.shape:
            casts.append(array.dtype)
        return real(array, dtype=dtype)

    monkeypatch.setattr(reconstruction.np, "ascontiguousarray", counted)
    refit = reconstruction.refit_codebook(w32, indices, codebook, gram, False)
    assert len(casts) == (1 if symmetric else 2) and not np.array_equal(refit, codebook)


@pytest.mark.parametrize("with_outliers", [False, True])
@pytest.mark.parametrize("sequential", [False, True])
def test_normal_equations_match_the_row_by_row_assembly(rng, with_outliers, sequential):
    x = rng.standard_normal((300, 20)) @ rng.standard_normal((20, 40))
    gram = x.T @ x
    cross = (x + 0.1 * rng.standard_normal(x.shape)).T @ x if sequential else None
    w = rng.standard_normal((37, 40))  # more rows than one chunk (ROW_CHUNK)
    k = 9
    indices = rng.integers(0, k - 1, size=w.shape)  # the last entry unused: its equations stay zero
    exact = rng.random(w.shape) < 0.05 if with_outliers else None
    values = rng.standard_normal(w.shape).astype(np.float32) if with_outliers else None
    fast = reconstruction.normal_equations(w, indices, k, gram, cross, exact, values)
    slow = _normal_equations_row_by_row(w, indices, k, gram, cross, exact, values)
    for got, want in zip(fast, slow):  # float64 sums in another order: equal to rounding
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-9 * np.abs(want).max())


def test_activation_pruning_end_to_end_runs_in_onnxruntime(tmp_path, rng):
    model = two_layer_model(rng)
    onnx.save(model, tmp_path / "in.onnx")
    data = tmp_path / "calib.npz"
    np.savez(data, x=rng.standard_normal((64, 12)).astype(np.float32))
    for score in ("wanda", "tfidf"):
        report = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx", prune="activation", score=score,
                                   calib=str(data), sparsity=0.5, bits=4, min_elements=16)
        assert [round(layer.sparsity, 2) for layer in report.layers] == [0.5, 0.5]
        x = rng.standard_normal((3, 12)).astype(np.float32)
        assert onnxcomp.InferenceSession(tmp_path / "out.onnx").run(None, {"x": x})[0].shape == (3, 5)


@pytest.mark.parametrize("arrays,message", [
    ({"wrong": np.zeros((4, 12), np.float32)}, "no array for model input 'x'"),
    ({"x": np.zeros((4, 11), np.float32)}, "has shape [4, 11], the model wants ['?', 12]"),
    ({"x": np.zeros((4, 12), np.float64)}, "is float64, the model wants float32"),
    ({"x": np.zeros((0, 12), np.float32)}, "has no samples"),
])
def test_bad_calibration_data_gives_clear_errors(tmp_path, rng, arrays, message):
    data = tmp_path / "calib.npz"
    np.savez(data, **arrays)
    with pytest.raises(CalibrationError, match=None) as error:
        load_calibration(str(data), two_layer_model(rng))
    assert message in str(error.value)


def test_calib_samples_draws_across_a_sorted_file(tmp_path, rng):
    model = two_layer_model(rng)
    x = np.repeat(np.arange(100, dtype=np.float32)[:, None], 12, axis=1)  # sample i is all i: a sorted file
    np.savez(tmp_path / "sorted.npz", x=x)
    picked = load_calibration(str(tmp_path / "sorted.npz"), model, samples=10)["x"][:, 0]
    assert len(picked) == 10 and np.all(np.diff(picked) > 0) and picked.max() >= 50  # not just the first 10
    again = load_calibration(str(tmp_path / "sorted.npz"), model, samples=10)["x"][:, 0]
    assert np.array_equal(picked, again)  # seeded


def test_empty_or_garbage_calibration_file(tmp_path, rng):
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(CalibrationError, match="not a readable"):
        load_calibration(str(tmp_path / "empty.npz"), two_layer_model(rng))


def test_activation_pruning_without_data_is_refused(tmp_path, rng):
    onnx.save(two_layer_model(rng), tmp_path / "in.onnx")
    with pytest.raises(CalibrationError, match="--calib"):
        onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx", prune="activation")
    assert not (tmp_path / "out.onnx").exists()


def test_sequential_reconstruction_fits_original_outputs_from_perturbed_inputs(rng):
    # Inputs X_c carry upstream error; the refit targets the original layer on the original inputs X_o.
    x_o = rng.standard_normal((300, 10)) @ rng.standard_normal((10, 24))
    x_c = x_o + 0.3 * rng.standard_normal(x_o.shape)
    w = rng.standard_normal((6, 24))
    keep = pruning.row_keep_mask(np.abs(w), 0.5)
    gram, cross, gram_o = x_c.T @ x_c, x_c.T @ x_o, x_o.T @ x_o
    refit = reconstruction.refit_rows(w, keep, gram, 1e-4, cross, gram_o).astype(np.float64)
    direct = lambda v: np.sum((x_c @ v.T - x_o @ w.T) ** 2, axis=0)  # noqa: E731
    np.testing.assert_allclose(reconstruction.row_errors(refit, w, gram, cross, gram_o), direct(refit), rtol=1e-6)
    pruned = np.where(keep, w, 0.0)
    independent = reconstruction.refit_rows(w, keep, gram, 1e-4).astype(np.float64)
    assert (direct(refit) <= direct(pruned) + 1e-6).all()
    assert direct(refit).sum() < direct(independent).sum()  # it absorbs the upstream error too


def test_sequential_mode_end_to_end(tmp_path, rng):
    onnx.save(two_layer_model(rng), tmp_path / "in.onnx")
    data = tmp_path / "calib.npz"
    np.savez(data, x=rng.standard_normal((64, 12)).astype(np.float32))
    report = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx", prune="activation", calib=str(data),
                               sparsity=0.5, bits=3, min_elements=16, sequential=True)
    assert [round(layer.sparsity, 2) for layer in report.layers] == [0.5, 0.5]
    x = rng.standard_normal((3, 12)).astype(np.float32)
    assert onnxcomp.InferenceSession(tmp_path / "out.onnx").run(None, {"x": x})[0].shape == (3, 5)
    with pytest.raises(CalibrationError, match="--sequential needs calibration data"):
        onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out2.onnx", sequential=True)


def test_sequential_activation_pruning_of_a_layer_whose_input_cannot_be_observed(tmp_path, rng):
    """A grouped conv has no observable layer input: in sequential mode it is compressed by itself and pruned by
    magnitude, as in one pass, instead of failing the "needs calibration data" check meant for a missing --calib."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], group=2), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("Gemm", ["f", "w2"], ["y"], transB=1)]
    model = make_model(nodes, [float_input("x", ["n", 4, 8, 8])], [float_input("y", ["n", 5])],
                       [weight(rng, "w1", (8, 2, 3, 3)), weight(rng, "w2", (5, 288))])
    onnx.save(model, tmp_path / "in.onnx")
    data = tmp_path / "calib.npz"
    np.savez(data, x=rng.standard_normal((32, 4, 8, 8)).astype(np.float32))
    report = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx", prune="activation", calib=str(data),
                               sparsity=0.5, bits=4, min_elements=16, sequential=True)
    assert sorted((layer.name, round(layer.sparsity, 2)) for layer in report.layers) == [("w1", 0.5), ("w2", 0.5)]
    x = rng.standard_normal((3, 4, 8, 8)).astype(np.float32)
    assert onnxcomp.InferenceSession(tmp_path / "out.onnx").run(None, {"x": x})[0].shape == (3, 5)


def test_statistics_of_a_time_first_layer_input(rng):
    """A layer reading [time, batch, features] (a recurrent model's classifier): the sample axis is moved first,
    so per-sample counts hold and the Gram matrix is that of all rows (it used to be refused)."""
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]), helper.make_node("MatMul", ["t", "w"], ["y"])]
    model = make_model(nodes, [float_input("x", ["n", 5, 12])], [float_input("y", [5, "n", 20])], [weight(rng, "w", (12, 20))])
    x = np.abs(rng.standard_normal((8, 5, 12))).astype(np.float32)
    x[:, :, 3] = 0
    x[2, :, 3] = 1  # feature 3 fires in one sample only, on 5 rows
    stats = calibration.collect(model, {"w": calibration.LayerInput("t", "kn")}, {"x": x}, batch=8, threshold=0.5)["w"]
    rows = x.reshape(-1, 12).astype(np.float64)
    assert stats.samples == 8 and stats.rows == 40
    np.testing.assert_allclose(stats.gram, rows.T @ rows, rtol=1e-4, atol=1e-4)
    assert stats.fire_samples[3] == 1 and stats.fire_rows[3] == 5


def test_sample_axis_of_declared_shapes():
    """Samples sit on the first axis unless it is fixed to more than 1 and a later one is dynamic (a recurrent
    state); an input exported with a fixed batch of 1 and a dynamic width keeps them first; scalars go whole."""
    from onnxcomp.passes.calibration import sample_axes, sample_axis
    assert sample_axis([2, None, 128]) == 1 and sample_axis([2, "batch", 128]) == 1
    assert sample_axis([1, 1, 64, None]) == 0 and sample_axis(["n", 576]) == 0 and sample_axis([1, 3, 416, 416]) == 0
    assert sample_axis([]) is None
    # fully fixed inputs beside dynamic ones are fed whole; all fixed with different first dims: all whole
    assert sample_axes([("x", [None, 4], None), ("e", [2, 0], None)]) == {"x": 0, "e": None}
    assert sample_axes([("acc", [1, 16], None), ("rows", [5, 1, 32], None)]) == {"acc": None, "rows": None}


def test_large_layers_seen_on_few_rows_keep_the_rows_until_the_gram_matrix_is_smaller(rng, monkeypatch):
    monkeypatch.setattr(calibration, "GRAM_FLOAT64_FEATURES", 8)
    stats = calibration.LayerStatistics(40)
    first = rng.standard_normal((5, 40)).astype(np.float32)
    stats.add(first, 5, 0.0)
    assert stats.dense_gram is None and stats.activations.shape == (5, 40)
    np.testing.assert_allclose(stats.gram, first.T.astype(np.float64) @ first, rtol=1e-5, atol=1e-5)
    second = rng.standard_normal((6, 40)).astype(np.float32)
    stats.add(second, 6, 0.0)  # 11 rows > 40 / LOW_RANK_RATIO: X^T X is now smaller than X
    assert stats.activations is None and stats.dense_gram.dtype == np.float32
    both = np.concatenate([first, second]).astype(np.float64)
    np.testing.assert_allclose(stats.gram, both.T @ both, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.sum_squares, (both ** 2).sum(axis=0), rtol=1e-12)
    small = calibration.LayerStatistics(8)  # at most GRAM_FLOAT64_FEATURES inputs: float64 Gram matrix as before
    assert small.activations is None and small.dense_gram.dtype == np.float64


def test_the_in_place_factor_is_the_cholesky_factor_of_the_damped_inverse(rng):
    from onnxcomp.core import obs
    x = rng.standard_normal((30, 60))
    x[:, 7] = 0.0  # a dead input
    gram = x.T @ x
    expected, dead = obs._inverse_factor(gram, 0.01)
    for kwargs in ({"gram": gram}, {"activations": x}):
        u, mask = obs.inverse_factor_in_place(damp=0.01, **kwargs)
        np.testing.assert_allclose(u, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())
        assert np.array_equal(mask, dead)
    single, mask = obs.inverse_factor_in_place(activations=x.astype(np.float32), damp=0.01)
    assert single.dtype == np.float32 and np.array_equal(mask, dead)
    np.testing.assert_allclose(single, expected, atol=1e-4 * np.abs(expected).max())


def test_low_rank_forms_match_the_gram_forms(rng, monkeypatch):
    from onnxcomp.core import obs
    x = rng.standard_normal((6, 48)).astype(np.float32)
    gram = x.T.astype(np.float64) @ x
    w = rng.standard_normal((20, 48)).astype(np.float32)
    indices = rng.integers(0, 8, w.shape)
    exact = rng.random(w.shape) < 0.05
    values = np.where(exact, rng.standard_normal(w.shape), 0.0).astype(np.float32)
    dense = reconstruction.normal_equations(w, indices, 8, gram, None, exact, values)
    low = reconstruction.normal_equations_low_rank(w, indices, 8, x, exact, values)
    for a, b in zip(dense, low):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * np.abs(a).max())
    v = w + 0.1 * rng.standard_normal(w.shape).astype(np.float32)
    np.testing.assert_allclose(reconstruction.row_errors(v, w, None, activations=x), reconstruction.row_errors(v, w, gram), rtol=1e-4)
    book = np.sort(rng.standard_normal(8)).astype(np.float32)
    np.testing.assert_allclose(reconstruction.refit_codebook(w, indices, book, None, False, activations=x),
                               reconstruction.refit_codebook(w, indices, book, gram, False), rtol=1e-3, atol=1e-4)
    # rounding in row blocks gives the same indices as one block (rows are compensated independently)
    whole = obs.round_to_codebook(w, None, book, gram)
    monkeypatch.setattr(obs, "ROW_CHUNK_ELEMENTS", 48 * 3)
    assert np.array_equal(obs.round_to_codebook(w, None, book, gram), whole)

def test_probe_computes_only_what_the_wanted_values_need(rng):
    # Three branches off x: the probe for h keeps only h's producer; the If node (its branch reads the outer value
    # h) is needed for z only, and brings h's producer with it although no regular input names h.
    then = helper.make_graph([helper.make_node("Relu", ["h"], ["t"])], "then", [], [float_input("t", ["n", 20])])
    other = helper.make_graph([helper.make_node("Neg", ["h"], ["e"])], "else", [], [float_input("e", ["n", 20])])
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["x", "w2"], ["g"]),
             helper.make_node("Relu", ["g"], ["y"]),
             helper.make_node("If", ["c"], ["z"], then_branch=then, else_branch=other)]
    model = make_model(nodes, [float_input("x", ["n", 12]), helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])],
                       [float_input("y", ["n", 7]), float_input("z", ["n", 20])],
                       [weight(rng, "w1", (12, 20)), weight(rng, "w2", (12, 7))])
    assert [n.output[0] for n in calibration.needed_nodes(model.graph, ["h"])] == ["h"]
    assert [n.output[0] for n in calibration.needed_nodes(model.graph, ["z"])] == ["h", "z"]
    assert [n.output[0] for n in calibration.needed_nodes(model.graph, ["y"])] == ["g", "y"]
    x = rng.standard_normal((5, 12)).astype(np.float32)
    session = calibration._probe_session(model, ["h"])
    assert len(onnx.load_from_string(model.SerializeToString()).graph.node) == 4  # the model itself is untouched
    w1 = onnx.numpy_helper.to_array(model.graph.initializer[0])
    (h,) = session.run(None, {"x": x, "c": np.array(True)} if "c" in {i.name for i in session.get_inputs()} else {"x": x})
    np.testing.assert_allclose(h, x @ w1, rtol=1e-5)
    stats = calibration.collect(model, {"w1": calibration.LayerInput("x", "kn")}, {"x": x, "c": np.array(True)})
    np.testing.assert_allclose(stats["w1"].gram, x.astype(np.float64).T @ x, rtol=1e-4, atol=1e-4)


def _sequential_outputs(monkeypatch, tmp_path, model, data, **options):
    """The output bytes of a sequential compress with the pass's walk and with whole-model probes per layer."""
    import functools
    from onnxcomp.passes.compress_sequentially import CompressSequentiallyPass
    from onnxcomp.pipeline import compression

    onnx.save(model, tmp_path / "in.onnx")
    np.savez(tmp_path / "calib.npz", **data)
    outputs = []
    for name, cls in (("walk", CompressSequentiallyPass), ("probes", functools.partial(CompressSequentiallyPass, walk=False))):
        monkeypatch.setattr(compression, "CompressSequentiallyPass", cls)
        (tmp_path / name).mkdir()
        onnxcomp.compress(tmp_path / "in.onnx", tmp_path / name / "out.onnx", calib=str(tmp_path / "calib.npz"),
                          sequential=True, **options)
        outputs.append((tmp_path / name / "out.onnx").read_bytes() + (tmp_path / name / "out.onnxcomp").read_bytes())
    return outputs


def _branching_convs(rng):
    """Convs with branches, two convs reading one tensor, a strided conv, a Resize and a skip connection, then a Gemm:
    weights w1-w6."""
    conv = lambda x, w, y, **a: helper.make_node("Conv", [x, w], [y], pads=[1, 1, 1, 1], **a)  # noqa: E731
    nodes = [conv("x", "w1", "a"), helper.make_node("Relu", ["a"], ["ar"]),
             conv("ar", "w2", "b"), conv("ar", "w3", "c"), helper.make_node("Add", ["b", "c"], ["d"]),
             helper.make_node("Relu", ["d"], ["dr"]), conv("dr", "w4", "e", strides=[2, 2]),
             helper.make_node("Relu", ["e"], ["er"]), conv("er", "w5", "f"), helper.make_node("Resize", ["f", "", "scales"], ["fu"]),
             helper.make_node("Add", ["fu", "ar"], ["g"]), helper.make_node("Flatten", ["g"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w6"], ["y"], transB=1)]
    scales = onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    return make_model(nodes, [float_input("x", ["n", 3, 8, 8])], [float_input("y", ["n", 5])],
                       [weight(rng, "w1", (8, 3, 3, 3)), weight(rng, "w2", (8, 8, 3, 3)), weight(rng, "w3", (8, 8, 3, 3)),
                        weight(rng, "w4", (8, 8, 3, 3)), weight(rng, "w5", (8, 8, 3, 3)), weight(rng, "w6", (5, 512)), scales])


def test_sequential_walk_gives_the_statistics_of_whole_model_probes(monkeypatch, tmp_path, rng):
    """Branches, a skip connection, two convs reading one tensor, several batches (9 samples in batches of 4):
    running each node once (per model) and keeping its outputs while later nodes read them compresses every
    layer to the same bytes as probing the compressed and original models whole for each layer."""
    model = _branching_convs(rng)
    walk, probes = _sequential_outputs(monkeypatch, tmp_path, model, {"x": rng.standard_normal((9, 3, 8, 8)).astype(np.float32)},
                                       prune="activation", sparsity=0.5, bits=3, min_elements=16, calib_batch=4)
    assert walk == probes


def test_sequential_walk_reruns_nodes_that_read_a_weight_not_compressed_yet(monkeypatch, tmp_path, rng):
    """``v`` is read by a Mul before the MatMul whose input is its observed input: the Mul's output, made with the
    uncompressed ``v`` when ``v``'s statistics are gathered, must not be kept for later layers (which whole-model
    probes compute with the compressed ``v``)."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Mul", ["r", "v"], ["m"]), helper.make_node("MatMul", ["m", "w2"], ["z"]),
             helper.make_node("MatMul", ["z", "v"], ["u"]), helper.make_node("MatMul", ["u", "w3"], ["y"])]
    model = make_model(nodes, [float_input("x", ["n", 12])], [float_input("y", ["n", 6])],
                       [weight(rng, "w1", (12, 16)), weight(rng, "v", (1, 16)), weight(rng, "w2", (16, 1)),
                        weight(rng, "w3", (16, 6))])
    walk, probes = _sequential_outputs(monkeypatch, tmp_path, model, {"x": rng.standard_normal((40, 12)).astype(np.float32)},
                                       prune="activation", sparsity=0.25, bits=3, min_elements=1, calib_batch=16)
    assert walk == probes


def test_statistics_in_row_chunks_match_whole_batches(monkeypatch, rng):
    """Above ROW_CHUNK_BYTES of float64 im2col rows a batch is observed a few samples at a time (bounded memory):
    the same counts, and sums equal up to float64 summation order, also for the sequential cross terms."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])]
    model = make_model(nodes, [float_input("x", ["n", 3, 8, 8])], [float_input("y", ["n", 4, 8, 8])], [weight(rng, "w", (4, 3, 3, 3))])
    x = rng.standard_normal((10, 3, 8, 8)).astype(np.float32)
    spec = {"w": calibration.LayerInput("x", "conv", (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))}
    whole = calibration.collect(model, spec, {"x": x}, batch=10, threshold=0.2, original=model)["w"]
    monkeypatch.setattr(calibration, "ROW_CHUNK_BYTES", 3 * 64 * 27 * 8)  # 3 samples per chunk: 4 chunks
    assert calibration._row_chunks(x, spec["w"], 10) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    chunked = calibration.collect(model, spec, {"x": x}, batch=10, threshold=0.2, original=model)["w"]
    assert (chunked.rows, chunked.samples) == (whole.rows, whole.samples) == (640, 10)
    np.testing.assert_array_equal(chunked.fire_samples, whole.fire_samples)
    np.testing.assert_array_equal(chunked.fire_rows, whole.fire_rows)
    for name in ("sum_squares", "sum_abs", "gram", "cross", "gram_original"):
        np.testing.assert_allclose(getattr(chunked, name), getattr(whole, name), rtol=1e-12, atol=1e-9)


def test_statistics_of_a_flattened_layer_input_fed_one_sample_at_a_time(rng):
    """A model with a fixed batch of 1 whose classifier reads its rows flattened to [time, features] (ddddocr-ocr's
    135): each run is one sample, so the rows are all that sample's; with batches of more samples the same input
    is refused (the rows could not be told apart)."""
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["t"]), helper.make_node("MatMul", ["t", "w"], ["y"])]
    shape = onnx.numpy_helper.from_array(np.array([-1, 12], np.int64), "shape")
    one = make_model(nodes, [float_input("x", [1, 5, 12])], [float_input("y", [5, 20])], [weight(rng, "w", (12, 20)), shape])
    x = np.abs(rng.standard_normal((3, 5, 12))).astype(np.float32)
    stats = calibration.collect(one, {"w": calibration.LayerInput("t", "kn")}, {"x": x}, batch=8, threshold=0.5)["w"]
    rows = x.reshape(-1, 12).astype(np.float64)
    assert stats.samples == 3 and stats.rows == 15
    np.testing.assert_array_equal(stats.fire_samples, (x > 0.5).any(axis=1).sum(axis=0))
    np.testing.assert_allclose(stats.gram, rows.T @ rows, rtol=1e-12)
    many = make_model(nodes, [float_input("x", ["n", 5, 12])], [float_input("y", ["m", 20])], [weight(rng, "w", (12, 20)), shape])
    with pytest.raises(CalibrationError, match="has no axis of 3 samples"):
        calibration.collect(many, {"w": calibration.LayerInput("t", "kn")}, {"x": x}, batch=8, threshold=0.5)


def _conv_observe(x, spec, threshold=0.0, original=None, total=None):
    """One batch of ``x`` through _observe as the walk and collect do (the original's rows: ``original``; the
    pass's samples: ``total``)."""
    stats = {}
    calibration._observe(stats, {"w": spec}, {"x": x}, len(x), threshold, True, {},
                         None if original is None else {"x": original}, total=total)
    return stats["w"]


def _relative(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def _seeded(monkeypatch, observe, seeds=64):
    """``observe()`` under ROW_SAMPLE_SEED 0 .. seeds - 1."""
    estimates = []
    for seed in range(seeds):
        monkeypatch.setattr(calibration, "ROW_SAMPLE_SEED", seed)
        estimates.append(observe())
    return estimates


CONV_3X3 = calibration.LayerInput("x", "conv", (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))


def test_row_sampling_is_deterministic_and_per_sample(monkeypatch):
    """The same tensor and sample indices give the same positions; each sample draws its own, without repeats."""
    monkeypatch.setattr(calibration, "ROW_SAMPLE_POSITIONS", 16)
    a = calibration.sampled_positions(100, 3, "x", 5)
    np.testing.assert_array_equal(a, calibration.sampled_positions(100, 3, "x", 5))
    assert a.shape == (3, 16) and all(len(set(row)) == 16 for row in a) and a.min() >= 0 and a.max() < 100
    np.testing.assert_array_equal(calibration.sampled_positions(100, 2, "x", 6), a[1:])  # seeded by the sample's index
    assert not np.array_equal(a[0], a[1]) and not np.array_equal(a, calibration.sampled_positions(100, 3, "y", 5))
    assert calibration.sampled_positions(16, 3, "x", 0) is None  # fits: every row


def test_sampled_rows_are_the_chosen_patches(monkeypatch, rng):
    """A sampled conv row is the full im2col row of that sample's chosen output pixel (and a MatMul row that
    position's features), so features stay aligned with the weight's columns."""
    x = rng.standard_normal((3, 2, 7, 6)).astype(np.float32)
    positions = np.array([[0, 41, 5], [7, 8, 40], [1, 2, 3]])
    full = calibration.im2col(x, CONV_3X3).reshape(3, 42, 18)
    picked = calibration.input_rows(x, CONV_3X3, positions).reshape(3, 3, 18)
    for s in range(3):
        np.testing.assert_array_equal(picked[s], full[s, positions[s]])
    seq = rng.standard_normal((3, 2, 21, 5)).astype(np.float32)  # positions between samples and features: 42
    rows = calibration.input_rows(seq, calibration.LayerInput("x", "kn"), positions).reshape(3, 3, 5)
    for s in range(3):
        np.testing.assert_array_equal(rows[s], seq[s].reshape(42, 5)[positions[s]])


def test_row_sampled_statistics_are_unbiased(monkeypatch, rng):
    """Row sampling (m of P positions per sample, weighted P/m) estimates the sums over all rows without bias.
    Synthetic case: 8 samples of 2x24x24 (P = 576 pixel rows of K = 18 features each, mean 0.5, sd 1), m = 64.
    The relative Frobenius error of one X^T X estimate is about sqrt(K (1 - m/P) / (S m)) for independent
    entries (Cochran 1977, ch. 2: each sum's variance is P^2 (1 - m/P) S^2 / m per sample) = 0.18 here; the
    stated tolerances: one estimate within 2x that (0.35), the mean of 64 seeds within 4x its standard error
    (0.088), and the sequential cross terms of the same rows equal to their Gram matrix (same positions)."""
    x = (0.5 + rng.standard_normal((8, 2, 24, 24))).astype(np.float32)
    exact = _conv_observe(x, CONV_3X3, threshold=1.0)
    monkeypatch.setattr(calibration, "ROW_SAMPLE_POSITIONS", 64)
    scale = np.sqrt(18 * (1 - 64 / 576) / (8 * 64))
    relative = _relative
    estimates = _seeded(monkeypatch, lambda: _conv_observe(x, CONV_3X3, threshold=1.0, original=x))
    one = estimates[0]
    assert (one.rows, one.samples) == (exact.rows, exact.samples) == (8 * 576, 8)
    assert relative(one.gram, exact.gram) < 2 * scale
    np.testing.assert_allclose(one.cross, one.gram, rtol=1e-12)
    np.testing.assert_allclose(one.gram_original, one.gram, rtol=1e-12)
    for name in ("gram", "sum_squares", "sum_abs", "fire_rows"):
        mean = np.mean([getattr(e, name) for e in estimates], axis=0)
        assert relative(mean, getattr(exact, name)) < 4 * scale / np.sqrt(64), name
    assert all((e.fire_samples <= exact.fire_samples).all() for e in estimates)  # counted on sampled rows: a lower bound
    monkeypatch.setattr(calibration, "ROW_SAMPLE_SEED", 0)
    again = _conv_observe(x, CONV_3X3, threshold=1.0, original=x)
    np.testing.assert_array_equal(again.gram, estimates[0].gram)  # deterministic: same data, same statistics


def test_gram_rows_are_capped_per_feature_and_spread_over_samples(monkeypatch):
    """A pass of N samples gives X^T X at most max(GRAM_ROWS_MIN, 16 K) rows, ceil(that / N) per sample, at least
    one, never more than the sample has; no total (a caller that does not know it): every row."""
    assert calibration.gram_positions(4608, 225, 200) == 225  # VGG-16's block 5: 45,000 rows <= 73,728
    assert calibration.gram_positions(4608, 900, 200) == 369  # block 4: 73,728 / 200 rounded up
    assert calibration.gram_positions(576, 4096, 200) == 328  # block 1: GRAM_ROWS_MIN / 200 rounded up
    assert calibration.gram_positions(576, 4096, 10 ** 6) == 1 and calibration.gram_positions(576, 4096, None) == 4096
    index, factor = calibration.gram_subset(3, 900, 4608, 200, "x", 7)
    assert len(index) == 3 * 369 and factor == 900 / 369
    per_sample = index.reshape(3, 369)
    assert all(len(set(row)) == 369 for row in per_sample)
    assert (per_sample // 900 == np.arange(3)[:, None]).all()  # each sample's rows from its own block
    again, _ = calibration.gram_subset(2, 900, 4608, 200, "x", 8)  # seeded by the sample's index, not the chunk's
    np.testing.assert_array_equal(again, index[369:] - 900)
    assert calibration.gram_subset(3, 225, 4608, 200, "x", 0) is None


def test_capped_gram_is_an_unbiased_estimate_and_the_other_sums_keep_every_row(monkeypatch, rng):
    """With the Gram capped to g of the P = 576 rows of each of 8 samples (K = 18: GRAM_ROWS_MIN lowered so that g
    = 64), X^T X is the Horvitz-Thompson estimate of the full one: relative Frobenius error of one estimate within
    2x sqrt(K (1 - g/P) / (S g)) = 0.18 (the row-sampling test's formula), the mean of 64 seeds within 4x its
    standard error; sum_squares, sum_abs and the fire counts are those of every row, bit for bit; the sequential
    cross terms take the same rows (so they equal the Gram of the same input); and a cap above the rows leaves the
    statistics the same bytes as no cap."""
    x = (0.5 + rng.standard_normal((8, 2, 24, 24))).astype(np.float32)
    exact = _conv_observe(x, CONV_3X3, threshold=1.0)
    # 8 x 576 rows are below GRAM_ROWS_MIN: all taken
    np.testing.assert_array_equal(_conv_observe(x, CONV_3X3, threshold=1.0, total=8).gram, exact.gram)
    monkeypatch.setattr(calibration, "GRAM_ROWS_MIN", 8 * 64)
    monkeypatch.setattr(calibration, "GRAM_ROWS_PER_FEATURE", 1)
    assert calibration.gram_positions(18, 576, 8) == 64
    scale = np.sqrt(18 * (1 - 64 / 576) / (8 * 64))
    estimates = _seeded(monkeypatch, lambda: _conv_observe(x, CONV_3X3, threshold=1.0, original=x, total=8))
    one = estimates[0]
    assert _relative(one.gram, exact.gram) < 2 * scale and not np.allclose(one.gram, exact.gram, rtol=1e-3)
    for name in ("sum_squares", "sum_abs", "fire_rows", "fire_samples"):
        np.testing.assert_array_equal(getattr(one, name), getattr(exact, name))
    assert (one.rows, one.samples) == (exact.rows, exact.samples)
    np.testing.assert_allclose(one.cross, one.gram, rtol=1e-12)
    np.testing.assert_allclose(one.gram_original, one.gram, rtol=1e-12)
    assert _relative(np.mean([e.gram for e in estimates], axis=0), exact.gram) < 4 * scale / np.sqrt(64)
    monkeypatch.setattr(calibration, "ROW_SAMPLE_SEED", 0)
    np.testing.assert_array_equal(_conv_observe(x, CONV_3X3, threshold=1.0, original=x, total=8).gram, one.gram)


def test_statistics_of_float32_rows_are_the_float64_formulas_bit_for_bit(rng):
    """The sums are taken from float32 rows without a float64 copy of them: the same bits as the float64 formulas
    (each value converted exactly before it is squared, compared or summed, rows summed in order), for a threshold
    that float32 cannot hold (0.1) and values equal to float32(0.1)."""
    rows = (rng.standard_normal((3 * 50, 7)) * 3).astype(np.float32)
    rows[::5, 2] = np.float32(0.1)
    stats = calibration.LayerStatistics(7)
    stats.add(rows, 3, 0.1, weight=2.5)
    exact = rows.astype(np.float64)
    fires = exact > 0.1
    np.testing.assert_array_equal(stats.sum_squares, 2.5 * np.einsum("rk,rk->k", exact, exact))
    np.testing.assert_array_equal(stats.sum_abs, 2.5 * np.abs(exact).sum(axis=0))
    np.testing.assert_array_equal(stats.fire_rows, 2.5 * fires.sum(axis=0))
    np.testing.assert_array_equal(stats.fire_samples, fires.reshape(3, 50, 7).any(axis=1).sum(axis=0))
    np.testing.assert_array_equal(stats.gram, 2.5 * (exact.T @ exact))
    assert fires[::5, 2].all()  # float32(0.1) > 0.1 in float64: a float32 comparison would not count them


def test_capped_gram_of_a_wide_layer_in_float32(monkeypatch, rng):
    """A layer above GRAM_FLOAT64_FEATURES inputs keeps float32 rows, then a float32 X^T X: the capped rows give
    the Gram of the chosen rows times their factor (within float32 rounding of the largest entry)."""
    monkeypatch.setattr(calibration, "GRAM_FLOAT64_FEATURES", 8)
    monkeypatch.setattr(calibration, "GRAM_ROWS_MIN", 4 * 10)
    monkeypatch.setattr(calibration, "GRAM_ROWS_PER_FEATURE", 1)
    x = rng.standard_normal((4, 2, 12, 12)).astype(np.float32)
    gram = _conv_observe(x, CONV_3X3, total=4).gram
    rows = calibration.im2col(x, CONV_3X3)
    index, factor = calibration.gram_subset(4, 144, 18, 4, "x", 0)
    chosen = rows[index]
    assert gram.dtype == np.float32 and len(index) == 40
    expected = chosen.astype(np.float64).T @ chosen * factor
    np.testing.assert_allclose(gram, expected, atol=1e-5 * np.abs(expected).max())


def test_row_sampling_bounds_the_statistics_memory(monkeypatch, rng):
    """A conv input whose float64 im2col rows are 151 MB (4 samples of 8x256x256, 3x3 kernel: 65,536 rows of 72
    features each) is observed with at most ROW_SAMPLE_POSITIONS = 4,096 rows per sample: traced peak under 40 MB
    (the padded input copy, 8.5 MB, and the 9.4 MB float64 rows with their products and absolute values)."""
    import tracemalloc
    x = rng.standard_normal((4, 8, 256, 256)).astype(np.float32)
    assert calibration.ROW_SAMPLE_POSITIONS == 4096
    assert calibration._row_chunks(x, CONV_3X3, 4) == [(0, 4)]  # chunks sized by the rows kept, not all rows
    tracemalloc.start()
    stats = _conv_observe(x, CONV_3X3)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert stats.rows == 4 * 65536 and peak < 40e6, peak


def test_sequential_statistics_reused_between_runs_give_the_same_bytes(tmp_path, rng):
    """The budget's check set compresses allocations that differ in a few weights' settings one after another with
    one ``sequential_reuse`` dict: each run's output is the same bytes as a run without it, the layers whose walk
    and upstream settings did not change take their statistics from the last run, the others their X_o^T X_o when
    their walk did not change; a weight left dense changes the walk after it."""
    model = _branching_convs(rng)
    onnx.save(model, tmp_path / "in.onnx")
    calib = {"x": rng.standard_normal((9, 3, 8, 8)).astype(np.float32)}
    base = {name: {"sparsity": 0.5, "bits": 3} for name in ("w1", "w2", "w3", "w4", "w5", "w6")}
    runs = [(base, (0, 0)),
            ({**base, "w5": {"sparsity": 0.3, "bits": 4}}, (5, 1)),  # w1-w5 as before; w6 after the change: X_o^T X_o
            ({**base, "w1": {"sparsity": 0.3, "bits": 4}}, (1, 5)),  # w1's statistics depend on no weight
            # w3 left dense: w1 and w2 (its walk reads no w3) as before; w4 on, another walk
            ({**base, "w1": {"sparsity": 0.3, "bits": 4}, "w3": {"skip": True}}, (2, 0)),
            ({**base, "w1": {"sparsity": 0.3, "bits": 4}, "w3": {"skip": True}}, (5, 0))]  # the same again: all of it
    reuse: dict = {}
    for index, (settings, reused) in enumerate(runs):
        outputs = []
        for name, kept in (("reuse", reuse), ("fresh", None)):
            folder = tmp_path / f"{name}{index}"
            folder.mkdir()
            onnxcomp.compress(tmp_path / "in.onnx", folder / "out.onnx", calib=calib, prune="activation", min_elements=16,
                              calib_batch=4, sequential=True, settings=settings, sequential_reuse=kept, fidelity=False)
            outputs.append((folder / "out.onnx").read_bytes() + (folder / "out.onnxcomp").read_bytes())
        assert outputs[0] == outputs[1]
        assert reuse["reused"] == reused
