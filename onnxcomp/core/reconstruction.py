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


ROW_CHUNK_ELEMENTS = 1 << 22  # row blocks of at most this many weights for the low-rank forms and the large layers


DENSE_CHUNK_ELEMENTS = 1 << 20  # row blocks of the Gram forms (float64 temporaries: 8 MiB each)


def row_chunks(rows: int, inputs: int, elements: int = ROW_CHUNK_ELEMENTS, multiple: int = 1):
    """Slices of consecutive rows holding at most ``elements`` weights (one slice for a small layer), each a
    multiple of ``multiple`` rows long (but the last) when ``elements`` allows."""
    step = max(1, elements // max(inputs, 1))
    step = max(multiple, step // multiple * multiple)
    return [slice(top, min(top + step, rows)) for top in range(0, rows, step)]


def row_errors(rows: np.ndarray, original: np.ndarray, gram: np.ndarray | None, cross: np.ndarray | None = None,
               gram_original: np.ndarray | None = None, activations: np.ndarray | None = None) -> np.ndarray:
    """Per-row ``||X v - X w||^2``; with ``cross`` = X_c^T X_o and ``gram_original`` = X_o^T X_o (sequential
    mode, where the layer's inputs X_c differ from the original X_o), ``||X_c v - X_o w||^2``. With
    ``activations`` X [N, inputs] (calibration.LayerStatistics keeps them instead of G = X^T X when N is small)
    the same computed as ``||(v - w) X^T||^2``, in row blocks (``gram`` is not read). The Gram forms also go in
    row blocks of DENSE_CHUNK_ELEMENTS weights (each row's error is computed alone, so the blocks give the same
    values as one product over all rows; the temporaries are a block's, not the layer's)."""
    errors = np.empty(len(rows))
    if activations is not None:
        for part in row_chunks(*rows.shape):
            projected = (np.asarray(rows[part], dtype=np.float32) - np.asarray(original[part], dtype=np.float32)) @ activations.T
            errors[part] = np.einsum("rn,rn->r", projected, projected, dtype=np.float64)
        return errors
    for part in row_chunks(*rows.shape, DENSE_CHUNK_ELEMENTS):
        v, w = rows[part], original[part]
        if cross is None:
            diff = v - w
            errors[part] = ((diff @ gram) * diff).sum(axis=1)
        else:
            errors[part] = (((v @ gram) * v).sum(axis=1) - 2 * ((v @ cross) * w).sum(axis=1)
                            + ((w @ gram_original) * w).sum(axis=1))
    return errors


def decoded_errors(codebook: np.ndarray, indices: np.ndarray, original: np.ndarray, gram: np.ndarray | None,
                   cross: np.ndarray | None = None, gram_original: np.ndarray | None = None,
                   activations: np.ndarray | None = None, exact: np.ndarray | None = None,
                   exact_values=None, dtype=None) -> np.ndarray:
    """``row_errors`` of the rows ``codebook[indices]`` (outliers ``exact`` replaced by ``exact_values``, all
    [outputs, inputs]; ``exact_values`` may be anything whose row slices are dense blocks, such as
    share_weights.OutlierRows) against ``original``, decoded one row block at a time instead of into a whole
    [outputs, inputs] array; ``dtype`` converts each block of ``original`` (refit_codebook: float64). Float64
    [outputs]."""
    errors = np.empty(len(indices))
    for part in row_chunks(*indices.shape, DENSE_CHUNK_ELEMENTS):
        decoded = codebook[indices[part]]
        if exact is not None:
            decoded = np.where(exact[part], exact_values[part], decoded)
        errors[part] = row_errors(decoded, original[part] if dtype is None else np.asarray(original[part], dtype=dtype),
                                  gram, cross, gram_original, activations)
    return errors


CG_ITERATIONS = 50  # refit_rows(iterations=...): the sensitivity trials' conjugate-gradient steps
CG_TOLERANCE = 1e-4  # ... stopping once every row's residual is below this fraction of its right-hand side
# A row is solved exactly when its support s has s^3 / 3 <= CG_EXACT_COST * 2 * iterations * inputs^2 (the flops of
# a Cholesky solve against those of its conjugate-gradient steps): one thread ran posv at ~3.5 GFLOP/s (768 x 768)
# and the batched steps' products at ~12 GFLOP/s here, so an exact solve costs as much as CG at about 0.3x its flops.
CG_EXACT_COST = 0.3


def refit_rows(original: np.ndarray, keep: np.ndarray, gram: np.ndarray, ridge: float = 1e-2,
               cross: np.ndarray | None = None, gram_original: np.ndarray | None = None,
               start: np.ndarray | None = None, iterations: int = 0, tolerance: float = CG_TOLERANCE) -> np.ndarray:
    """Refit the kept weights of every row of ``original`` [outputs, inputs]; pruned ones stay 0.
    With ``cross``/``gram_original`` (sequential mode) the target is the original layer on original inputs.
    ``start`` (default: the original with pruned weights zeroed) is what a row keeps when the refit is no better.

    ``iterations`` > 0 (the budget's sensitivity trials; ``compress`` solves exactly): the rows whose exact solve
    would take longer than their share of ``iterations`` conjugate-gradient steps (support s with
    s^3 / 3 > CG_EXACT_COST * 2 * iterations * inputs^2: the rows of a layer pruned lightly) are
    solved approximately, all at once, by Jacobi-preconditioned conjugate gradients restricted to each row's
    kept inputs, started from the row's start values (Hestenes and Stiefel 1952; Saad, Iterative Methods for
    Sparse Linear Systems, 2nd ed. 2003, algorithm 9.1): one [rows, inputs] x [inputs, inputs] product per step
    instead of one s^3 / 3 factorisation per row, at most ``iterations`` steps, stopping once every row's
    residual norm is below ``tolerance`` times its right-hand side's. The other rows are solved exactly, as
    with ``iterations`` 0. Float32 [outputs, inputs]."""
    # imported here: compressing without calibration data never needs scipy (0.4 s); and before the BLAS limit below,
    # which threadpoolctl applies to the libraries loaded when it starts (scipy's OpenBLAS is loaded by this import:
    # limited after it, the first call's solves ran on 2 OpenBLAS threads, 15 s instead of 0.4 s on a loaded machine)
    from scipy.linalg import lapack
    with threadpool_limits(limits=1, user_api="blas"):  # many small solves: BLAS threads only add overhead here
        return _refit_rows(lapack, original, keep, gram, ridge, cross, gram_original, start, iterations, tolerance)


def _refit_rows(lapack, original, keep, gram, ridge, cross, gram_original, start, iterations, tolerance) -> np.ndarray:
    original = original.astype(np.float64)
    lam = ridge * float(np.mean(np.diag(gram))) + 1e-12
    refit = np.where(keep, original if start is None else start, 0.0)
    base = row_errors(refit, original, gram, cross, gram_original)
    target = (gram if cross is None else cross) @ original.T  # [inputs, outputs]: G w_i (or X_c^T X_o w_i)
    candidates = refit.copy()
    supports = np.count_nonzero(keep, axis=1)
    solved = (supports > 0) & (supports < keep.shape[1])
    iterative = solved & (supports.astype(np.float64) ** 3 / 3 > CG_EXACT_COST * 2 * iterations * keep.shape[1] ** 2) \
        if iterations > 0 else np.zeros(len(original), dtype=bool)
    posv = lapack.get_lapack_funcs("posv", (gram, target))
    for i in np.flatnonzero(solved & ~iterative):
        support = np.flatnonzero(keep[i])
        system = gram[np.ix_(support, support)]
        system[np.diag_indices_from(system)] += lam  # G_SS + lambda I: symmetric positive definite
        row = np.zeros(original.shape[1])
        # LAPACK posv (Cholesky factor and solve): the same factorisation and triangular solves as
        # scipy.linalg.solve(assume_a="pos"), bit for bit, without its condition-number estimate (half the time)
        _, row[support], info = posv(system, target[support, i], lower=0, overwrite_a=1, overwrite_b=0)
        if info != 0:
            raise np.linalg.LinAlgError(f"the ridge system of row {i} is not positive definite (LAPACK posv info {info})")
        candidates[i] = row
    if iterative.any():
        candidates[iterative] = _conjugate_gradients(keep[iterative], gram, target[:, iterative].T, lam,
                                                     refit[iterative], iterations, tolerance)
    better = solved & (row_errors(candidates, original, gram, cross, gram_original) < base)
    refit[better] = candidates[better]
    return refit.astype(np.float32)


def _conjugate_gradients(keep: np.ndarray, gram: np.ndarray, target: np.ndarray, lam: float, start: np.ndarray,
                         iterations: int, tolerance: float) -> np.ndarray:
    """Approximate solutions of ``(G_SS + lam I) v_S = target_S`` for every row (S: the row's ``keep``), float64
    [rows, inputs], zero outside S; ``target`` [rows, inputs]; see refit_rows."""
    mask = np.asarray(keep, dtype=np.float64)
    gram = np.asarray(gram, dtype=np.float64)
    rhs = mask * target
    x = np.where(keep, start, 0.0)
    residual = rhs - (mask * (x @ gram) + lam * x)
    inverse_diagonal = 1.0 / (np.diag(gram) + lam)  # the Jacobi preconditioner
    z = residual * inverse_diagonal
    direction = z.copy()
    rz = np.einsum("ij,ij->i", residual, z)
    limit = (tolerance * np.linalg.norm(rhs, axis=1)) ** 2
    for _ in range(iterations):
        if np.all(np.einsum("ij,ij->i", residual, residual) <= limit):
            break
        product = mask * (direction @ gram) + lam * direction
        curvature = np.einsum("ij,ij->i", direction, product)
        step = np.divide(rz, curvature, out=np.zeros_like(rz), where=curvature > 0)
        x += step[:, None] * direction
        residual -= step[:, None] * product
        z = residual * inverse_diagonal
        rz_next = np.einsum("ij,ij->i", residual, z)
        direction = z + np.divide(rz_next, rz, out=np.zeros_like(rz), where=rz > 0)[:, None] * direction
        rz = rz_next
    return x


ROW_CHUNK = 16  # rows whose one-hot index matrices are multiplied by the Gram matrix at once


def float64_operand(matrix: np.ndarray) -> np.ndarray:
    """``matrix`` (any float dtype, possibly a transposed view) as the right operand that numpy's product of a
    float64 array by it multiplies with: the array itself when float64, else a C-contiguous float64 copy, the
    operand numpy's mixed float64 @ float32 product casts it to (each time: 170 MB for a 4,608 x 4,608 Gram
    matrix). Multiplying by this copy gives the mixed product's bits; multiplying by a transposed view of a cast
    copy does not (a different BLAS call: other bits on products of 1-12 rows, numpy 2 / OpenBLAS)."""
    if matrix.dtype == np.float64:
        return matrix
    return np.ascontiguousarray(matrix, dtype=np.float64)


def normal_equations(original: np.ndarray, indices: np.ndarray, k: int, gram: np.ndarray,
                     cross: np.ndarray | None = None, exact: np.ndarray | None = None,
                     exact_values: np.ndarray | None = None, wide: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(sum_i M_i^T G M_i, sum_i M_i^T (G w_i - G_:O v_O))``: float64 [k, k] and [k] for rows ``original`` and
    ``indices`` [outputs, inputs] into a codebook of ``k`` entries; outliers (``exact``) belong to no entry.

    Each row's one-hot matrix M_i [inputs, k] is sparse (one 1 per input), so ``M_i^T G`` is a sum of rows of G
    (inputs^2 additions, not inputs^2 * k multiplications): a chunk of rows is one sparse-times-dense product,
    and ``(M_i^T G) M_i`` a bincount. Outliers go to an extra group k that is dropped at the end, which equals
    removing their rows and columns from G. Cost O(outputs * inputs^2) additions, memory O(ROW_CHUNK * k * inputs).
    ``wide``: ``float64_operand(gram)`` when the caller has it (refit_codebook), else cast here."""
    from scipy import sparse

    rows, inputs = indices.shape
    groups = k + 1 if exact is not None else k
    rhs = np.zeros(groups)
    normal = np.zeros(groups * groups)
    dense = wide if wide is not None and wide.flags.c_contiguous else np.ascontiguousarray(gram, dtype=np.float64)
    # the float64 products below multiply by a float32 G's float64 copies cast once, not per row block (the same
    # bits: float64_operand); G^T is G itself when G is symmetric bit for bit (the calibration's is)
    weights = cross.T if cross is not None else gram.T if gram.dtype == np.float64 else (
        dense if np.array_equal(gram, gram.T) else float64_operand(gram.T))
    # row blocks of DENSE_CHUNK_ELEMENTS weights (a multiple of ROW_CHUNK rows): np.add.at adds each block's
    # G w_i into the right-hand side in the same order as one bincount over all rows would
    for part in row_chunks(rows, inputs, DENSE_CHUNK_ELEMENTS, ROW_CHUNK):
        idx = np.asarray(indices[part], dtype=np.int64)
        gw = np.asarray(original[part], dtype=np.float64) @ weights  # rows of (G w_i)^T
        if exact is not None:
            idx = np.where(exact[part], k, idx)
            fixed = np.where(exact[part], np.asarray(exact_values[part], dtype=np.float64), 0.0)
            gw = gw - fixed @ dense  # G is symmetric: (G_:O v_O)^T
            del fixed
        np.add.at(rhs, idx.ravel(), gw.ravel())
        del gw
        for start in range(0, len(idx), ROW_CHUNK):
            chunk = idx[start:start + ROW_CHUNK]
            count = len(chunk)
            # one-hot rows (row i, group a) x inputs: entry 1 where input p of row i takes group a
            picks = (np.arange(count)[:, None] * groups + chunk).ravel()
            # compressed by columns: the product walks the inputs p in order, reading row p of G once and adding it
            # to each of the chunk's rows (p's entry in each); by rows, each (row, entry) pair read its inputs' rows
            # of G again, ROW_CHUNK passes over a G that no cache holds (K = 4,608: 170 MB). Each output row gets the
            # same rows of G added in the same order (p ascending) either way, so the same bits; 1.2-2.9x faster at
            # K = 4,608, 2-6 bits (branch calvgg11, docs/benchmarks.md)
            onehot = sparse.csc_matrix((np.ones(count * inputs), (picks, np.tile(np.arange(inputs), count))),
                                       shape=(count * groups, inputs))
            partial = np.asarray(onehot @ dense).reshape(count, groups, inputs)  # M_i^T G per row
            cell = np.arange(groups)[None, :, None] * groups + chunk[:, None, :]  # (a, idx_i(q)) -> a * groups + b
            normal += np.bincount(cell.ravel(), weights=partial.ravel(), minlength=groups * groups)
    normal = normal.reshape(groups, groups)
    return normal[:k, :k], rhs[:k]


LOW_RANK_SPARSE_ROWS = 64  # rows whose one-hot matrices are built at once in normal_equations_low_rank


def normal_equations_low_rank(original: np.ndarray, indices: np.ndarray, k: int, activations: np.ndarray,
                              exact: np.ndarray | None = None, exact_values: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``normal_equations`` for G = X^T X given as the rows ``activations`` X [N, inputs]: with Z_i = X M_i [N, k]
    (Z_i[:, a] sums the columns of X whose inputs take entry a in row i), the normal matrix is sum_i Z_i^T Z_i and
    the right-hand side sum_i Z_i^T X (w_i - v_O). Cost O(outputs * inputs * N), memory O(row block * k * N)."""
    from scipy import sparse

    rows, inputs = indices.shape
    groups = k + 1 if exact is not None else k
    normal, rhs = np.zeros((groups, groups)), np.zeros(groups)
    xt = np.ascontiguousarray(activations.T)  # [inputs, N]
    for part in row_chunks(rows, inputs):  # the sums below go chunk by chunk; their terms a few rows at a time
        count = part.stop - part.start
        z = np.empty((count, groups, xt.shape[1]))  # Z_i^T per row
        projected = np.empty((count, xt.shape[1]), dtype=np.float32)  # X^T (w_i - v_O) per row
        for top in range(0, count, LOW_RANK_SPARSE_ROWS):  # each row's Z_i alone: the one-hot matrix of a few rows
            rows_of = slice(part.start + top, min(part.start + top + LOW_RANK_SPARSE_ROWS, part.stop))
            block = np.asarray(indices[rows_of], dtype=np.int64)
            target = np.asarray(original[rows_of], dtype=np.float32)
            if exact is not None:
                block = np.where(exact[rows_of], k, block)
                target = target - np.where(exact[rows_of], np.asarray(exact_values[rows_of], dtype=np.float32), 0.0).astype(np.float32)
            projected[top:top + len(block)] = target @ xt
            picks = (np.arange(len(block))[:, None] * groups + block).ravel()
            onehot = sparse.csr_matrix((np.ones(block.size, dtype=np.float32), (picks, np.tile(np.arange(inputs), len(block)))),
                                       shape=(len(block) * groups, inputs))
            z[top:top + len(block)] = np.asarray(onehot @ xt, dtype=np.float64).reshape(len(block), groups, -1)
        normal += np.einsum("rgn,rhn->gh", z, z)
        rhs += np.einsum("rgn,rn->g", z, projected.astype(np.float64))
    return normal[:k, :k], rhs[:k]


@threadpool_limits.wrap(limits=1, user_api="blas")
def refit_codebook(original: np.ndarray, indices: np.ndarray, codebook: np.ndarray, gram: np.ndarray | None,
                   pruned_zero: bool, ridge: float = 1e-6, cross: np.ndarray | None = None,
                   gram_original: np.ndarray | None = None, exact: np.ndarray | None = None,
                   exact_values: np.ndarray | None = None, activations: np.ndarray | None = None) -> np.ndarray:
    """Least-squares shared values for fixed ``indices`` [outputs, inputs]; returns the new codebook.
    ``exact`` [outputs, inputs] marks outliers whose value is ``exact_values`` at the same place, whatever the
    codebook. With ``activations`` X (G = X^T X, see row_errors) the low-rank forms are used and ``gram`` is not read."""
    k = len(codebook)
    first = 1 if pruned_zero else 0
    free = np.arange(first, k)
    if len(free) == 0 or k > MAX_REFIT_CODEBOOK:
        return codebook
    if activations is not None:
        normal, rhs = normal_equations_low_rank(original, indices, k, activations, exact, exact_values)
    else:
        wide = None
        if cross is None:  # G as float64 once for the normal equations and both totals' float64 products (the same
            # bits as the casts each product made per row block: 7-10 casts of 170 MB a refit at 4,608 inputs)
            wide = float64_operand(gram)
        normal, rhs = normal_equations(original, indices, k, gram, cross, exact, exact_values, wide)
        gram = gram if wide is None else wide
    sub = normal[np.ix_(free, free)]
    sub += ridge * (np.trace(sub) / len(free) + 1e-12) * np.eye(len(free))
    candidate = codebook.astype(np.float64).copy()
    try:
        candidate[free] = np.linalg.solve(sub, rhs[free])
    except np.linalg.LinAlgError:
        return codebook
    candidate = candidate.astype(np.float32)

    def total(values: np.ndarray) -> float:  # the Gram forms compare against the original in float64
        if activations is None:
            return decoded_errors(values, indices, original, gram, cross, gram_original, exact=exact,
                                  exact_values=exact_values, dtype=np.float64).sum()
        errors = decoded_errors(values, indices, original, None, activations=activations, exact=exact,
                                exact_values=exact_values)
        result = 0.0
        for part in row_chunks(*indices.shape):  # summed chunk by chunk, as before the rows were decoded in blocks
            result += errors[part].sum()
        return result

    before = total(codebook)
    after = total(candidate)
    return candidate if after < before else codebook
