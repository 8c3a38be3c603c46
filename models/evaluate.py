#!/usr/bin/env python3
"""Print the top-1 accuracy of an ONNX classifier on an .npz evaluation file.

The .npz must hold ``input`` (float32, first axis = samples, in the model's input shape)
and ``labels`` (int64). Needs only numpy and onnxruntime.

    python models/evaluate.py models/lenet300_fashion.onnx models/fashion_eval.npz
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import onnxruntime as ort


def top1(model_path: str, npz_path: str, batch: int = 1000, threads: int = 0) -> tuple[float, int]:
    data = np.load(npz_path)
    x, y = data["input"], data["labels"]
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    out_name = sess.get_outputs()[0].name
    correct = 0
    for i in range(0, len(x), batch):
        logits = sess.run([out_name], {in_name: x[i:i + batch]})[0]
        correct += int((logits.argmax(axis=1) == y[i:i + batch]).sum())
    return correct / len(x), len(x)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="path to the .onnx model")
    ap.add_argument("data", help="path to the .npz file with 'input' and 'labels'")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = default)")
    args = ap.parse_args(argv)
    acc, n = top1(args.model, args.data, args.batch, args.threads)
    print(f"{args.model}: top-1 accuracy {acc:.4f} on {n} samples of {args.data}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
