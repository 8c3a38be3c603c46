"""CodebookConv's Winograd path against onnxruntime's NCHWc Conv, per real layer, through the library.

For every 3x3 stride-1 group-1 convolution of the named zoo models with C and O multiples of 16 (the layers of
bench/winograd_proto.py), four one-node sessions on the layer's own weights alternate in one process on one
onnxruntime thread: the original Conv (onnxruntime's optimiser makes it ReorderInput -> NCHWc Conv ->
ReorderOutput) and CodebookConv with the float32 weight (same reorders) under ONNXCOMP_WINOGRAD=0 (onnxruntime's
NCHWc Conv invoked by the library), 2 and 4 (read at kernel creation). Prints median process CPU ms per run and
the ratios to the original; the per-run weight transform and the reorders are inside every figure.

    python bench/winograd_layers.py --models vgg16-tumor,yolov8n-nudenet,ddddocr-det [--batch 1] [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import onnxruntime as ort

import onnxcomp
from winograd_proto import conv_model, distinct_layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg16-tumor,yolov8n-nudenet,ddddocr-det")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--unique", action="store_true", help="time each distinct shape once")
    args = parser.parse_args()
    library = onnxcomp.runtime.library_path()
    rng = np.random.default_rng(0)
    names = ["original", "W=0", "W=2", "W=4"]
    print(f"batch {args.batch}, {args.repeats} repeats, one thread; median CPU ms per run")
    print("| model | C -> O | H x W | original ms | W=0 / orig | W=2 / orig | W=4 / orig |")
    print("|---|---|---|---|---|---|---|")
    sums = dict.fromkeys(names, 0.0)
    for layer in distinct_layers(args.models, args.unique):
        model = layer["model"]
        n = args.batch
        x = rng.standard_normal((n, layer["c"], layer["h"], layer["w"])).astype(np.float32)
        sessions = []
        for name in names:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            if name == "original":
                sessions.append(ort.InferenceSession(conv_model(layer, n), options, providers=["CPUExecutionProvider"]))
                continue
            options.register_custom_ops_library(library)
            os.environ["ONNXCOMP_WINOGRAD"] = name[2:]
            try:
                sessions.append(ort.InferenceSession(conv_model(layer, n, codebook=True), options,
                                                     providers=["CPUExecutionProvider"]))
            finally:
                del os.environ["ONNXCOMP_WINOGRAD"]
        times = {name: [] for name in names}
        for session in sessions:
            session.run(None, {"x": x})
        for _ in range(args.repeats):
            for name, session in zip(names, sessions):
                start = time.process_time()
                session.run(None, {"x": x})
                times[name].append(time.process_time() - start)
        med = {name: float(np.median(times[name])) * 1000 for name in names}
        for name in names:
            sums[name] += med[name]
        base = med["original"]
        print(f"| {model} | {layer['c']} -> {layer['o']} | {layer['h']} x {layer['w']} | {base:.2f} | "
              f"{med['W=0'] / base:.2f} | {med['W=2'] / base:.2f} | {med['W=4'] / base:.2f} |", flush=True)
    print("sums (ms): " + ", ".join(f"{name} {sums[name]:.1f}" for name in names) +
          f"; W=2 / original {sums['W=2'] / sums['original']:.2f}, W=4 / original {sums['W=4'] / sums['original']:.2f}")


if __name__ == "__main__":
    main()
