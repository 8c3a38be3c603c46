"""Post-training reconstruction from calibration statistics (numpy only).

For a layer with input Gram matrix ``G = X^T X`` and original row ``w``, the output error of a replacement
row ``v`` is ``E(v) = (v - w)^T G (v - w) = ||X v - X w||^2``.
- ``refit_rows``: after pruning, each row's surviving weights S solve the ridge least squares
  ``(G_SS + lambda I) v_S = G_S: w`` with ``lambda = ridge * mean(diag G)``; a row keeps its plain pruned
  values whenever the refit would not lower E (so reconstruction never increases the calibration error).
- ``refit_codebook``: with the index assignment fixed, the shared values c minimise
  ``sum_i E(M_i c)`` where ``M_i`` one-hot encodes row i's indices: the normal equations
  ``(sum_i M_i^T G M_i) c = sum_i M_i^T G w_i`` (the pruned entry stays exactly 0). It is the post-training
  counterpart of Deep Compression's fine-tuned centroids; kept only if it lowers the total error, and
  done for codebooks of at most ``MAX_REFIT_CODEBOOK`` entries. Outliers (entries stored exactly, set O of a
  row) are fixed: only the other entries S take codebook values, so the equations use ``G_SS`` and the
  right-hand side ``(G w_i)_S - G_SO v_O``.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits


MAX_REFIT_CODEBOOK = 64  # larger codebooks lose little to k-means, and the normal equations cost O(rows * in^2)


def row_errors(rows: np.ndarray, original: np.ndarray, gram: np.ndarray, cross: np.ndarray | None = None,
               gram_original: np.ndarray | None = None) -> np.ndarray:
    """Per-row ``||X v - X w||^2``; with ``cross`` = X_c^T X_o and ``gram_original`` = X_o^T X_o (sequential
    mode, where the layer's inputs X_c differ from the original X_o), ``||X_c v - X_o w||^2``."""
    if cross is None:
        diff = rows - original
        return ((diff @ gram) * diff).sum(axis=1)
    return (((rows @ gram) * rows).sum(axis=1) - 2 * ((rows @ cross) * original).sum(axis=1)
            + ((original @ gram_original) * original).sum(axis=1))


@threadpool_limits.wrap(limits=1, user_api="blas")  # many small solves: BLAS threads only add overhead here
def refit_rows(original: np.ndarray, keep: np.ndarray, gram: np.ndarray, ridge: float = 1e-2,
               cross: np.ndarray | None = None, gram_original: np.ndarray | None = None,
               start: np.ndarray | None = None) -> np.ndarray:
    """Refit the kept weights of every row of ``original`` [outputs, inputs]; pruned ones stay 0.
    With ``cross``/``gram_original`` (sequential mode) the target is the original layer on original inputs.
    ``start`` (default: the original with pruned weights zeroed) is what a row keeps when the refit is no better."""
    original = original.astype(np.float64)
    lam = ridge * float(np.mean(np.diag(gram))) + 1e-12
    refit = np.where(keep, original if start is None else start, 0.0)
    base = row_errors(refit, original, gram, cross, gram_original)
    target = (gram if cross is None else cross) @ original.T  # [inputs, outputs]: G w_i (or X_c^T X_o w_i)
    for i in range(len(original)):
        support = np.flatnonzero(keep[i])
        if len(support) == 0 or len(support) == keep.shape[1]:
            continue
        system = gram[np.ix_(support, support)] + lam * np.eye(len(support))
        candidate = np.zeros(original.shape[1])
        candidate[support] = np.linalg.solve(system, target[support, i])
        if row_errors(candidate[None, :], original[i:i + 1], gram, cross, gram_original)[0] < base[i]:
            refit[i] = candidate
    return refit.astype(np.float32)


@threadpool_limits.wrap(limits=1, user_api="blas")
def refit_codebook(original: np.ndarray, indices: np.ndarray, codebook: np.ndarray, gram: np.ndarray,
                   pruned_zero: bool, ridge: float = 1e-6, cross: np.ndarray | None = None,
                   gram_original: np.ndarray | None = None, exact: np.ndarray | None = None,
                   exact_values: np.ndarray | None = None) -> np.ndarray:
    """Least-squares shared values for fixed ``indices`` [outputs, inputs]; returns the new codebook.
    ``exact`` [outputs, inputs] marks outliers whose value is ``exact_values`` at the same place, whatever the
    codebook."""
    original = original.astype(np.float64)
    k = len(codebook)
    first = 1 if pruned_zero else 0
    free = np.arange(first, k)
    if len(free) == 0 or k > MAX_REFIT_CODEBOOK:
        return codebook
    normal = np.zeros((k, k))
    rhs = np.zeros(k)
    gw = original @ (gram if cross is None else cross).T  # rows of (G w_i)^T, or (X_c^T X_o w_i)^T
    for i in range(len(original)):
        # M_i^T G M_i sums G over (group a, group b) blocks: sort columns by index, then reduce each group.
        idx, block, target = indices[i], gram, gw[i]
        if exact is not None and exact[i].any():
            shared, fixed = np.flatnonzero(~exact[i]), np.flatnonzero(exact[i])
            idx, block = idx[shared], gram[np.ix_(shared, shared)]
            target = gw[i][shared] - gram[np.ix_(shared, fixed)] @ exact_values[i, fixed].astype(np.float64)
        order = np.argsort(idx, kind="stable")
        counts = np.bincount(idx, minlength=k)
        present = np.flatnonzero(counts)
        starts = np.concatenate([[0], np.cumsum(counts)])[present]
        grouped = np.add.reduceat(block[np.ix_(order, order)], starts, axis=1)
        normal[np.ix_(present, present)] += np.add.reduceat(grouped, starts, axis=0)
        rhs += np.bincount(idx, weights=target, minlength=k)
    sub = normal[np.ix_(free, free)]
    sub += ridge * (np.trace(sub) / len(free) + 1e-12) * np.eye(len(free))
    candidate = codebook.astype(np.float64).copy()
    try:
        candidate[free] = np.linalg.solve(sub, rhs[free])
    except np.linalg.LinAlgError:
        return codebook
    candidate = candidate.astype(np.float32)

    def rows(values: np.ndarray) -> np.ndarray:
        decoded = values[indices]
        return decoded if exact is None else np.where(exact, exact_values, decoded)

    before = row_errors(rows(codebook), original, gram, cross, gram_original).sum()
    after = row_errors(rows(candidate), original, gram, cross, gram_original).sum()
    return candidate if after < before else codebook
