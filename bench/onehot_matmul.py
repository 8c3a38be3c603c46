"""One-hot rows times a compressed weight: CodebookMatMul's sparse rows against its dense-panel kernel and the dense MatMul.

An exporter that writes an embedding lookup as `Cast(Equal(x, arange(K))) @ W` (magika: `[2048, 257] x [257, 64]`)
feeds CodebookMatMul rows of X with a single 1.0. This times three sessions on the same X in one process,
alternating run by run: onnxruntime's MatMul on the decoded weight (a constant initializer), CodebookMatMul with the
sparse-row path (default) and with it off (``ONNXCOMP_SPARSE_ROWS=0``, read at kernel creation: the dense-panel kernel
on every row). One onnxruntime thread; prints the median process CPU time per run (us) of each and the ratios to the
dense MatMul. With one nonzero per row it also times the whole chain from the indices (int32 ``[rows]``), as
magika runs it: ``Cast(Equal(Unsqueeze(ids, -1), arange(K)))`` into the dense MatMul, the same into CodebookMatMul,
and the row lookup that replaces both (CodebookGather with ``one_hot=1``, docs/ops.md; its output is checked equal
bit for bit to the CodebookMatMul chain's). Command and figures in docs/benchmarks.md.

    python bench/onehot_matmul.py [--rows 2048] [--k 257] [--n 64] [--bits 8] [--repeats 300] [--nonzeros 1]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import onnxcomp
from onnxcomp.core.sidecar import decode_record, encode_record


def model(nodes, k: int, initializers, domains, ids: bool = False) -> bytes:
    source = helper.make_tensor_value_info("ids", TensorProto.INT32, ["M"]) if ids else \
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])
    graph = helper.make_graph(nodes, "onehot", [source],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in domains])
    proto.ir_version = 8
    return proto.SerializeToString()


def session(data: bytes, custom: bool = True) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if custom:
        options = onnxcomp.runtime.session_options(options)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--k", type=int, default=257)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--bits", type=int, default=8, help="index bits of the codebook (2**bits entries)")
    parser.add_argument("--nonzeros", type=int, default=1, help="nonzeros per row of X (1: one-hot)")
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    size = 1 << args.bits
    codebook = rng.standard_normal(size).astype(np.float32)
    record = encode_record(codebook, rng.integers(0, size, (args.k, args.n)), (args.k, args.n), args.bits)
    weight = decode_record(record).to_dense()
    x = np.zeros((args.rows, args.k), np.float32)
    for _ in range(args.nonzeros):
        x[np.arange(args.rows), rng.integers(0, args.k, args.rows)] = 1.0
    custom = [("", 17), (onnxcomp.runtime.DOMAIN, 1)]
    compressed = model([helper.make_node("CodebookMatMul", ["x", "r"], ["y"], domain=onnxcomp.runtime.DOMAIN)], args.k,
                       [numpy_helper.from_array(np.frombuffer(record, np.uint8), "r")], custom)
    dense = model([helper.make_node("MatMul", ["x", "w"], ["y"])], args.k, [numpy_helper.from_array(weight, "w")],
                  [("", 17)])
    os.environ.pop("ONNXCOMP_SPARSE_ROWS", None)
    sessions = {"MatMul (dense)": session(dense, custom=False), "CodebookMatMul sparse rows": session(compressed)}
    os.environ["ONNXCOMP_SPARSE_ROWS"] = "0"  # read at kernel creation
    sessions["CodebookMatMul dense panels"] = session(compressed)
    del os.environ["ONNXCOMP_SPARSE_ROWS"]
    feeds = {key: {"x": x} for key in sessions}
    outputs = [s.run(None, {"x": x})[0] for s in sessions.values()]
    assert np.array_equal(outputs[1].view(np.uint32), outputs[2].view(np.uint32)), "sparse rows changed the bits"
    if args.nonzeros == 1:
        ids = {"ids": x.argmax(axis=1).astype(np.int32)}
        one_hot = [helper.make_node("Unsqueeze", ["ids", "axes"], ["column"]), helper.make_node("Equal", ["column", "classes"], ["hot"]),
                   helper.make_node("Cast", ["hot"], ["x"], to=TensorProto.FLOAT)]
        constants = [numpy_helper.from_array(np.array([-1], np.int64), "axes"),
                     numpy_helper.from_array(np.arange(args.k, dtype=np.int32), "classes")]
        chains = {
            "chain + MatMul (dense)": (model(one_hot + [helper.make_node("MatMul", ["x", "w"], ["y"])], args.k,
                                             constants + [numpy_helper.from_array(weight, "w")], [("", 17)], ids=True), False),
            "chain + CodebookMatMul": (model(one_hot + [helper.make_node("CodebookMatMul", ["x", "r"], ["y"], domain=onnxcomp.runtime.DOMAIN)],
                                             args.k, constants + [numpy_helper.from_array(np.frombuffer(record, np.uint8), "r")], custom,
                                             ids=True), True),
            "CodebookGather one_hot=1": (model([helper.make_node("CodebookGather", ["r", "ids"], ["y"], domain=onnxcomp.runtime.DOMAIN, one_hot=1)],
                                               args.k, [numpy_helper.from_array(np.frombuffer(record, np.uint8), "r")], custom, ids=True), True),
        }
        for key, (data, is_custom) in chains.items():
            sessions[key], feeds[key] = session(data, custom=is_custom), ids
        chained = [sessions[key].run(None, ids)[0] for key in chains]
        assert np.array_equal(chained[1].view(np.uint32), chained[2].view(np.uint32)), "the lookup changed the bits"
    times: dict[str, list[float]] = {key: [] for key in sessions}
    for _ in range(args.repeats):
        for key, s in sessions.items():
            start = time.process_time()
            s.run(None, feeds[key])
            times[key].append(time.process_time() - start)
    base = float(np.median(times["MatMul (dense)"]))
    print(f"X [{args.rows}, {args.k}] with {args.nonzeros} nonzero(s) per row, W [{args.k}, {args.n}] of {size} "
          f"entries, {args.repeats} runs each, median process CPU time per run:")
    for key, values in times.items():
        median = float(np.median(values))
        print(f"  {key:30s} {median * 1e6:9.1f} us   {median / base:6.3f} of the dense MatMul")


if __name__ == "__main__":
    main()
