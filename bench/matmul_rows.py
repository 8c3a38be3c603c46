"""Where CodebookMatMul should switch from its fused kernel to the dense-panel GEMM on the weight decoded for the run.

For each weight shape [K, N] (4-bit codebook, random indices) and each row count M, times three sessions on the
same X in one process, alternating: the dense MatMul (onnxruntime, constant weight), CodebookMatMul with the fused
kernel only (ONNXCOMP_GEMM_ROWS=0) and CodebookMatMul decoding W for the run into dense panels and running its
dense-panel kernel (ONNXCOMP_GEMM_ROWS=1). Prints medians (ms) and the ratios to dense: of the process CPU time per run with one
thread (robust to other jobs on a shared machine), of wall time with more. Command in docs/benchmarks.md.

    python bench/matmul_rows.py [--threads 1] [--repeats 15] [--bits 4] [--shapes 1024x8210,...] [--rows 1,22,...]

``--outliers F`` stores a fraction F of the weights as exact outliers (record version 2), so the fused kernel's
sparse per-column corrections are timed too. ``--bits`` sets the codebook (2**bits entries: 4 bits take the AVX2 permute of 16 entries, 5 and 6 bits the
permute-and-blend tree of 32 and 64, more a gather). A fourth column times CodebookMatMul with ``decode_once=1``
(W decoded once, by the first run, into dense panels, then the dense-panel kernel in every run: docs/ops.md).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import onnxcomp
from onnxcomp.core.sidecar import encode_record

SHAPES = [(257, 64), (512, 214), (384, 1536), (1536, 384), (768, 768)]
ROWS = [1, 8, 16, 32, 64, 128, 512, 2048]


def model(k: int, n: int, fused: bool, rng: np.random.Generator, bits: int = 4, decode_once: bool = False,
          outliers: float = 0.0) -> bytes:
    codebook = np.sort(rng.standard_normal(1 << bits)).astype(np.float32)
    indices = rng.integers(0, 1 << bits, (k, n))
    positions = np.sort(rng.choice(k * n, int(outliers * k * n), replace=False)).astype(np.int64)
    values = (4 * rng.standard_normal(len(positions))).astype(np.float32)
    dense = codebook[indices]
    dense.reshape(-1)[positions] = values
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])
    if fused:
        data = encode_record(codebook, indices, (k, n), bits, positions, values)
        record = numpy_helper.from_array(np.frombuffer(data, np.uint8), "r")
        node = helper.make_node("CodebookMatMul", ["x", "r"], ["y"], domain=onnxcomp.runtime.DOMAIN,
                                **({"decode_once": 1} if decode_once else {}))
        graph = helper.make_graph([node], "m", [x], [y], [record])
    else:
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "m", [x], [y],
                                  [numpy_helper.from_array(dense, "w")])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(onnxcomp.runtime.DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString()


def session(data: bytes, threads: int, gemm_rows: str | None) -> ort.InferenceSession:
    old = os.environ.get("ONNXCOMP_GEMM_ROWS")
    if gemm_rows is not None:
        os.environ["ONNXCOMP_GEMM_ROWS"] = gemm_rows
    try:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        return ort.InferenceSession(data, onnxcomp.runtime.session_options(options), providers=["CPUExecutionProvider"])
    finally:
        if old is None:
            os.environ.pop("ONNXCOMP_GEMM_ROWS", None)
        else:
            os.environ["ONNXCOMP_GEMM_ROWS"] = old


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="intra_op_num_threads (0: onnxruntime's default)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--bits", type=int, default=4, help="index bits of the codebook (2**bits entries)")
    parser.add_argument("--shapes", help="K x N weights, e.g. 1024x8210,384x1536 (default: the built-in list)")
    parser.add_argument("--rows", help="row counts M, e.g. 1,22,49 (default: the built-in list)")
    parser.add_argument("--outliers", type=float, default=0.0,
                        help="fraction of weights stored as exact outliers beside the codebook (default 0)")
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")] if args.shapes else SHAPES
    rows = [int(v) for v in args.rows.split(",")] if args.rows else ROWS
    rng = np.random.default_rng(0)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    print(f"threads={args.threads} repeats={args.repeats}; medians of {'CPU' if args.threads == 1 else 'wall'} time in ms; "
          "ratio = time / dense MatMul")
    print(f"bits={args.bits} outliers={args.outliers}")
    print(f"{'K x N':>11} {'M':>5} {'dense':>9} {'fused':>9} {'gemm':>9} {'once':>9} {'fused/dense':>11} "
          f"{'gemm/dense':>10} {'once/dense':>10}")
    for k, n in shapes:
        make = lambda fused, once=False: model(k, n, fused, np.random.default_rng(k), args.bits, once,  # noqa: E731
                                               args.outliers)
        sessions = {"dense": session(make(False), args.threads, None), "fused": session(make(True), args.threads, "0"),
                    "gemm": session(make(True), args.threads, "1"), "once": session(make(True, True), args.threads, None)}
        for m in rows:
            x = rng.standard_normal((m, k)).astype(np.float32)
            times = {name: [] for name in sessions}
            for s in sessions.values():
                s.run(None, {"x": x})
            for _ in range(args.repeats):
                for name, s in sessions.items():
                    start = clock()
                    s.run(None, {"x": x})
                    times[name].append(clock() - start)
            med = {name: 1e3 * float(np.median(t)) for name, t in times.items()}
            print(f"{k:>5} x {n:<5} {m:>5} {med['dense']:9.3f} {med['fused']:9.3f} {med['gemm']:9.3f} {med['once']:9.3f} "
                  f"{med['fused'] / med['dense']:11.2f} {med['gemm'] / med['dense']:10.2f} {med['once'] / med['dense']:10.2f}")


if __name__ == "__main__":
    main()
