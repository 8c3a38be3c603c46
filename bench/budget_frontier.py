"""What a given per-layer allocation costs on digits nothing was fitted on: a diagnostic for the quality budget.

Each combination of per-weight (sparsity, bits) settings in the grid is compressed with activation-aware pruning,
sequential least-squares refits and the other calibrated defaults, fitted on the first 750 digits of
models/mnist_calib.npz, and measured on models/mnist_eval.npz: ratio, top-1 drop in points, the paired flip
counts (hurt: digits the original got right and the output gets wrong; helped: the reverse) and top-1
agreement. It peeks at the evaluation digits on purpose, to show what the budget search could at best reach;
the search itself never sees them.

Usage:
    PYTHONPATH=. python bench/budget_frontier.py MODEL GRID_JSON [OPTIONS_JSON [FIT_DIGITS]]
    e.g. bench/budget_frontier.py models/lenet5_mnist.onnx '{"fc1.weight": [[0.95, 4]], "conv2.weight": [[0.5, 4]]}' \
         '{"score": "obs"}'
Weights the grid does not name are compressed at sparsity 0 with 6 bits. FIT_DIGITS (default 750) sets how many of
the calibration digits, from the first, the compression is fitted on.
"""

from __future__ import annotations

import itertools
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import onnxcomp
from onnxcomp.pipeline.compression import compress

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    model = sys.argv[1]
    grid = json.loads(sys.argv[2])
    options = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    fit = int(sys.argv[4]) if len(sys.argv) > 4 else 750
    calib = np.load(ROOT / "models" / "mnist_calib.npz")
    evaluation = np.load(ROOT / "models" / "mnist_eval.npz")
    name = ort.InferenceSession(model).get_inputs()[0].name
    reference = ort.InferenceSession(model).run(None, {name: evaluation["input"]})[0].argmax(1)
    labels = evaluation["labels"]
    others = [t.name for t in onnx.load(model).graph.initializer if t.name not in grid and t.data_type == onnx.TensorProto.FLOAT]
    names = list(grid)
    print("| settings (sparsity, bits) | ratio | top-1 drop (points) | hurt | helped | top-1 agreement |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "out.onnx")
        for combination in itertools.product(*[grid[n] for n in names]):
            settings = {n: {"sparsity": s, "bits": b} for n, (s, b) in zip(names, combination)}
            settings.update({n: {"sparsity": 0.0, "bits": 6} for n in others})
            report = compress(model, out, calib={name: calib["input"][:fit]}, settings=settings, fidelity=False,
                              **{"prune": "activation", "sequential": True, "min_elements": 1, **options})
            output = onnxcomp.InferenceSession(out).run(None, {name: evaluation["input"]})[0].argmax(1)
            hurt = int(np.sum((reference == labels) & (output != labels)))
            helped = int(np.sum((reference != labels) & (output == labels)))
            drop = 100 * (np.mean(reference == labels) - np.mean(output == labels))
            described = ", ".join(f"{n} {s:g}/{b}" for n, (s, b) in zip(names, combination))
            print(f"| {described} | {report.ratio:.1f}x | {drop:+.2f} | {hurt} | {helped} | {np.mean(output == reference):.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
