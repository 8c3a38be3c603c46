"""CPU seconds of reconstruction.refit_rows, exact (iterations 0) against CG (CG_ITERATIONS), on a float32 Gram of
K inputs from correlated random rows, `rows` rows pruned per row (wanda's row mask on |w|) at each sparsity; layer
errors of both. usage: python bench/refit_cg.py K ROWS SPARSITY[,..]"""
import sys, time
import numpy as np
from onnxcomp.core import pruning, reconstruction
k, rows, sparsities = int(sys.argv[1]), int(sys.argv[2]), [float(s) for s in sys.argv[3].split(",")]
rng = np.random.default_rng(0)
x = (rng.standard_normal((3 * k, k // 8)) @ rng.standard_normal((k // 8, k)) + 0.3 * rng.standard_normal((3 * k, k))).astype(np.float32)
gram = x.T @ x  # float32, as calibration keeps it above GRAM_FLOAT64_FEATURES inputs
w = rng.standard_normal((rows, k)).astype(np.float32)
for sparsity in sparsities:
    keep = pruning.row_keep_mask(np.abs(w), sparsity)
    out = []
    for iterations in (0, reconstruction.CG_ITERATIONS):
        c = time.process_time()
        refit = reconstruction.refit_rows(w, keep, gram, 1e-2, start=w, iterations=iterations)
        seconds = time.process_time() - c
        out.append((seconds, reconstruction.row_errors(refit.astype(np.float64), w.astype(np.float64), gram).sum()))
    print(f"K {k} rows {rows} sparsity {sparsity}: exact {out[0][0]:.2f} s, CG {out[1][0]:.2f} s, "
          f"layer error CG / exact {out[1][1] / out[0][1]:.4f}", flush=True)
