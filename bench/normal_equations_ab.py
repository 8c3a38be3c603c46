"""reconstruction.normal_equations' sparse product, one-hot chunks compressed by rows (before branch calvgg11) against
by columns (since): process CPU seconds of one chunk of ROW_CHUNK rows (best of 3), and of the whole function on ROWS
rows with the results compared bit for bit; a float32 Gram of random rows, one BLAS thread.
usage: python bench/normal_equations_ab.py [--inputs K] [--rows ROWS] [--bits 2,4,6]"""
import argparse
import time

import numpy as np
from scipy import sparse
from threadpoolctl import threadpool_limits

from onnxcomp.core import reconstruction

parser = argparse.ArgumentParser()
parser.add_argument("--inputs", type=int, default=4608)
parser.add_argument("--rows", type=int, default=64)
parser.add_argument("--bits", default="2,4,6")
args = parser.parse_args()
rng = np.random.default_rng(0)
x = rng.standard_normal((2 * args.inputs, args.inputs)).astype(np.float32)
gram = x.T @ x
dense = gram.astype(np.float64)
w = rng.standard_normal((args.rows, args.inputs)).astype(np.float32)
by_columns = sparse.csc_matrix


def best(function, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.process_time()
        function()
        times.append(time.process_time() - start)
    return min(times)


with threadpool_limits(limits=1):
    for bits in [int(b) for b in args.bits.split(",")]:
        k, count = 2 ** bits, reconstruction.ROW_CHUNK
        chunk = rng.integers(0, k, size=(count, args.inputs))
        entries = (np.ones(count * args.inputs), ((np.arange(count)[:, None] * k + chunk).ravel(), np.tile(np.arange(args.inputs), count)))
        chunk_times = [best(lambda: form(entries, shape=(count * k, args.inputs)) @ dense) for form in (sparse.csr_matrix, by_columns)]
        indices = rng.integers(0, k, size=(args.rows, args.inputs)).astype(np.uint8)
        results, whole = [], []
        for form in (sparse.csr_matrix, by_columns):
            sparse.csc_matrix = form  # normal_equations builds its chunks with sparse.csc_matrix
            start = time.process_time()
            results.append(reconstruction.normal_equations(w, indices, k, gram))
            whole.append(time.process_time() - start)
        sparse.csc_matrix = by_columns
        same = all(np.array_equal(a, b) for a, b in zip(*results))
        print(f"K {args.inputs}, {bits} bits: one chunk {chunk_times[0]:.3f} s by rows, {chunk_times[1]:.3f} s by columns; "
              f"{args.rows} rows: {whole[0]:.2f} s, {whole[1]:.2f} s; bits identical: {same}", flush=True)
