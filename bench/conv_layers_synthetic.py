"""CodebookConv (dense float32 weight, through the library) against onnxruntime's own Conv + Relu on synthetic 3x3
layers with seeded random weights, one onnxruntime thread, alternating in one process.

For each layer N x C x H (square, pads 1) -> O: the original Conv + Relu (onnxruntime's optimiser makes it its
NCHWc convolution), CodebookConv under the default rule and CodebookConv with ONNXCOMP_WINOGRAD=0 (onnxruntime's
NCHWc Conv invoked by the library). Prints median process CPU ms per run of the original and the two ratios. Used on
branch `avx2speed` to set where the AVX2 Winograd kernel (blocks of 8) runs, on layers that are not the zoo's
evaluation data (docs/benchmarks.md).

    python bench/conv_layers_synthetic.py 1x64x56x64,1x512x15x512 [--repeats 15] [--winograd 4]

--winograd M sets ONNXCOMP_WINOGRAD=M for the second session (forces F(MxM) past the rule; default: the rule).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from conftest import session_with_env  # noqa: E402
from test_conv import dense_conv_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("layers", help="comma-separated NxCxHxO")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--winograd", default="", help="ONNXCOMP_WINOGRAD for the second session (2 or 4)")
    args = parser.parse_args()
    for spec in args.layers.split(","):
        n, c, h, o = map(int, spec.split("x"))
        rng = np.random.default_rng(0)
        w = (rng.standard_normal((o, c, 3, 3)) * 0.1).astype(np.float32)
        b = rng.standard_normal(o).astype(np.float32)
        x = rng.standard_normal((n, c, h, h)).astype(np.float32)
        attrs = dict(pads=[1, 1, 1, 1])
        graph = helper.make_graph(
            [helper.make_node("Conv", ["x", "w", "b"], ["t"], **attrs), helper.make_node("Relu", ["t"], ["y"])], "conv",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
        original = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        sessions = [ort.InferenceSession(original.SerializeToString(), options, providers=["CPUExecutionProvider"])]
        model = dense_conv_model(w, attrs, b, None, "Relu")
        sessions.append(session_with_env(model, {"ONNXCOMP_WINOGRAD": args.winograd} if args.winograd else {}))
        sessions.append(session_with_env(model, {"ONNXCOMP_WINOGRAD": "0"}))
        feeds = {"x": x}
        times = [[] for _ in sessions]
        for s in sessions:
            s.run(None, feeds)
        for _ in range(args.repeats):
            for s, t in zip(sessions, times):
                start = time.process_time()
                s.run(None, feeds)
                t.append(time.process_time() - start)
        base = float(np.median(times[0]))
        label = f"ONNXCOMP_WINOGRAD={args.winograd}" if args.winograd else "rule"
        print(f"| {spec} | {base * 1e3:.2f} | {np.median(times[1]) / base:.3f} ({label}) | "
              f"{np.median(times[2]) / base:.3f} |")


if __name__ == "__main__":
    main()
