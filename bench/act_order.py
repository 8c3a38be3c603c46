"""Compensated rounding in act-order against the inputs' own order, layer by layer, on a zoo model's calibration data.

Usage: python bench/act_order.py MODEL SAMPLES [BITS,BITS] [NAME,NAME ...]   (the model and its calib.npz under
~/.cache/onnxcomp-zoo/models/MODEL; the first SAMPLES calibration samples; bits default 3,4; weights whose names
contain one of the NAMEs, default every weight with calibration statistics)

For each weight (selected as `compress` selects them, statistics from one calibration pass), compressed alone as
the budget's trials compress it (`autotune._pruned` at sparsity 0 with a mask, `autotune._shared`: k-means,
outliers auto, compensated rounding, codebook refit) once with `obs.ACT_ORDER` off and once on: the record's bytes
and the layer error eps = ||X (W - Q)||^2 / ||X W||^2 from the layer's Gram matrix (what the budget's curves
predict from). Prints one markdown table row per weight and bit width, then the median ratio of the errors.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.core import obs
from onnxcomp.passes.base import CompressionState
from onnxcomp.passes.calibrate_weights import CalibrateWeightsPass
from onnxcomp.passes.calibration import to_rows
from onnxcomp.passes.select_weights import SelectWeightsPass
from onnxcomp.pipeline.autotune import _pruned, _shared

ZOO = os.path.expanduser("~/.cache/onnxcomp-zoo")
OPTIONS = dict(prune="activation", score="wanda", reconstruct=True, ridge=0.01, init="quantile", seed=0, rounding="obs",
               outliers="auto")


def main(model_name: str, samples: int, bits: list[int], names: list[str]) -> None:
    model = onnx.load(f"{ZOO}/models/{model_name}/model.onnx")
    calib = np.load(f"{ZOO}/models/{model_name}/calib.npz")
    inputs = [i.name for i in model.graph.input if i.name in calib.files]
    state = CompressionState(gs.import_onnx(model))
    SelectWeightsPass(min_elements=1024)(state)
    if names:
        state.targets = [t for t in state.targets if any(n in t.name for n in names)]
    CalibrateWeightsPass(data={k: calib[k][:samples] for k in inputs}, keep_gram=True)(state)
    print("| weight | shape | bits | bytes, own order | eps, own order | bytes, act-order | eps, act-order | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    ratios, setting = [], obs.ACT_ORDER
    for target in state.targets:
        statistics = target.statistics
        if statistics is None or statistics.gram is None:
            continue
        gram = statistics.gram.astype(np.float64)
        w = to_rows(target.original, target.layer_input.layout).astype(np.float64)
        energy = float(((w @ gram) * w).sum())
        for b in bits:
            row = []
            for on in (False, True):
                obs.ACT_ORDER = on
                trial = _shared(_pruned(target, 0.0, OPTIONS, as_compress=True), b, OPTIONS)
                d = to_rows(trial.decoded(), target.layer_input.layout) - w
                row += [len(trial.record), float(((d @ gram) * d).sum()) / energy]
            ratios.append(row[3] / row[1])
            print(f"| {target.name} | {'x'.join(map(str, target.shape))} | {b} | {row[0]:,} | {row[1]:.5f} | {row[2]:,} | "
                  f"{row[3]:.5f} | {ratios[-1]:.2f} |", flush=True)
    obs.ACT_ORDER = setting
    print(f"median eps ratio (act-order / own order) over {len(ratios)} rows: {np.median(ratios):.3f}; "
          f"range {min(ratios):.2f}-{max(ratios):.2f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), [int(b) for b in sys.argv[3].split(",")] if len(sys.argv) > 3 else [3, 4],
         sys.argv[4].split(",") if len(sys.argv) > 4 else [])
