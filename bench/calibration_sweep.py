"""Accuracy against total compression ratio for magnitude, Wanda, TF-IDF and OBS pruning, with and without
least-squares reconstruction, plus per-layer allocations (--budget kl=K, sequential), on the bundled models.

Calibration samples (models/*_calib.npz) are disjoint from the evaluation samples (models/*_eval.npz). For
each uniform method the table gives the largest ratio over the sparsity grid whose accuracy stays within 1
point of the original (the whole grid goes to the log and to a second table); each per-layer budget gets its
own row, since the budget, not the evaluation file, chooses the settings. Usage:
    python bench/calibration_sweep.py [--models lenet300_mnist,lenet5_mnist,...] [--sparsity 0.5,0.7,0.8,0.9]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import onnxcomp
from onnxcomp.pipeline.autotune import compress_to_budget
from onnxcomp.pipeline.evaluate import accuracy

from report import update_section

ROOT = Path(__file__).resolve().parents[1]
METHODS = [  # (label, options)
    ("magnitude", dict(prune="magnitude")),
    ("magnitude + reconstruction", dict(prune="magnitude", calib=True)),
    ("wanda", dict(prune="activation", score="wanda", calib=True, reconstruct=False)),
    ("wanda + reconstruction", dict(prune="activation", score="wanda", calib=True)),
    ("tfidf", dict(prune="activation", score="tfidf", calib=True, reconstruct=False)),
    ("tfidf + reconstruction", dict(prune="activation", score="tfidf", calib=True)),
    ("wanda + reconstruction, nearest rounding", dict(prune="activation", score="wanda", calib=True, rounding="nearest")),
    ("obs", dict(prune="activation", score="obs", calib=True, reconstruct=False)),
    ("obs + reconstruction", dict(prune="activation", score="obs", calib=True)),
    ("wanda + reconstruction, sequential", dict(prune="activation", score="wanda", calib=True, sequential=True)),
]
PER_LAYER = dict(prune="activation", score="wanda", sequential=True, min_elements=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet300_mnist,lenet5_mnist,lenet300_fashion,lenet5_fashion")
    parser.add_argument("--sparsity", default="0.5,0.7,0.8,0.9")
    parser.add_argument("--bits", type=int, default=3)
    parser.add_argument("--budgets", default="kl=0.01,kl=0.02,kl=0.03,kl=0.05,kl=0.07,kl=0.1")
    parser.add_argument("--methods", default=None, help="semicolon-separated method labels (default: all)")
    parser.add_argument("--section", default="calibration")
    args = parser.parse_args()
    sparsities = [float(s) for s in args.sparsity.split(",")]
    lines = [f"Uniform settings: {args.bits}-bit codebooks in every compressed layer (weights of 1,024 elements or more),",
             "the same sparsity in every layer; best ratio whose accuracy is within 1 point of the original",
             f"(grid: sparsity {args.sparsity}). Reconstruction rounds to the codebook with OBS compensation",
             "unless the row says nearest."]
    if args.budgets:
        lines += ["`per layer, --budget kl=K` = `--budget kl=K --prune activation --score wanda --sequential",
                  "--min-elements 1`: per-layer sparsity and bits from sensitivity curves (KL divergence of the",
                  "outputs on the held-back quarter of the calibration samples), every weight a candidate, sequential trials,",
                  "output fit to all calibration samples; its time includes the sensitivity analysis for the first budget of a model,",
                  "the others reuse the cached curves."]
    lines += ["Accuracy on the evaluation file.", "",
              "| model | method | best ratio within 1 pt | sparsity | top-1 (change) | time per run |", "|---|---|---|---|---|---|"]
    grid = ["| model | method | sparsity | ratio | top-1 | change |", "|---|---|---|---|---|---|"]
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
                    grid.append(f"| {name} | {label} | {sparsity:.2f} | {report.ratio:.1f}x | {100 * acc:.2f}% | {100 * (acc - base):+.2f} |")
                    if base - acc <= 0.01 and (best is None or report.ratio > best[0]):
                        best = (report.ratio, sparsity, acc)
                median = sorted(seconds)[len(seconds) // 2]
                if best:
                    lines.append(f"| {name} | {label} | {best[0]:.1f}x | {best[1]:.2f} | {100 * best[2]:.2f}% ({100 * (best[2] - base):+.2f}) | {median:.1f} s |")
                else:
                    lines.append(f"| {name} | {label} | none within 1 pt | | | {median:.1f} s |")
            for budget in args.budgets.split(",") if args.budgets else []:
                start = time.perf_counter()
                report = compress_to_budget(model, out, budget=budget, calib=calib, cache_dir=str(Path(folder) / "cache"), **PER_LAYER)
                elapsed = time.perf_counter() - start
                acc = accuracy(out, data, compressed=True)
                chosen = ", ".join(f"{k.split('.')[0]} " + ("dense" if v.get("skip") else f"{v['sparsity']:.2f}/{v['bits']}b")
                                   for k, v in report.budget["settings"].items())
                within = f"{report.ratio:.1f}x" if base - acc <= 0.01 else f"({report.ratio:.1f}x: not within 1 pt)"
                print(f"{name} per layer {budget}: {report.ratio:.1f}x {100 * acc:.2f}% ({chosen})", flush=True)
                lines.append(f"| {name} | per layer, --budget {budget} ({chosen}) | {within} | per layer | "
                             f"{100 * acc:.2f}% ({100 * (acc - base):+.2f}) | {elapsed:.0f} s |")
    lines += ["", "The whole uniform grid of the same run:", ""] + grid
    update_section(args.section, "\n".join(lines))


if __name__ == "__main__":
    main()
