"""Accuracy against total compression ratio for magnitude, Wanda and TF-IDF pruning, each with and without
least-squares reconstruction, plus the automatic per-layer allocation (--budget), on the bundled models.

Calibration samples (models/*_calib.npz) are disjoint from the evaluation samples (models/*_eval.npz). For
each method the table gives the largest ratio over the sparsity grid whose accuracy stays within 1 point of
the original, and the whole grid goes to the log. Usage:
    python bench/calibration_sweep.py [--models lenet300_mnist,lenet5_mnist,...] [--sparsity 0.5,0.7,0.8,0.9]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import onnxcomp
from onnxcomp.autotune import compress_to_budget
from onnxcomp.evaluate import accuracy

from report import update_section

ROOT = Path(__file__).resolve().parents[1]
METHODS = [  # (label, options)
    ("magnitude", dict(prune="magnitude")),
    ("magnitude + reconstruction", dict(prune="magnitude", calib=True)),
    ("wanda", dict(prune="activation", score="wanda", calib=True, reconstruct=False)),
    ("wanda + reconstruction", dict(prune="activation", score="wanda", calib=True)),
    ("tfidf", dict(prune="activation", score="tfidf", calib=True, reconstruct=False)),
    ("tfidf + reconstruction", dict(prune="activation", score="tfidf", calib=True)),
    ("wanda + reconstruction, sequential", dict(prune="activation", score="wanda", calib=True, sequential=True)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet300_mnist,lenet5_mnist,lenet300_fashion,lenet5_fashion")
    parser.add_argument("--sparsity", default="0.5,0.7,0.8,0.9")
    parser.add_argument("--bits", type=int, default=3)
    parser.add_argument("--budget", default="top1=0.99")
    parser.add_argument("--methods", default=None, help="semicolon-separated method labels (default: all)")
    parser.add_argument("--section", default="calibration")
    args = parser.parse_args()
    sparsities = [float(s) for s in args.sparsity.split(",")]
    lines = [f"Uniform settings: {args.bits}-bit codebooks in every compressed layer, the same sparsity in every layer;",
             f"best ratio whose accuracy is within 1 point of the original (grid: sparsity {args.sparsity}).",
             f"`auto` = `--budget {args.budget} --prune activation --score wanda` (per-layer sparsity and bits,",
             "measured on the held-back quarter of the calibration samples). Accuracy on the evaluation file.", "",
             "| model | method | best ratio within 1 pt | sparsity | top-1 (change) | time per run |", "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "out.onnx")
        for name in args.models.split(","):
            dataset = name.split("_")[1]
            model = str(ROOT / "models" / f"{name}.onnx")
            calib = str(ROOT / "models" / f"{dataset}_calib.npz")
            data = str(ROOT / "models" / f"{dataset}_eval.npz")
            base = accuracy(model, data)
            for label, options in METHODS:
                if args.methods and label not in args.methods.split(";"):
                    continue
                options = dict(options, calib=calib if options.get("calib") else None)
                best, seconds = None, []
                for sparsity in sparsities:
                    start = time.perf_counter()
                    report = onnxcomp.compress(model, out, sparsity=sparsity, bits=args.bits, **options)
                    seconds.append(time.perf_counter() - start)
                    acc = accuracy(out, data, compressed=True)
                    print(f"{name} {label:<28} sparsity {sparsity:.2f}: {report.ratio:6.1f}x {100 * acc:.2f}% ({100 * (acc - base):+.2f})", flush=True)
                    if base - acc <= 0.01 and (best is None or report.ratio > best[0]):
                        best = (report.ratio, sparsity, acc)
                median = sorted(seconds)[len(seconds) // 2]
                if best:
                    lines.append(f"| {name} | {label} | {best[0]:.1f}x | {best[1]:.2f} | {100 * best[2]:.2f}% ({100 * (best[2] - base):+.2f}) | {median:.1f} s |")
                else:
                    lines.append(f"| {name} | {label} | none within 1 pt | | | {median:.1f} s |")
            start = time.perf_counter()
            report = compress_to_budget(model, out, budget=args.budget, calib=calib, prune="activation", score="wanda",
                                        cache_dir=str(Path(folder) / "cache"))
            elapsed = time.perf_counter() - start
            acc = accuracy(out, data, compressed=True)
            chosen = ", ".join(f"{k.split('.')[0]} " + ("dense" if v.get("skip") else f"{v['sparsity']:.2f}/{v['bits']}b") for k, v in report.budget["settings"].items())
            print(f"{name} auto: {report.ratio:.1f}x {100 * acc:.2f}% ({chosen})", flush=True)
            lines.append(f"| {name} | auto ({chosen}) | {report.ratio:.1f}x | per layer | {100 * acc:.2f}% ({100 * (acc - base):+.2f}) | {elapsed:.0f} s |")
    update_section(args.section, "\n".join(lines))


if __name__ == "__main__":
    main()
