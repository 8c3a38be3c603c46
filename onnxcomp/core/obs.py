"""Optimal-Brain-Surgeon-style pruning and codebook rounding with error compensation (numpy only).

A layer's output error for a replacement row ``v`` of row ``w`` is ``(v - w)^T H (v - w)`` with
``H = X^T X`` (the calibration Gram matrix, damped by ``damp * mean(diag H)``). Processing the inputs
(columns) in order, fixing column j of every row to a value ``q`` (0 when pruned, a codebook entry when
rounded) and moving the not-yet-fixed columns ``j+1..`` to the best compensation is the OBS update

    e = (w_j - q) / U_jj,    w_{j:} <- w_{j:} - e U_{j, j:}

where ``U`` is the upper Cholesky factor of ``H^-1`` (so that eliminating columns one by one needs no new
inverse: SparseGPT, Frantar & Alistarh 2023; GPTQ for rounding). Columns go in blocks; the error of a block
is pushed to the later columns in one matrix product.

- ``prune``: chooses the mask one block of columns at a time from the OBS saliency ``w^2 / U_jj^2`` of the
  weights as updated so far (the lowest ``sparsity`` fraction of the block, over all rows), and returns the
  mask and the compensated weights.
- ``round_to_codebook``: rounds every kept weight to its nearest non-zero codebook entry (pruned ones to the
  exact 0.0 at index 0) in the same order, compensating each rounding in the later columns; returns indices.

Inputs that never fire (``H_jj = 0``) carry no signal: their weights are pruned first and get no update.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from onnxcomp.core.codebook import assign, index_dtype

BLOCK = 128


def _damped(gram: np.ndarray, damp: float) -> tuple[np.ndarray, np.ndarray]:
    """(H + damp mean(diag H) I with dead inputs given a unit diagonal, mask of dead inputs)."""
    h = np.array(gram, dtype=np.float64)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    live = np.diag(h)[~dead]
    h[np.diag_indices_from(h)] += damp * (float(live.mean()) if len(live) else 1.0)
    return h, dead


def _inverse_factor(gram: np.ndarray, damp: float) -> tuple[np.ndarray, np.ndarray]:
    """(upper Cholesky factor of the damped H^-1, mask of dead inputs). A float32 ``gram`` takes the in-place
    float32 route (inverse_factor_in_place)."""
    if gram.dtype == np.float32:
        return inverse_factor_in_place(gram=gram, damp=damp)
    h, dead = _damped(gram, damp)
    for attempt in range(6):  # raise the damping if the inverse is not numerically positive definite
        try:
            inverse = np.linalg.inv(h)
            symmetric = inverse + inverse.T
            del inverse  # one K x K array fewer alive at the factorisation; the same values as (inverse + inverse.T) / 2
            symmetric /= 2
            return np.linalg.cholesky(symmetric).T, dead
        except np.linalg.LinAlgError:
            h[np.diag_indices_from(h)] += 10.0 ** (attempt - 3) * float(np.mean(np.diag(h)))
    raise np.linalg.LinAlgError("the calibration Gram matrix could not be inverted")


def inverse_factor_in_place(gram: np.ndarray | None = None, activations: np.ndarray | None = None,
                            damp: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """The upper Cholesky factor U of the damped H^-1 (H^-1 = U^T U) and the dead-input mask, like _inverse_factor,
    from ``gram`` G [K, K] or from the rows ``activations`` X [N, K] (G = X^T X), in the dtype given (float32 here),
    with one K x K array in all: with P the order-reversing permutation, P H P = L L^T (Cholesky) gives
    H^-1 = (P L^-T P)(P L^-1 P), and P L^-1 P is upper triangular with a positive diagonal, hence U. The
    permuted damped H is formed in a fresh array, factored and inverted in place (LAPACK potrf, trtri); U is
    returned as a reversed view of it."""
    from scipy.linalg import lapack
    source = gram if gram is not None else activations
    k = source.shape[1]
    scale = None
    for attempt in range(7):  # raise the damping if H is not numerically positive definite
        if gram is not None:
            h = np.ascontiguousarray(gram[::-1, ::-1])  # P G P (symmetric: its transpose is the same matrix)
        else:
            reversed_rows = np.ascontiguousarray(activations[:, ::-1])
            h = reversed_rows.T @ reversed_rows
        diagonal = np.diag_indices(k)
        dead = h[diagonal] <= 0
        h[diagonal[0][dead], diagonal[1][dead]] = 1.0
        if scale is None:
            live = h[diagonal][~dead]
            scale = float(live.astype(np.float64).mean()) if len(live) else 1.0
            extra = damp * scale
        h[diagonal] += h.dtype.type(extra)
        factor, info = lapack.get_lapack_funcs("potrf", (h,))(h.T, lower=1, clean=1, overwrite_a=1)
        if info == 0:
            inverse, info = lapack.get_lapack_funcs("trtri", (factor,))(factor, lower=1, overwrite_c=1)
            if info == 0 and np.all(np.isfinite(np.diagonal(inverse))):
                return inverse[::-1, ::-1], dead[::-1].copy()
        del h, factor
        extra += 10.0 ** (attempt - 3) * scale
    raise np.linalg.LinAlgError("the calibration Gram matrix could not be inverted")


def cached_inverse_factor(statistics, damp: float = 0.01) -> tuple[np.ndarray, np.ndarray] | None:
    """``_inverse_factor`` of a layer's Gram matrix, kept on its statistics when they allow it
    (``statistics.factor_cache`` is a dict: the budget search rounds one layer many times); None otherwise."""
    cache = getattr(statistics, "factor_cache", None)
    if cache is None or (statistics.dense_gram is None and statistics.activations is None):
        return None
    if damp not in cache:
        cache[damp] = _layer_factor(statistics, damp)
    return cache[damp]


def layer_factor(statistics, damp: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """``_inverse_factor`` of a layer's statistics (calibration.LayerStatistics): from its rows when it keeps
    them, else from its Gram matrix; kept on the statistics when they allow it (cached_inverse_factor: the
    budget's sensitivity trials round one layer up to 66 times; before, this only read the cache, and the
    factor was recomputed on every trial, 14 % of MiniLM-L3's sensitivity analysis)."""
    cache = getattr(statistics, "factor_cache", None)
    if cache is not None:
        return cached_inverse_factor(statistics, damp)
    return _layer_factor(statistics, damp)


def _layer_factor(statistics, damp: float) -> tuple[np.ndarray, np.ndarray]:
    if statistics.activations is not None:
        return inverse_factor_in_place(activations=statistics.activations, damp=damp)
    return _inverse_factor(statistics.dense_gram, damp)


def saliency(rows: np.ndarray, gram: np.ndarray, damp: float = 0.01) -> np.ndarray:
    """Classical OBS saliency ``w_ij^2 / [H^-1]_jj`` (the error of removing one weight alone, the others
    compensating); dead inputs score 0."""
    h, dead = _damped(gram, damp)
    scores = np.asarray(rows, dtype=np.float64) ** 2 / np.diag(np.linalg.inv(h))[None, :]
    scores[:, dead] = 0.0
    return scores


@threadpool_limits.wrap(limits=1, user_api="blas")
def prune(rows: np.ndarray, gram: np.ndarray, sparsity: float, damp: float = 0.01,
          block: int = BLOCK, factor: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """OBS pruning of ``rows`` [outputs, inputs]: returns (keep mask, compensated float32 rows). ``factor`` is
    ``_inverse_factor(gram, damp)`` when the caller has it already."""
    w = np.array(rows, dtype=np.float64)
    m, n = w.shape
    u, dead = factor if factor is not None else _inverse_factor(gram, damp)
    w[:, dead] = 0.0
    keep = np.ones((m, n), dtype=bool)
    for start in range(0, n, block):
        stop = min(start + block, n)
        w1, u1 = w[:, start:stop], u[start:stop, start:stop]
        diag = np.diag(u1)
        saliency = w1 ** 2 / diag[None, :] ** 2
        saliency[:, dead[start:stop]] = -1.0  # dead inputs go first
        pruned = int(round(sparsity * saliency.size))
        mask = np.ones(saliency.size, dtype=bool)
        if pruned:
            mask[np.argsort(saliency.ravel(), kind="stable")[:pruned]] = False
        mask = mask.reshape(saliency.shape)
        errors = np.zeros_like(w1)
        for j in range(stop - start):
            target = np.where(mask[:, j], w1[:, j], 0.0)
            e = (w1[:, j] - target) / diag[j]
            w1[:, j:] -= np.outer(e, u1[j, j:])
            w1[:, j] = target
            errors[:, j] = e
        w[:, stop:] -= errors @ u[start:stop, stop:]  # w1 is a view: the block itself is already updated
        keep[:, start:stop] = mask
    return keep, w.astype(np.float32)


ROW_CHUNK_ELEMENTS = 1 << 22  # rows are rounded in chunks of at most this many weights (a layer this small: one chunk)


@threadpool_limits.wrap(limits=1, user_api="blas")
def round_to_codebook(rows: np.ndarray, keep: np.ndarray | None, codebook: np.ndarray, gram: np.ndarray | None,
                      damp: float = 0.01, block: int = BLOCK, exact: np.ndarray | None = None,
                      factor: tuple[np.ndarray, np.ndarray] | None = None, dense_values: bool = True):
    """Indices [outputs, inputs] into the sorted ``codebook`` with OBS compensation of the rounding error.

    With ``keep``, index 0 is the pruned entry (exactly 0.0): pruned weights take it, kept ones take the
    nearest of the others. Without, every weight takes the nearest entry.
    ``exact`` [outputs, inputs] marks outliers stored exactly: they keep their compensated value (no rounding
    error to push on), and the result is ``(indices, values)`` with ``values`` float32 [outputs, inputs]
    holding each outlier's compensated value where ``exact`` is set (0 elsewhere); with ``dense_values`` False,
    ``values`` is float32 [number of outliers] instead, the same values in the row-major order of ``exact``
    (``np.flatnonzero(exact)``), without a dense array of the layer's size. ``factor`` is
    ``_inverse_factor(gram, damp)`` when the caller has it already (``gram`` is then not read).
    Rows are independent (each is compensated within itself): they are processed ROW_CHUNK_ELEMENTS weights at
    a time, in float64, or in float32 when the factor is float32 (layers above calibration.GRAM_FLOAT64_FEATURES
    inputs). Indices are uint8 or uint16 (codebook.index_dtype).
    """
    m, n = rows.shape
    u, _ = factor if factor is not None else _inverse_factor(gram, damp)
    dtype = np.float32 if u.dtype == np.float32 else np.float64
    c = np.asarray(codebook, dtype=np.float64)
    first = 0 if keep is None else 1
    order = np.argsort(c[first:], kind="stable")  # a least-squares refit may have left the entries unsorted
    choices = c[first:][order]
    c = c.astype(dtype, copy=False)
    indices = np.zeros((m, n), dtype=index_dtype(len(c)))
    values = None if exact is None else np.zeros((m, n) if dense_values else 0, dtype=np.float32)
    if len(choices) == 0:
        if exact is None:
            return indices
        return indices, (np.where(exact, rows, 0.0).astype(np.float32) if dense_values
                         else np.asarray(rows, dtype=np.float32)[np.asarray(exact, dtype=bool)])
    parts = []
    chunk = max(1, ROW_CHUNK_ELEMENTS // max(n, 1))
    for top in range(0, m, chunk):
        bottom = min(top + chunk, m)
        w = np.array(rows[top:bottom], dtype=dtype)
        for start in range(0, n, block):
            stop = min(start + block, n)
            w1, u1 = w[:, start:stop], u[start:stop, start:stop]
            errors = np.zeros_like(w1)
            for j in range(stop - start):
                col = w1[:, j]
                idx = order[assign(col, choices)] + first
                if keep is not None:
                    idx = np.where(keep[top:bottom, start + j], idx, 0)
                q = c[idx] if exact is None else np.where(exact[top:bottom, start + j], col, c[idx])
                e = (col - q) / u1[j, j]
                w1[:, j:] -= np.outer(e, u1[j, j:])
                errors[:, j] = e
                indices[top:bottom, start + j] = idx
            w[:, stop:] -= errors @ u[start:stop, stop:]
        if exact is not None and dense_values:
            values[top:bottom] = np.where(exact[top:bottom], w, 0.0)
        elif exact is not None:
            parts.append(w[np.asarray(exact[top:bottom], dtype=bool)].astype(np.float32))
    if exact is not None and not dense_values:
        values = np.concatenate(parts) if parts else values
    return indices if exact is None else (indices, values)
