"""Bits per weight of per-tensor and per-output-channel scaled uniform grids at the errors a zoo run's records reach.

Usage: python bench/channel_codebooks.py RUN MODEL [MODEL ...]   (runs under ~/.cache/onnxcomp-zoo/runs; the
originals under ~/.cache/onnxcomp-zoo/models/MODEL/model.onnx)

For every rank-4 (convolution) weight the run compressed, with the record's outliers kept exact in every
variant: the record's own index cost (order-0 entropy of its indices, outliers excluded), and the entropy of
the cheapest rounding to a grid that reaches both the record's relative L2 error and its worst output channel's
relative error, the step found by bisection:
  - uniform: one step for the tensor (a uniform codebook of unbounded value count);
  - per-channel RMS / max: step = delta * the channel's RMS (or max |w|), one shared table of grid indices,
    plus 16 bits per channel for its scale (a record format does not have this today).
Totals are bits per weight over all such weights; "best of" takes per weight the cheaper of the columns named.
Entropy, not Huffman: Huffman lands within 1 % of it on these records (bench/index_entropy.py).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcomp.core import sidecar

ZOO = os.path.expanduser("~/.cache/onnxcomp-zoo")


def entropy_bits(indices: np.ndarray) -> float:
    counts = np.bincount(indices - indices.min()).astype(float)
    counts = counts[counts > 0]
    return float(-(counts * np.log2(counts / counts.sum())).sum())


def errors(w: np.ndarray, q: np.ndarray) -> tuple[float, float]:
    """(relative L2 error, worst output channel's relative L2 error) of q against w."""
    d, rows = (w - q).reshape(w.shape[0], -1), w.reshape(w.shape[0], -1)
    channel = np.linalg.norm(d, axis=1) / np.maximum(np.linalg.norm(rows, axis=1), 1e-30)
    return float(np.linalg.norm(d) / np.linalg.norm(rows)), float(channel.max())


def cheapest_grid(w, exact, scale, l2, worst) -> float:
    """Entropy (bits) of round(w / (delta scale)) at the largest delta meeting both errors (bisection)."""
    def rounded(delta):
        q = np.round(w / (delta * scale))
        out = q * delta * scale
        out[exact] = w[exact]
        return q.astype(np.int64), out
    low, high = 1e-7, 8.0
    for _ in range(50):
        middle = np.sqrt(low * high)
        e2, ew = errors(w, rounded(middle)[1])
        low, high = (middle, high) if e2 <= l2 and ew <= worst else (low, middle)
    return entropy_bits(rounded(low)[0][~exact])


def measure(run: str, model: str) -> dict[str, float]:
    graph = onnx.load(os.path.join(ZOO, "models", model, "model.onnx")).graph
    weights = {t.name: t for t in graph.initializer}
    weights.update({n.output[0]: n.attribute[0].t for n in graph.node if n.op_type == "Constant" and n.attribute
                    and n.attribute[0].name == "value"})
    path = os.path.join(ZOO, "runs", run, f"{model}.onnxcomp")
    with open(path, "rb") as f:
        data = f.read()
    totals = dict.fromkeys(["weights", "record", "uniform", "per-channel RMS", "per-channel max", "best of record, uniform",
                            "best of record, uniform, per-channel RMS"], 0.0)
    for entry in sidecar.read_directory(path):
        if entry.name not in weights or entry.transposed:
            continue
        w = numpy_helper.to_array(weights[entry.name]).astype(np.float64)
        if w.ndim != 4:
            continue
        record = sidecar.decode_record(data[entry.offset:entry.offset + entry.length])
        exact = np.zeros(w.size, bool)
        exact[record.outlier_positions] = True
        exact = exact.reshape(w.shape)
        l2, worst = errors(w, record.to_dense().astype(np.float64))
        own = entropy_bits(record.indices[~exact.ravel()].astype(np.int64))
        channels = w.shape[0]
        rows = np.where(exact, 0, w).reshape(channels, -1)
        rms = np.sqrt((w.reshape(channels, -1) ** 2).mean(1)).reshape(channels, 1, 1, 1) + 1e-30
        largest = np.abs(rows).max(1).reshape(channels, 1, 1, 1) + 1e-30
        uniform = cheapest_grid(w, exact, 1.0, l2, worst)
        by_rms = cheapest_grid(w, exact, rms, l2, worst) + 16 * channels
        by_max = cheapest_grid(w, exact, largest, l2, worst) + 16 * channels
        for name, bits in (("weights", w.size), ("record", own), ("uniform", uniform), ("per-channel RMS", by_rms),
                           ("per-channel max", by_max), ("best of record, uniform", min(own, uniform)),
                           ("best of record, uniform, per-channel RMS", min(own, uniform, by_rms))):
            totals[name] += bits
    return totals


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    names = ["record", "uniform", "per-channel RMS", "per-channel max", "best of record, uniform",
             "best of record, uniform, per-channel RMS"]
    print("| model | conv weights | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for model in argv[1:]:
        t = measure(argv[0], model)
        if t["weights"]:
            print(f"| {model} | {t['weights'] / 1e6:.2f} M | " + " | ".join(f"{t[n] / t['weights']:.3f}" for n in names) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
