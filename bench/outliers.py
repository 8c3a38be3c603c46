"""Outliers on the bundled models: size and fidelity with ``--outliers auto`` (the default) against ``--outliers 0``.

For each bundled model and each option set, compresses twice (the two outlier settings, everything else equal)
and records: outliers kept (total over the weights, and how many weights got any), size ratio (input files over
output files), top-1 accuracy on the model's evaluation file before and after, and the fidelity against the
original on the same samples (min cosine of the outputs, top-1 agreement). Writes the table into
docs/benchmarks.md (section ``outliers-bundled``). Usage:
    python bench/outliers.py [--models lenet300_fashion,...] [--options "--bits 8 --sparsity 0" ...]
"""

from __future__ import annotations

import argparse
import shlex
import tempfile
import time
from pathlib import Path

import onnxcomp

from report import update_section

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # model -> evaluation file
    "lenet300_fashion": "fashion_eval.npz", "lenet300_mnist": "mnist_eval.npz", "lenet5_fashion": "fashion_eval.npz",
    "lenet5_mnist": "mnist_eval.npz", "vit_fashion": "fashion_eval.npz",
}
OPTION_SETS = ["", "--bits 8 --sparsity 0", "--bits 4 --sparsity 0"]


def options_of(text: str) -> dict:
    """CLI-style options ("--bits 8 --sparsity 0") as keyword arguments of onnxcomp.compress."""
    words = shlex.split(text)
    return {words[i][2:].replace("-", "_"): float(words[i + 1]) if "." in words[i + 1] else int(words[i + 1])
            for i in range(0, len(words), 2)}


def measure(model: str, data: str, options: dict, folder: Path, tag: str) -> dict:
    source = ROOT / "models" / f"{model}.onnx"
    out = folder / f"{model}_{tag}.onnx"
    start = time.perf_counter()
    report = onnxcomp.compress(source, out, eval_data=str(ROOT / "models" / data), **options)
    seconds = time.perf_counter() - start
    check = onnxcomp.verify(source, out, str(ROOT / "models" / data))
    return {"outliers": sum(layer.outliers for layer in report.layers),
            "weights_with": sum(layer.outliers > 0 for layer in report.layers), "weights": len(report.layers),
            "ratio": report.ratio, "before": report.accuracy_before, "after": report.accuracy_after,
            "cosine": check.min_cosine, "top1": check.min_top1, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--options", nargs="*", default=OPTION_SETS)
    args = parser.parse_args()
    rows = ["| model | options | outliers | weights with outliers | ratio | top-1 before | top-1 after | "
            "min cosine | top-1 agreement | compress s |", "|---|---|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as folder:
        for model in args.models.split(","):
            for text in args.options:
                for outliers in ("auto", 0):
                    options = {**options_of(text), "outliers": outliers}
                    m = measure(model, MODELS[model], options, Path(folder), f"{len(rows)}")
                    shown = (text + " " if text else "") + f"--outliers {outliers}"
                    rows.append(f"| {model} | `{shown}` | {m['outliers']:,} | {m['weights_with']} of {m['weights']} | "
                                f"{m['ratio']:.1f}x | {100 * m['before']:.2f} % | {100 * m['after']:.2f} % | "
                                f"{m['cosine']:.4f} | {m['top1']:.4f} | {m['seconds']:.1f} |")
                    print(rows[-1], flush=True)
    update_section("outliers-bundled", "\n".join(rows))


if __name__ == "__main__":
    main()
