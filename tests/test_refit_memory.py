"""The calibrated refit in row blocks (issue #16, working memory) gives the numbers of the whole-array code it
replaced: normal equations, row errors and the sparse outlier rows. Sums and gathers are compared bit for bit; a
BLAS product of a few rows may round differently from one over all rows (OpenBLAS takes other kernels for small
matrices), so the terms made by products get a tolerance of a few float64 (float32 for the low-rank
projections) ulps. At real sizes (blocks of 512+ rows) the products agree bit for bit: bench/calib_memory.py's
weights compress to cmp-identical outputs before and after (docs/benchmarks.md, section wmem)."""

PRODUCT_RTOL_64 = 1e-13  # float64 products of a block vs of all rows
PRODUCT_RTOL_32 = 1e-5  # float32 products (low-rank projections), accumulated in float64

import numpy as np
import pytest

from onnxcomp.core import reconstruction
from onnxcomp.passes.share_weights import OutlierRows


def _normal_equations_whole(original, indices, k, gram, cross=None, exact=None, exact_values=None):
    """The whole-array version (main before branch wmem): G w_i for every row at once, one bincount."""
    from scipy import sparse
    rows, inputs = indices.shape
    groups = k + 1 if exact is not None else k
    idx = np.asarray(indices, dtype=np.int64)
    gw = np.asarray(original, dtype=np.float64) @ (gram if cross is None else cross).T
    if exact is not None:
        idx = np.where(exact, k, idx)
        gw = gw - np.where(exact, np.asarray(exact_values, dtype=np.float64), 0.0) @ gram
    rhs = np.bincount(idx.ravel(), weights=gw.ravel(), minlength=groups)
    normal = np.zeros(groups * groups)
    for start in range(0, rows, reconstruction.ROW_CHUNK):
        chunk = idx[start:start + reconstruction.ROW_CHUNK]
        count = len(chunk)
        picks = (np.arange(count)[:, None] * groups + chunk).ravel()
        onehot = sparse.csr_matrix((np.ones(count * inputs), (picks, np.tile(np.arange(inputs), count))),
                                   shape=(count * groups, inputs))
        partial = np.asarray(onehot @ gram).reshape(count, groups, inputs)
        cell = np.arange(groups)[None, :, None] * groups + chunk[:, None, :]
        normal += np.bincount(cell.ravel(), weights=partial.ravel(), minlength=groups * groups)
    return normal.reshape(groups, groups)[:k, :k], rhs[:k]


def _low_rank_whole(original, indices, k, activations, exact=None, exact_values=None):
    """The version before: each chunk's one-hot matrix and projections built at once."""
    from scipy import sparse
    rows, inputs = indices.shape
    groups = k + 1 if exact is not None else k
    normal, rhs = np.zeros((groups, groups)), np.zeros(groups)
    xt = np.ascontiguousarray(activations.T)
    for part in reconstruction.row_chunks(rows, inputs):
        idx = np.asarray(indices[part], dtype=np.int64)
        target = np.asarray(original[part], dtype=np.float32)
        if exact is not None:
            idx = np.where(exact[part], k, idx)
            target = target - np.where(exact[part], np.asarray(exact_values[part], dtype=np.float32), 0.0).astype(np.float32)
        count = len(idx)
        picks = (np.arange(count)[:, None] * groups + idx).ravel()
        onehot = sparse.csr_matrix((np.ones(count * inputs, dtype=np.float32), (picks, np.tile(np.arange(inputs), count))),
                                   shape=(count * groups, inputs))
        z = np.asarray(onehot @ xt, dtype=np.float64).reshape(count, groups, -1)
        normal += np.einsum("rgn,rhn->gh", z, z)
        rhs += np.einsum("rgn,rn->g", z, (target @ xt).astype(np.float64))
    return normal[:k, :k], rhs[:k]


def _problem(rows=203, inputs=96, k=9, samples=4, seed=3):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, inputs)).astype(np.float32)
    x = rng.standard_normal((samples, inputs)).astype(np.float32)
    gram = (x.T @ x).astype(np.float64) + np.eye(inputs)
    indices = rng.integers(0, k, size=(rows, inputs)).astype(np.uint8)
    exact = rng.random((rows, inputs)) < 0.02
    values = np.where(exact, rng.standard_normal((rows, inputs)), 0.0).astype(np.float32)
    flat = np.flatnonzero(exact)
    return w, x, gram, indices, exact, values, OutlierRows(flat, values.ravel()[flat], exact.shape)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few rows, none a multiple of the others, so every boundary case is crossed."""
    monkeypatch.setattr(reconstruction, "DENSE_CHUNK_ELEMENTS", 96 * 37)
    monkeypatch.setattr(reconstruction, "ROW_CHUNK_ELEMENTS", 96 * 50)
    monkeypatch.setattr(reconstruction, "LOW_RANK_SPARSE_ROWS", 7)


@pytest.mark.parametrize("with_outliers", [False, True])
@pytest.mark.parametrize("sequential", [False, True])
def test_normal_equations_in_blocks_equal_whole(small_blocks, with_outliers, sequential):
    w, x, gram, indices, exact, values, sparse_values = _problem()
    cross = gram * 0.9 if sequential else None
    args = (exact, values) if with_outliers else (None, None)
    expected = _normal_equations_whole(w, indices, 9, gram, cross, *args)
    for given in ([values, sparse_values] if with_outliers else [None]):
        got = reconstruction.normal_equations(w, indices, 9, gram, cross, *(exact, given) if with_outliers else args)
        np.testing.assert_array_equal(got[0], expected[0])  # bincounts of the same rows in the same order
        np.testing.assert_allclose(got[1], expected[1], rtol=PRODUCT_RTOL_64)


@pytest.mark.parametrize("with_outliers", [False, True])
def test_low_rank_normal_equations_equal_whole(small_blocks, with_outliers):
    w, x, gram, indices, exact, values, sparse_values = _problem()
    args = (exact, values) if with_outliers else (None, None)
    expected = _low_rank_whole(w, indices, 9, x, *args)
    got = reconstruction.normal_equations_low_rank(w, indices, 9, x, *(exact, sparse_values) if with_outliers else args)
    np.testing.assert_array_equal(got[0], expected[0])  # the one-hot sums Z_i are built row by row either way
    np.testing.assert_allclose(got[1], expected[1], rtol=PRODUCT_RTOL_32)


@pytest.mark.parametrize("sequential", [False, True])
def test_row_errors_and_decoded_errors_in_blocks(small_blocks, sequential):
    w, x, gram, indices, exact, values, sparse_values = _problem()
    codebook = np.linspace(-2, 2, 9).astype(np.float32)
    cross, gram_o = (gram * 0.9, gram * 1.1) if sequential else (None, None)
    decoded = np.where(exact, values, codebook[indices])
    original = w.astype(np.float64)
    if cross is None:
        diff = decoded - original
        whole = ((diff @ gram) * diff).sum(axis=1)
    else:
        whole = (((decoded @ gram) * decoded).sum(axis=1) - 2 * ((decoded @ cross) * original).sum(axis=1)
                 + ((original @ gram_o) * original).sum(axis=1))
    blocks = reconstruction.row_errors(decoded, original, gram, cross, gram_o)
    np.testing.assert_allclose(blocks, whole, rtol=PRODUCT_RTOL_64)
    got = reconstruction.decoded_errors(codebook, indices, w, gram, cross, gram_o, exact=exact,
                                        exact_values=sparse_values, dtype=np.float64)
    np.testing.assert_array_equal(got, blocks)  # decoding in blocks: the same rows as the whole decoded array


def test_outlier_rows_slices_are_the_dense_blocks():
    _, _, _, _, exact, values, sparse_values = _problem()
    for part in (slice(0, 203), slice(5, 6), slice(17, 150), slice(200, 203), slice(203, 203), slice(190, 400)):
        block = sparse_values[part]
        assert block.dtype == np.float32
        np.testing.assert_array_equal(block, values[part])
    with pytest.raises(IndexError):
        sparse_values[::2]


@pytest.mark.parametrize("inputs", [96, 4100])  # float64 and float32 inverse factors
def test_round_to_codebook_sparse_values_are_the_dense_ones(inputs):
    from onnxcomp.core import obs
    rng = np.random.default_rng(5)
    rows = rng.standard_normal((40, inputs)).astype(np.float32)
    x = rng.standard_normal((8, inputs)).astype(np.float32)
    gram = x.T @ x if inputs > 2048 else (x.T @ x).astype(np.float64)
    exact = rng.random(rows.shape) < 0.03
    codebook = np.linspace(-2, 2, 16).astype(np.float32)
    factor = obs.inverse_factor_in_place(gram=gram) if gram.dtype == np.float32 else obs._inverse_factor(gram, 0.01)
    dense_indices, dense = obs.round_to_codebook(rows, None, codebook, None, exact=exact, factor=factor)
    indices, values = obs.round_to_codebook(rows, None, codebook, None, exact=exact, factor=factor, dense_values=False)
    np.testing.assert_array_equal(indices, dense_indices)
    assert values.dtype == np.float32 and values.shape == (int(exact.sum()),)
    np.testing.assert_array_equal(values, dense[exact])
    assert np.any(values != rows[exact])  # compensated: the outliers moved with the earlier roundings
