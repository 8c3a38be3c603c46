"""The float64 Gram cast once (branch vgg12) against per-row-block casts of a float32 Gram (before): process CPU
seconds of reconstruction.refit_codebook (normal equations and both totals) and of autotune._Proxy.layer_error on a
vgg16-sized layer, one BLAS thread; each checkout runs in its own subprocess with its own Python, alternately, and the
results are compared bit for bit.
usage: python bench/gram_cast_ab.py BEFORE_PYTHON AFTER_PYTHON [--inputs 4608] [--rows 512] [--bits 4] [--repeats 5]
  (BEFORE_PYTHON / AFTER_PYTHON: the Python of a venv with the checkout to measure installed, e.g. main's)"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

WORKER = r"""
import json, sys, time
from types import SimpleNamespace
import numpy as np
from threadpoolctl import threadpool_limits
from onnxcomp.core import reconstruction
from onnxcomp.pipeline import autotune
inputs, rows, bits, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(0)
x = rng.standard_normal((2 * inputs, inputs)).astype(np.float32) * np.linspace(0.1, 2, inputs).astype(np.float32)
gram = x.T @ x  # float32, as calibration keeps it above GRAM_FLOAT64_FEATURES inputs
w = rng.standard_normal((rows, inputs)).astype(np.float32)
k = 2 ** bits
codebook = np.quantile(w, (np.arange(k) + 0.5) / k).astype(np.float32)
indices = np.abs(w[..., None] - codebook).argmin(-1)
statistics = SimpleNamespace(gram=gram, cross=None)
target = SimpleNamespace(statistics=statistics, original=w, layer_input=SimpleNamespace(layout="nk"))
times = {}
with threadpool_limits(limits=1):
    start = time.process_time()
    refit = reconstruction.refit_codebook(w, indices, codebook, gram, False)
    times["refit_codebook"] = time.process_time() - start
    start = time.process_time()
    proxy = autotune._Proxy(target, "kl")
    times["proxy init"] = time.process_time() - start
    start = time.process_time()
    eps = [proxy.layer_error(refit[indices]) for _ in range(3)]
    times["3 layer errors"] = time.process_time() - start
np.savez(out, refit=refit, eps=np.array(eps), energy=np.array(proxy.energy))
print(json.dumps(times))
"""

parser = argparse.ArgumentParser()
parser.add_argument("before")
parser.add_argument("after")
parser.add_argument("--inputs", type=int, default=4608)
parser.add_argument("--rows", type=int, default=512)
parser.add_argument("--bits", type=int, default=4)
parser.add_argument("--repeats", type=int, default=5)
args = parser.parse_args()
figures = {"before": [], "after": []}
with tempfile.TemporaryDirectory() as folder:
    results = {}
    for repeat in range(args.repeats):
        for label in ("before", "after") if repeat % 2 == 0 else ("after", "before"):
            out = os.path.join(folder, f"{label}.npz")
            done = subprocess.run([getattr(args, label), "-c", WORKER, str(args.inputs), str(args.rows), str(args.bits), out],
                                  capture_output=True, text=True, check=True, cwd=folder)
            figures[label].append(json.loads(done.stdout.strip().splitlines()[-1]))
            with np.load(out) as saved:
                results[label] = {key: saved[key] for key in saved.files}
    same = all(np.array_equal(results["before"][key], results["after"][key]) for key in results["before"])
print(f"inputs {args.inputs}, rows {args.rows}, {args.bits} bits, {args.repeats} runs each (process CPU s, medians):")
for step in figures["before"][0]:
    before = np.median([f[step] for f in figures["before"]])
    after = np.median([f[step] for f in figures["after"]])
    print(f"  {step:16s} before {before:7.3f}  after {after:7.3f}  ratio {before / after:5.2f}")
print("results bit-identical:", same)
sys.exit(0 if same else 1)
