"""Coverage of real models: the share of float parameters `onnxcomp compress` compresses with default options.

For each folder MODELS/NAME holding a model.onnx (the real-model zoo's cache, bench/zoo.py, is laid out so),
the model is compressed with default options into a temporary folder, the output is checked to load and run in
onnxruntime with the library (compress itself checks loading), and one row is printed: name, float parameters,
coverage, ratio, seconds, then every tensor left dense with its reason. Nothing is downloaded here.

    nice -n 10 python bench/coverage.py ~/.cache/onnxcomp-zoo/models [NAME ...]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import onnxcomp


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    root, names = os.path.expanduser(argv[0]), argv[1:]
    names = names or sorted(n for n in os.listdir(root) if os.path.isfile(os.path.join(root, n, "model.onnx")))
    print(f"| model | float params | coverage | ratio | seconds | left dense |")
    print("|---|---:|---:|---:|---:|---|")
    for name in names:
        source = os.path.join(root, name, "model.onnx")
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            try:
                report = onnxcomp.compress(source, os.path.join(folder, "out.onnx"))
            except onnxcomp.OnnxcompError as error:
                print(f"| {name} | - | - | - | - | error: {error} |")
                continue
            seconds = time.perf_counter() - start
        dense = "; ".join(f"{tensor}: {reason}" for tensor, reason in report.skipped) or "-"
        print(f"| {name} | {report.float_params:,} | {report.coverage:.2%} | {report.ratio:.1f}x | {seconds:.0f} | {dense} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
