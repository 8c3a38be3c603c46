"""How unevenly a model's MatMul/Gemm layers weigh their inputs, and what per-input step sizes could save (branch cal11a).

For each MatMul/Gemm whose second input is an initializer of at least 1,024 values, its first input is captured on
the first ``--samples`` samples of a calibration file (onnxruntime, the model's own input names) and each input
feature's energy h_j = mean over rows of x_j^2 (the diagonal of X^T X / rows) is printed with, at high rate, what a
codebook whose step follows 1 / sqrt(h_j) per input column would save against one step for all at the same
diagonal-weighted output error ``sum_j h_j ||dW_j||^2`` (reverse water-filling over the columns: the uniform step
costs 0.5 (log2 mean h - mean log2 h) bits per weight more; Gish and Pierce 1968 for the step-entropy relation).
It is an upper bound of a diagonal model: off-diagonal terms, low rates and the per-column scale bytes are ignored.

    python bench/input_energy_spread.py MODEL.onnx CALIB.npz [--samples 32]
"""

from __future__ import annotations

import argparse

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("calib")
    parser.add_argument("--samples", type=int, default=32)
    args = parser.parse_args()
    model = onnx.load(args.model)
    calib = np.load(args.calib)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    layers = [(node.input[0], node.input[1]) for node in model.graph.node
              if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in weights
              and weights[node.input[1]].size >= 1024]
    outputs = {o.name for o in model.graph.output}
    for name, _ in layers:
        if name not in outputs:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            outputs.add(name)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: calib[i.name][:args.samples] for i in session.get_inputs()}
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    for name, weight in layers:
        rows = values[name].reshape(-1, values[name].shape[-1]).astype(np.float64)
        energy = (rows ** 2).mean(axis=0) + 1e-12
        saving = 0.5 * (np.log2(energy.mean()) - np.log2(energy).mean())
        print(f"{weight[:30]:30s} {str(weights[weight].shape):12s} h_j max/median {energy.max() / np.median(energy):7.1f}  "
              f"sd of ln h_j {np.log(energy).std():.2f}  per-column steps save at most {saving:.3f} bit/weight")


if __name__ == "__main__":
    main()
