"""What row sampling (onnxcomp/passes/calibration.py, ROW_SAMPLE_POSITIONS) changes in a model's calibration
statistics: each Conv (group 1) / MatMul / Gemm weight's statistics are gathered twice from the same calibration
samples, once from every row and once with the default row sampling, and compared per layer:

- ``gram err``: relative Frobenius error ||G_s - G||_F / ||G||_F of the sampled X^T X;
- ``obj err``: relative error of a layer objective the compression minimises, tr(D G D^T) with D = W - Q(W),
  Q a 4-bit uniform per-tensor rounding of the weight (the reconstruction's and the budget proxy's quadratic
  form), sampled vs full;
- ``norms err``: max relative error of sqrt(sum x_j^2) over the features (Wanda's ||X_j||).
Prints a markdown table (layer, positions per sample, rows kept, features, the three errors) and the two
collections' wall times. Usage:
    python bench/row_sampling.py MODEL.onnx CALIB.npz [--samples 8] [--batch 8]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcomp.passes import calibration
from onnxcomp.passes.model_io import constants_to_initializers


def layers_of(model: onnx.ModelProto, min_elements: int = 1024) -> tuple[dict, dict]:
    """LayerInputs and weights [outputs, inputs] of the main graph's weights as calibrate_weights.layer_input sees them."""
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    layers, rows = {}, {}
    for node in model.graph.node:
        if len(node.input) < 2 or node.input[1] not in weights or weights[node.input[1]].size < min_elements:
            continue
        w, attrs = weights[node.input[1]], {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv" and w.ndim == 4 and attrs.get("group", 1) == 1 and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", b"VALID"):
            spec = calibration.LayerInput(node.input[0], "conv", tuple(w.shape[2:]), tuple(attrs.get("strides", (1, 1))),
                                          tuple(attrs.get("pads", (0, 0, 0, 0))), tuple(attrs.get("dilations", (1, 1))))
        elif node.op_type == "MatMul" and w.ndim == 2:
            spec = calibration.LayerInput(node.input[0], "kn")
        elif node.op_type == "Gemm" and w.ndim == 2 and attrs.get("transA", 0) == 0:
            spec = calibration.LayerInput(node.input[0], "nk" if attrs.get("transB", 0) else "kn")
        else:
            continue
        layers[node.input[1]] = spec
        rows[node.input[1]] = calibration.to_rows(w, spec.layout).astype(np.float64)
    return layers, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("calib")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    model = onnx.load(args.model)
    constants_to_initializers(model.graph)
    with np.load(args.calib) as f:
        data = {k: f[k][:args.samples] for k in f.files}
    layers, weights = layers_of(model)
    sampled_cap = calibration.ROW_SAMPLE_POSITIONS
    times, stats = {}, {}
    for mode, cap in (("all rows", 1 << 62), ("sampled", sampled_cap)):
        calibration.ROW_SAMPLE_POSITIONS = cap
        start = time.perf_counter()
        stats[mode] = calibration.collect(model, layers, data, batch=args.batch)
        times[mode] = time.perf_counter() - start
    calibration.ROW_SAMPLE_POSITIONS = sampled_cap
    print(f"{args.samples} samples, ROW_SAMPLE_POSITIONS {sampled_cap}; collect wall: all rows {times['all rows']:.1f} s, "
          f"sampled {times['sampled']:.1f} s\n")
    print("| layer | positions per sample | rows kept per sample | features | gram err | obj err | norms err |")
    print("|---|---|---|---|---|---|---|")
    for name, w in weights.items():
        full, part = stats["all rows"].get(name), stats["sampled"].get(name)
        if full is None or full.gram is None:
            continue
        per_sample = full.rows // max(full.samples, 1)
        g, gs_ = full.gram.astype(np.float64), part.gram.astype(np.float64)
        step = np.abs(w).max() / 7 or 1.0
        d = w - np.round(w / step) * step
        objective = np.einsum("ij,jk,ik->", d, g, d)
        objective_s = np.einsum("ij,jk,ik->", d, gs_, d)
        norms = np.abs(part.norms - full.norms).max() / max(full.norms.max(), 1e-30)
        print(f"| {name} | {per_sample} | {min(per_sample, sampled_cap)} | {full.features} | "
              f"{np.linalg.norm(gs_ - g) / np.linalg.norm(g):.2e} | {abs(objective_s - objective) / objective:.2e} | {norms:.2e} |")


if __name__ == "__main__":
    main()
