"""Size ratio and accuracy of the bundled models over a grid of sparsity and codebook bits.

Ratio = input file bytes / (output model + sidecar bytes). Accuracy = top-1 on the model's evaluation file,
run in onnxruntime with the custom-op library. Usage:
    python bench/compression_sweep.py [--model models/lenet300_fashion.onnx --data models/fashion_eval.npz]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import onnxcomp
from onnxcomp.pipeline.evaluate import accuracy

from report import update_section

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "lenet300_fashion.onnx"))
    parser.add_argument("--data", default=str(ROOT / "models" / "fashion_eval.npz"))
    parser.add_argument("--sparsity", default="0,0.5,0.6,0.7,0.8,0.9")
    parser.add_argument("--bits", default="3,4,5,6")
    parser.add_argument("--init", default="quantile,linear")
    parser.add_argument("--section", default=None)
    args = parser.parse_args()
    base = accuracy(args.model, args.data)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "out.onnx")
        report = onnxcomp.compress(args.model, out)  # the defaults
        acc = accuracy(out, args.data, compressed=True)
        rows.append(("defaults", "defaults", "quantile", report.ratio, acc))
        print(f"defaults: ratio {report.ratio:.1f}x accuracy {100 * acc:.2f}%", flush=True)
        grid = itertools.product([float(s) for s in args.sparsity.split(",")], [int(b) for b in args.bits.split(",")],
                                 args.init.split(","))
        for sparsity, bits, init in grid:
            report = onnxcomp.compress(args.model, out, sparsity=sparsity, bits=bits, init=init)
            acc = accuracy(out, args.data, compressed=True)
            rows.append((sparsity, bits, init, report.ratio, acc))
            print(f"sparsity {sparsity:.2f} bits {bits} {init:<8} ratio {report.ratio:6.1f}x  accuracy {100 * acc:.2f}% ({100 * (acc - base):+.2f})", flush=True)
    name = Path(args.model).stem
    lines = [f"Model `{name}`, original top-1 {100 * base:.2f}% on `{Path(args.data).name}`; magnitude pruning per layer,",
             "k-means codebooks, Huffman/gap-coded sidecar. Ratio = input file / (output model + sidecar).", "",
             "| sparsity | bits | init | ratio | top-1 | change (points) |", "|---|---|---|---|---|---|"]
    for sparsity, bits, init, ratio, acc in rows:
        sparsity = sparsity if isinstance(sparsity, str) else f"{sparsity:.2f}"
        lines.append(f"| {sparsity} | {bits} | {init} | {ratio:.1f}x | {100 * acc:.2f}% | {100 * (acc - base):+.2f} |")
    update_section(args.section or f"sweep-{name}", "\n".join(lines))


if __name__ == "__main__":
    main()
