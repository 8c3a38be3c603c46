import numpy as np
import pytest

from onnxcomp.core import codebook, pruning


def test_assign_picks_the_nearest_centroid(rng):
    centroids = np.sort(rng.standard_normal(9)).astype(np.float32)
    values = rng.standard_normal(1000)
    expected = np.abs(values[:, None] - centroids[None, :].astype(np.float64)).argmin(axis=1)
    assert np.array_equal(codebook.assign(values, centroids), expected)


@pytest.mark.parametrize("init", codebook.INITS)
def test_codebook_is_a_converged_kmeans_solution(rng, init):
    # Heavy-tailed like transformer FFN weights (max/std in the hundreds).
    values = rng.standard_t(df=1.5, size=50_000).astype(np.float32)
    centroids = codebook.fit_codebook(values, 32, init)
    assert len(centroids) == 32 and np.all(np.diff(centroids) > 0)
    idx = codebook.assign(values, centroids)
    means = np.bincount(idx, weights=values, minlength=32) / np.bincount(idx, minlength=32)
    assert np.allclose(centroids, means, rtol=1e-5, atol=1e-5)  # Lloyd's fixed point: each centroid is its mean


def test_few_distinct_values_are_kept_exactly():
    values = np.array([0.5, -1.25, 0.5, 3.0], dtype=np.float32)
    assert np.array_equal(codebook.fit_codebook(values, 8), np.array([-1.25, 0.5, 3.0], np.float32))


def test_quantize_maps_pruned_weights_to_exact_zero(rng):
    w = rng.standard_normal((30, 40)).astype(np.float32)
    keep = pruning.keep_mask(np.abs(w), 0.6)
    cb, idx = codebook.quantize(w, keep, bits=3)
    assert len(cb) <= 8 and cb[0] == 0.0 and np.signbit(cb[0]) == False  # noqa: E712
    assert np.array_equal(idx.reshape(w.shape) == 0, ~keep)
    kept_error = np.abs(cb[idx].reshape(w.shape) - w)[keep].max()
    assert kept_error < 0.5 * (np.abs(w).max())


def test_quantize_is_deterministic(rng):
    w = rng.standard_normal(120_000).astype(np.float32)  # above the k-means sample size
    a = codebook.quantize(w, None, 5, seed=3)
    b = codebook.quantize(w, None, 5, seed=3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9])
def test_keep_mask_prunes_the_smallest_fraction(rng, sparsity):
    scores = rng.random((50, 20))
    keep = pruning.keep_mask(scores, sparsity)
    assert keep.sum() == scores.size - round(sparsity * scores.size)
    if 0 < sparsity:
        assert scores[keep].min() >= scores[~keep].max()


def test_global_masks_share_one_threshold(rng):
    scores = {"a": rng.random(100) * 10, "b": rng.random(300)}
    masks = pruning.global_keep_masks(scores, 0.5)
    kept = np.concatenate([scores[n][masks[n]] for n in scores])
    pruned = np.concatenate([scores[n][~masks[n]] for n in scores])
    assert kept.min() >= pruned.max()
    assert masks["a"].mean() > masks["b"].mean()  # the larger-scored layer keeps more


def test_uniform_codebook_is_one_lloyd_step_from_an_even_grid(rng):
    """``levels``: the grid's points from min to max, each moved to the mean of the values nearest to it (empty
    ones dropped), the same in the compiled and the reference step; indices are nearest-centroid as ever."""
    values = rng.laplace(size=20_000).astype(np.float32)
    grid = np.linspace(values.min(), values.max(), 40).astype(np.float32)
    nearest = np.abs(values[:, None].astype(np.float64) - grid[None, :]).argmin(axis=1)
    counts = np.bincount(nearest, minlength=40)
    means = (np.bincount(nearest, weights=values, minlength=40)[counts > 0] / counts[counts > 0]).astype(np.float32)
    table, indices = codebook.quantize(values, None, 6, levels=40)
    np.testing.assert_allclose(table, np.unique(means), rtol=1e-6, atol=1e-7)
    assert np.array_equal(indices, codebook.assign(values, table))
    ordered = codebook.sort_values(values)
    start = codebook.uniform_start(ordered[0], ordered[-1], 40)
    assert codebook.refine(ordered, start, iterations=1).tobytes() == \
        codebook.refine_reference(ordered, start, iterations=1).tobytes()
    pruned, pruned_indices = codebook.quantize(values, np.abs(values) > 0.1, 6, levels=40)
    assert pruned[0] == 0.0 and len(pruned) <= 41 and np.all(pruned_indices[np.abs(values) <= 0.1] == 0)
