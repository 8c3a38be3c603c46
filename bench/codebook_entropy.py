"""Record bytes of k-means codebooks against the matched uniform ones that replace them under --calib (branch cal11a).

For each float weight of a model (at least --min-elements values; initializers of the main graph), at each bit width:
the k-means share (onnxcomp.core.outliers.share, outliers "auto") and ShareWeightsPass._matched_uniform's choice, both
without calibration statistics (every input weighted alike): estimated record bytes (index entropy + codebook +
outliers), relative L2 error and codebook size of each. ``--rows`` says how the matching reads channels: ``gather``
(rows of the table, summed error only, as for a Gather table) or ``matmul`` (the output axis of a MatMul B [K, N],
worst channel held too, as for a layer with statistics, here with unit input energies).

    python bench/codebook_entropy.py MODEL.onnx [--bits 3,4,5,6] [--min-elements 100000] [--names a,b] [--rows matmul]

Prints one line per weight and bit width, then the byte totals per bit width. No calibration data is read: the
calibrated path weights each input by its energy, which this does not reproduce.
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcomp.core import outliers
from onnxcomp.passes import share_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--bits", default="3,4,5,6")
    parser.add_argument("--min-elements", type=int, default=100_000)
    parser.add_argument("--names", default="", help="comma-separated initializer names (default: every float one)")
    parser.add_argument("--rows", choices=("gather", "matmul"), default="matmul")
    args = parser.parse_args()
    names = {n for n in args.names.split(",") if n}
    bits_list = [int(b) for b in args.bits.split(",")]
    model = onnx.load(args.model)
    totals = {b: [0, 0] for b in bits_list}
    share = share_weights.ShareWeightsPass(matched_uniform=True)
    for tensor in model.graph.initializer:
        weight = numpy_helper.to_array(tensor)
        if weight.dtype != np.float32 or weight.size < args.min_elements or weight.ndim < 2 or (names and tensor.name not in names):
            continue
        op = "Gather" if args.rows == "gather" else "MatMul"
        slot = 0 if op == "Gather" else 1
        norm = float(np.linalg.norm(weight))
        for bits in bits_list:
            target = SimpleNamespace(name=tensor.name, shape=weight.shape, keep=None, bits=bits, layer_input=None,
                                     uses=[(SimpleNamespace(op=op, attrs={}), slot)])
            rows = share_weights.output_rows(target)
            kmeans = outliers.share(weight, None, bits, rows=rows)
            chosen = share._matched_uniform(target, weight, kmeans, None, {}, channels=args.rows == "matmul")
            totals[bits][0] += kmeans.estimated_bytes
            totals[bits][1] += chosen.estimated_bytes
            print(f"{tensor.name[:44]:44s} {str(weight.shape):14s} b{bits}: k-means {len(kmeans.codebook):3d} values "
                  f"{kmeans.estimated_bytes:9d} B rel L2 {np.sqrt(kmeans.error) / norm:.4f} | chosen "
                  f"{len(chosen.codebook):3d} values {len(chosen.positions):6d} outliers {chosen.estimated_bytes:9d} B "
                  f"rel L2 {np.sqrt(chosen.error) / norm:.4f} ({chosen.estimated_bytes / kmeans.estimated_bytes:.3f})",
                  flush=True)
    for bits, (kmeans_bytes, chosen_bytes) in totals.items():
        if kmeans_bytes:
            print(f"total b{bits}: k-means {kmeans_bytes} B, chosen {chosen_bytes} B ({chosen_bytes / kmeans_bytes:.3f})")


if __name__ == "__main__":
    main()
