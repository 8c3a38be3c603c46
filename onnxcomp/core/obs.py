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
  With ``order`` (``rounding_order``: the inputs by decreasing ``H_jj``, GPTQ's "act-order", Frantar et al. 2023,
  section 4) the columns are rounded in that order, the factor being that of H permuted alike (``layer_factor``
  with ``ordered``): the inputs that carry the most energy are rounded first, while every other column can still
  compensate them, and the low-energy ones, whose error costs least, take the accumulated compensation last. On
  the zoo's YOLOv8n convolutions at 3-4 bits it lowered the layer error ``||X (W - Q)||^2`` by 15-52 % (median
  about 25 %) at the same record size, but not on pruned layers, and on held-back samples the gain mostly went
  (docs/benchmarks.md, branch calcnn11). ``ACT_ORDER`` switches it for the pipeline (share_weights: compensated
  rounding); off by default.

Inputs that never fire (``H_jj = 0``) carry no signal: their weights are pruned first and get no update.
"""

from __future__ import annotations

import os

import numpy as np
from threadpoolctl import threadpool_limits

from onnxcomp.core.codebook import assign, index_dtype

BLOCK = 128
# The pipeline's compensated rounding order: False (default) the inputs' own order; True every weight by decreasing
# H_jj (rounding_order); "unpruned" only weights whose pruning mask keeps every value. Environment ONNXCOMP_ACT_ORDER
# = 1 | unpruned. Off by default: on YOLOv8n's calibrated allocation near 8x it raised the held-back error (branch
# calcnn11, docs/benchmarks.md).
ACT_ORDER: bool | str = {"1": True, "unpruned": "unpruned"}.get(os.environ.get("ONNXCOMP_ACT_ORDER", ""), False)


def act_order_for(keep: np.ndarray | None) -> bool:
    """Whether a weight with pruning mask ``keep`` (None: nothing pruned) is rounded in act-order (ACT_ORDER)."""
    if ACT_ORDER == "unpruned":
        return keep is None or bool(np.all(keep))
    return bool(ACT_ORDER)


def rounding_order(gram_diagonal: np.ndarray) -> np.ndarray:
    """int64 [K]: the inputs by decreasing energy ``H_jj = sum_rows x_j^2`` (``gram_diagonal`` [K], any float
    dtype), ties in input order (stable), dead inputs (``H_jj <= 0``) last: the order in which round_to_codebook
    rounds columns with act-order (module docstring)."""
    diagonal = np.asarray(gram_diagonal, dtype=np.float64)
    return np.argsort(-np.where(diagonal > 0, diagonal, 0.0), kind="stable")


def _damped(gram: np.ndarray, damp: float) -> tuple[np.ndarray, np.ndarray]:
    """(H + damp mean(diag H) I with dead inputs given a unit diagonal, mask of dead inputs)."""
    h = np.array(gram, dtype=np.float64)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    live = np.diag(h)[~dead]
    h[np.diag_indices_from(h)] += damp * (float(live.mean()) if len(live) else 1.0)
    return h, dead


def _inverse_factor(gram: np.ndarray, damp: float, order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(upper Cholesky factor of the damped H^-1, mask of dead inputs). A float32 ``gram`` takes the in-place
    float32 route (inverse_factor_in_place). With ``order`` [K] (a permutation), of H permuted to that order
    (``H[order][:, order]``), the mask in that order too."""
    if gram.dtype == np.float32:
        return inverse_factor_in_place(gram=gram, damp=damp, order=order)
    h, dead = _damped(gram if order is None else gram[np.ix_(order, order)], damp)
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
                            damp: float = 0.01, order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The upper Cholesky factor U of the damped H^-1 (H^-1 = U^T U) and the dead-input mask, like _inverse_factor,
    from ``gram`` G [K, K] or from the rows ``activations`` X [N, K] (G = X^T X), in the dtype given (float32 here),
    with one K x K array in all: with P the order-reversing permutation, P H P = L L^T (Cholesky) gives
    H^-1 = (P L^-T P)(P L^-1 P), and P L^-1 P is upper triangular with a positive diagonal, hence U. The
    permuted damped H is formed in a fresh array, factored and inverted in place (LAPACK potrf, trtri); U is
    returned as a reversed view of it. With ``order`` [K] (a permutation), U and the mask are those of H permuted
    to that order (the fresh array is then formed by that permutation reversed: still one K x K array)."""
    from scipy.linalg import lapack
    source = gram if gram is not None else activations
    k = source.shape[1]
    scale = None
    for attempt in range(7):  # raise the damping if H is not numerically positive definite
        backwards = None if order is None else np.asarray(order)[::-1]
        if gram is not None:  # P G P (symmetric: its transpose is the same matrix)
            h = np.ascontiguousarray(gram[::-1, ::-1]) if backwards is None else gram[np.ix_(backwards, backwards)]
        else:
            reversed_rows = np.ascontiguousarray(activations[:, ::-1] if backwards is None else activations[:, backwards])
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


def cached_inverse_factor(statistics, damp: float = 0.01, ordered: bool = False) -> tuple | None:
    """``_inverse_factor`` of a layer's Gram matrix, kept on its statistics when they allow it
    (``statistics.factor_cache`` is a dict: the budget search rounds one layer many times); None otherwise.
    ``ordered``: as layer_factor."""
    cache = getattr(statistics, "factor_cache", None)
    if cache is None or (statistics.dense_gram is None and statistics.activations is None):
        return None
    if (damp, ordered) not in cache:
        cache[damp, ordered] = _layer_factor(statistics, damp, ordered)
    return cache[damp, ordered]


def layer_factor(statistics, damp: float = 0.01, ordered: bool = False) -> tuple:
    """``_inverse_factor`` of a layer's statistics (calibration.LayerStatistics): from its rows when it keeps
    them, else from its Gram matrix; kept on the statistics when they allow it (cached_inverse_factor: the
    budget's sensitivity trials round one layer up to 66 times; before, this only read the cache, and the
    factor was recomputed on every trial, 14 % of MiniLM-L3's sensitivity analysis). ``ordered``: (U, dead mask,
    order) of H permuted to ``rounding_order`` (act-order; round_to_codebook's ``factor`` and ``order``)."""
    cache = getattr(statistics, "factor_cache", None)
    if cache is not None:
        return cached_inverse_factor(statistics, damp, ordered)
    return _layer_factor(statistics, damp, ordered)


def _layer_factor(statistics, damp: float, ordered: bool = False) -> tuple:
    order = None
    if ordered:
        x = statistics.activations
        order = rounding_order(np.einsum("rk,rk->k", x, x, dtype=np.float64) if x is not None
                               else np.diagonal(statistics.dense_gram))
    if statistics.activations is not None:
        factor = inverse_factor_in_place(activations=statistics.activations, damp=damp, order=order)
    else:
        factor = _inverse_factor(statistics.dense_gram, damp, order)
    return factor if order is None else (*factor, order)


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
                      factor: tuple[np.ndarray, np.ndarray] | None = None, dense_values: bool = True,
                      order: np.ndarray | None = None):
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
    ``order`` [inputs] (a permutation, e.g. ``rounding_order``): the columns are rounded in that order (act-order,
    module docstring); ``factor`` must then be that of H permuted alike (``layer_factor(..., ordered=True)`` gives
    both; without ``factor``, it is computed from ``gram`` so). The results are in the columns' own order.
    """
    if order is not None:
        return _round_in_order(rows, keep, codebook, gram, damp, block, exact, factor, dense_values, np.asarray(order))
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


def _round_in_order(rows, keep, codebook, gram, damp, block, exact, factor, dense_values, order):
    """round_to_codebook with the columns permuted to ``order`` and the results permuted back."""
    if factor is None:
        factor = _inverse_factor(gram, damp, order)
    factor = factor[:2]
    back = np.argsort(order, kind="stable")
    permuted = None if exact is None else np.asarray(exact, dtype=bool)[:, order]
    result = round_to_codebook(np.asarray(rows)[:, order], None if keep is None else np.asarray(keep)[:, order], codebook,
                               None, damp, block, permuted, factor, dense_values)
    if exact is None:
        return result[:, back]
    indices, values = result
    if dense_values:
        return indices[:, back], values[:, back]
    # values come in the row-major order of the permuted outliers: put them in the row-major order of ``exact``
    rows_at, columns_at = np.nonzero(permuted)
    return indices[:, back], values[np.argsort(rows_at * permuted.shape[1] + order[columns_at], kind="stable")]
