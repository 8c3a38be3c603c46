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
    from scipy import linalg  # imported here: compressing without calibration data never needs scipy (0.4 s)

    original = original.astype(np.float64)
    lam = ridge * float(np.mean(np.diag(gram))) + 1e-12
    refit = np.where(keep, original if start is None else start, 0.0)
    base = row_errors(refit, original, gram, cross, gram_original)
    target = (gram if cross is None else cross) @ original.T  # [inputs, outputs]: G w_i (or X_c^T X_o w_i)
    candidates = refit.copy()
    solved = np.zeros(len(original), dtype=bool)
    for i in range(len(original)):
        support = np.flatnonzero(keep[i])
        if len(support) == 0 or len(support) == keep.shape[1]:
            continue
        system = gram[np.ix_(support, support)]
        system[np.diag_indices_from(system)] += lam  # G_SS + lambda I: symmetric positive definite
        row = np.zeros(original.shape[1])
        row[support] = linalg.solve(system, target[support, i], assume_a="pos", overwrite_a=True, check_finite=False)
        candidates[i], solved[i] = row, True
    better = solved & (row_errors(candidates, original, gram, cross, gram_original) < base)
    refit[better] = candidates[better]
    return refit.astype(np.float32)


ROW_CHUNK = 16  # rows whose one-hot index matrices are multiplied by the Gram matrix at once


def normal_equations(original: np.ndarray, indices: np.ndarray, k: int, gram: np.ndarray,
                     cross: np.ndarray | None = None, exact: np.ndarray | None = None,
                     exact_values: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(sum_i M_i^T G M_i, sum_i M_i^T (G w_i - G_:O v_O))``: float64 [k, k] and [k] for rows ``original`` and
    ``indices`` [outputs, inputs] into a codebook of ``k`` entries; outliers (``exact``) belong to no entry.

    Each row's one-hot matrix M_i [inputs, k] is sparse (one 1 per input), so ``M_i^T G`` is a sum of rows of G
    (inputs^2 additions, not inputs^2 * k multiplications): a chunk of rows is one sparse-times-dense product,
    and ``(M_i^T G) M_i`` a bincount. Outliers go to an extra group k that is dropped at the end, which equals
    removing their rows and columns from G. Cost O(outputs * inputs^2) additions, memory O(ROW_CHUNK * k * inputs)."""
    from scipy import sparse

    rows, inputs = indices.shape
    groups = k + 1 if exact is not None else k
    idx = np.asarray(indices, dtype=np.int64)
    gw = np.asarray(original, dtype=np.float64) @ (gram if cross is None else cross).T  # rows of (G w_i)^T
    if exact is not None:
        idx = np.where(exact, k, idx)
        fixed = np.where(exact, np.asarray(exact_values, dtype=np.float64), 0.0)
        gw = gw - fixed @ gram  # G is symmetric: (G_:O v_O)^T
    rhs = np.bincount(idx.ravel(), weights=gw.ravel(), minlength=groups)
    normal = np.zeros(groups * groups)
    gram = np.ascontiguousarray(gram, dtype=np.float64)
    for start in range(0, rows, ROW_CHUNK):
        chunk = idx[start:start + ROW_CHUNK]
        count = len(chunk)
        # one-hot rows (row i, group a) x inputs: entry 1 where input p of row i takes group a
        picks = (np.arange(count)[:, None] * groups + chunk).ravel()
        onehot = sparse.csr_matrix((np.ones(count * inputs), (picks, np.tile(np.arange(inputs), count))),
                                   shape=(count * groups, inputs))
        partial = np.asarray(onehot @ gram).reshape(count, groups, inputs)  # M_i^T G per row
        cell = np.arange(groups)[None, :, None] * groups + chunk[:, None, :]  # (a, idx_i(q)) -> a * groups + b
        normal += np.bincount(cell.ravel(), weights=partial.ravel(), minlength=groups * groups)
    normal = normal.reshape(groups, groups)
    return normal[:k, :k], rhs[:k]


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
    normal, rhs = normal_equations(original, indices, k, gram, cross, exact, exact_values)
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
