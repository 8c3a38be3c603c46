"""Where the damage of a compressed zoo model comes from: each compressed weight alone in the original model.

    python bench/damage_study.py MODEL COMPRESSED.onnx [--samples 8]

Runs on the model's calibration samples (bench/zoo cache, disjoint from its evaluation samples), so studying a
model here does not look at the data its verdict is measured on. Per weight: its size, bits, outliers, the
weight's own relative L2 error e2 = ||w - q|| / ||w|| and worst-case error einf = max|w - q| / max|w|, and the
relative L2 error r of the first output with only that weight compressed; then r with all weights compressed
and sqrt(sum r_i^2) (the additive prediction).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import zoo  # noqa: E402

from onnxcomp.passes import model_io  # noqa: E402
from onnxcomp.pipeline.fidelity import _session  # noqa: E402
from onnxcomp.pipeline.verification import attribute_layers, stored_weights  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("compressed")
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args()
    model = zoo.BY_NAME[args.model]
    with np.load(model.folder / "calib.npz") as f:
        data = {k: f[k] for k in f.files}
    feed = {k: (v[:args.samples] if v.ndim and v.shape[0] >= args.samples else v) for k, v in data.items()}
    count = args.samples
    original = str(model.onnx_path)
    expected = np.asarray(_session(original).run(None, feed)[0])
    actual = np.asarray(_session(args.compressed).run(None, feed)[0])
    r_all = float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))
    layers = attribute_layers(original, args.compressed, feed, count, count, "calibration", expected, False)
    stored = {w.name: w for w in stored_weights(model_io.load_model(args.compressed, external_data=False),
                                                args.compressed).values()}
    graph = model_io.load_model(original)
    model_io.constants_to_initializers(graph.graph)
    weights = {t.name: numpy_helper.to_array(t) for g in model_io.graphs_of(graph.graph) for t in g.initializer}
    print(f"{'weight':40s} {'size':>9s} bits  outl   e2      einf    r_out")
    for layer in layers:
        w = weights[layer.name].astype(np.float64)
        q = stored[layer.name].dense().astype(np.float64)
        e2 = np.linalg.norm(w - q) / np.linalg.norm(w)
        einf = np.abs(w - q).max() / np.abs(w).max()
        print(f"{layer.name[:40]:40s} {w.size:9d} {layer.bits:4d} {0:5d} {e2:.4f}  {einf:.4f}  {layer.relative_l2_error:.4f}")
    predicted = float(np.sqrt(sum(layer.relative_l2_error ** 2 for layer in layers)))
    print(f"all weights: r_out {r_all:.4f}; sqrt(sum r_i^2) {predicted:.4f}; sum r_i {sum(l.relative_l2_error for l in layers):.4f}")


if __name__ == "__main__":
    main()
