"""CodebookLSTM against onnxruntime's LSTM on the same decoded weights, one LSTM node, CPU time per run.

For each shape: the dense LSTM with W, R, B as initializers (what a dense model runs: onnxruntime prepacks them
at session creation) and CodebookLSTM on 4-bit records of the same values (docs/ops.md: it invokes onnxruntime's
LSTM on working copies, which onnxruntime packs in every run). Runs alternate; medians of process CPU time.

    python bench/lstm_speed.py [--threads 1] [--repeats 200]

Shapes (hidden, input, sequence, batch, directions): the Silero VAD decoder (128, 128, 1, 1, 1) and the ddddocr
recogniser's LSTM (512, 512, 22, 1, 2).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import onnxcomp
from onnxcomp.core import sidecar

SHAPES = [(128, 128, 1, 1, 1), (512, 512, 22, 1, 2)]


def record(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    codebook = np.sort(rng.standard_normal(16).astype(np.float32)) * np.float32(0.1)
    data = sidecar.encode_record(codebook, rng.integers(0, 16, size=shape), shape, 4)
    return np.frombuffer(data, np.uint8), sidecar.decode_record(data).to_dense().astype(np.float32)


def models(hidden: int, inputs: int, seq: int, batch: int, directions: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    shapes = {"W": (directions, 4 * hidden, inputs), "R": (directions, 4 * hidden, hidden), "B": (directions, 8 * hidden)}
    records = {name: record(rng, shape) for name, shape in shapes.items()}
    attrs = {"hidden_size": hidden, "direction": "bidirectional" if directions == 2 else "forward"}
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [seq, batch, inputs])
    y = helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)

    def build(op: str, domain: str, tensors: list) -> bytes:
        node = helper.make_node(op, ["X", "W", "R", "B"], ["", "Y_h"], "lstm", domain=domain, **attrs)
        opsets = [helper.make_opsetid("", 14)] + ([helper.make_opsetid(domain, 1)] if domain else [])
        return helper.make_model(helper.make_graph([node], "lstm", [x], [y], tensors), opset_imports=opsets).SerializeToString()

    dense = build("LSTM", "", [numpy_helper.from_array(records[n][1], n) for n in shapes])
    compressed = build("CodebookLSTM", onnxcomp.DOMAIN, [numpy_helper.from_array(records[n][0], n) for n in shapes])
    return dense, compressed, {"X": rng.standard_normal((seq, batch, inputs)).astype(np.float32)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    def options() -> ort.SessionOptions:
        made = ort.SessionOptions()
        made.intra_op_num_threads = args.threads
        return made

    print("| hidden, input, sequence, batch, directions | dense LSTM ms | CodebookLSTM ms | ratio |")
    print("|---|---|---|---|")
    for shape in SHAPES:
        dense, compressed, feeds = models(*shape)
        sessions = [ort.InferenceSession(dense, options(), providers=["CPUExecutionProvider"]),
                    ort.InferenceSession(compressed, onnxcomp.runtime.session_options(options()),
                                         providers=["CPUExecutionProvider"])]
        outputs = [s.run(None, feeds)[0] for s in sessions]
        assert np.allclose(outputs[0], outputs[1], atol=1e-5), "CodebookLSTM disagrees with the dense LSTM"
        times = [[], []]
        repeats = args.repeats if shape[2] * shape[4] <= 2 else max(10, args.repeats // 10)
        for _ in range(repeats):
            for i, session in enumerate(sessions):
                start = time.process_time()
                session.run(None, feeds)
                times[i].append(time.process_time() - start)
        dense_ms, compressed_ms = (float(np.median(t)) * 1e3 for t in times)
        print(f"| {', '.join(map(str, shape))} | {dense_ms:.4f} | {compressed_ms:.4f} | {compressed_ms / dense_ms:.2f} |")


if __name__ == "__main__":
    main()
