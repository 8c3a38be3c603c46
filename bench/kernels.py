"""Layer-level speed of CodebookMatMul against onnxruntime's dense MatMul and its 4-bit MatMulNBits.

One run measures, for each shape (K x N), batch (rows of X) and thread count, the median latency of:
dense fp32 MatMul, MatMulNBits (4-bit, block 32, symmetric, from onnxruntime's own quantizer, fp32
activations) and CodebookMatMul at 3, 4 and 5 index bits (random codebook, Gaussian-peaked indices),
measured interleaved so all variants see the same machine state. It also times session creation (where
the Huffman decode happens) and reports decoded indices per second. Writes the tables into
docs/benchmarks.md (bench/report.py).

    python bench/kernels.py [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import onnxcomp  # noqa: E402
from onnxcomp.core.sidecar import encode_record  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import update_section  # noqa: E402

OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid(onnxcomp.runtime.DOMAIN, 1)]


def model_of(node, initializers, k):
    graph = helper.make_graph([node], "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(graph, opset_imports=OPSETS)
    model.ir_version = 8
    return model


def dense_model(weight):
    return model_of(helper.make_node("MatMul", ["x", "w"], ["y"]), [numpy_helper.from_array(weight, "w")], weight.shape[0])


def nbits_model(weight):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    quantizer = MatMulNBitsQuantizer(dense_model(weight), bits=4, block_size=32, is_symmetric=True)
    quantizer.process()
    return quantizer.model.model


def codebook_model(rng, k, n, bits):
    size = 1 << bits
    codebook = np.sort(rng.standard_normal(size)).astype(np.float32) * 0.05
    # Peaked indices like a k-means codebook over Gaussian weights (so Huffman coding has work to do).
    indices = np.clip(np.round(rng.standard_normal((k, n)) * size / 6 + size / 2), 0, size - 1).astype(np.int64)
    record = encode_record(codebook, indices, (k, n), bits)
    init = numpy_helper.from_array(np.frombuffer(record, np.uint8), "w_record")
    return model_of(helper.make_node("CodebookMatMul", ["x", "w_record"], ["y"], domain=onnxcomp.runtime.DOMAIN), [init], k), len(record)


def session(model, threads, custom):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Several sessions are alive at once (round-robin timing): idle pool threads must not spin and steal the
    # cores from the session being timed.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if custom:
        options = onnxcomp.runtime.session_options(options)
    start = time.perf_counter()
    s = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return s, time.perf_counter() - start


def medians(sessions, x, budget):
    """Median seconds per run of each session, measured round-robin."""
    feeds = {"x": x}
    for s in sessions.values():
        s.run(None, feeds)
    first = {name: min(timeit(s, feeds) for _ in range(2)) for name, s in sessions.items()}
    reps = int(max(5, min(60, budget / max(sum(first.values()), 1e-6))))
    times = {name: [] for name in sessions}
    for _ in range(reps):
        for name, s in sessions.items():
            times[name].append(timeit(s, feeds))
    return {name: float(np.median(t)) for name, t in times.items()}


def timeit(s, feeds):
    start = time.perf_counter()
    s.run(None, feeds)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="768x768 only, short budget")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    shapes = [(768, 768)] if args.quick else [(768, 768), (4096, 4096), (4096, 11008)]
    batches, threads_list, bits_list = [1, 8, 64], [1, 2], [3, 4, 5]
    rng = np.random.default_rng(0)
    rows, creation_rows = [], []
    for k, n in shapes:
        weight = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
        models = {"dense": (dense_model(weight), False), "nbits4": (nbits_model(weight), False)}
        record_bytes = {}
        for bits in bits_list:
            model, size = codebook_model(rng, k, n, bits)
            models[f"cb{bits}"] = (model, True)
            record_bytes[f"cb{bits}"] = size
        for threads in threads_list:
            sessions, created = {}, {}
            for name, (model, custom) in models.items():
                sessions[name], created[name] = session(model, threads, custom)
            if threads == 1:
                for name, (model, custom) in models.items():  # best of three creations
                    created[name] = min([created[name]] + [session(model, 1, custom)[1] for _ in range(2)])
                for name in models:
                    if name.startswith("cb"):
                        # the whole creation time counts as decoding: a lower bound on the decode rate
                        creation_rows.append((f"{k}x{n}", name[2:], record_bytes[name] / 1e6, created["dense"] * 1e3,
                                              created["nbits4"] * 1e3, created[name] * 1e3,
                                              k * n / 1e6 / created[name]))
            for m in batches:
                x = rng.standard_normal((m, k)).astype(np.float32)
                t = medians(sessions, x, budget=0.6 if args.quick else 2.0)
                rows.append((f"{k}x{n}", m, threads, t))
                print(f"{k}x{n} batch {m} threads {threads}: " +
                      "  ".join(f"{name} {v * 1e3:.3f} ms" for name, v in t.items()), flush=True)
            del sessions

    lines = ["| K x N | batch | threads | dense MatMul ms | MatMulNBits 4-bit ms | ours 3-bit ms | ours 4-bit ms | ours 5-bit ms "
             "| dense / ours 4-bit | ours 4-bit / NBits |", "|---|---|---|---|---|---|---|---|---|---|"]
    for shape, m, threads, t in rows:
        lines.append(f"| {shape} | {m} | {threads} | {t['dense'] * 1e3:.3f} | {t['nbits4'] * 1e3:.3f} | {t['cb3'] * 1e3:.3f} | "
                     f"{t['cb4'] * 1e3:.3f} | {t['cb5'] * 1e3:.3f} | {t['dense'] / t['cb4']:.2f}x | {t['cb4'] / t['nbits4']:.2f} |")
    layer_table = "\n".join(lines)
    lines = ["| K x N | bits | record MB | dense session ms | MatMulNBits session ms | ours session ms "
             "| indices decoded per second of creation, M/s (lower bound on decode MB/s) |", "|---|---|---|---|---|---|---|"]
    for shape, bits, mb, dense_ms, nbits_ms, ours_ms, rate in creation_rows:
        lines.append(f"| {shape} | {bits} | {mb:.2f} | {dense_ms:.1f} | {nbits_ms:.1f} | {ours_ms:.1f} | {rate:.0f} |")
    creation_table = "\n".join(lines)
    print(layer_table)
    print(creation_table)
    load = os.getloadavg()[0]
    if not args.no_write:
        update_section("kernels-layer", f"Load average at the end of the run: {load:.1f} (other jobs shared the "
                       "machine; 2-thread figures suffer most).\n\nMedian latency per run, fp32 activations, one session per variant and thread "
                       "count (intra_op_num_threads), variants measured round-robin in one run.\n\n" + layer_table)
        update_section("kernels-session-creation", "Session creation (single thread) for the layer models above; "
                       "ours includes parsing, CRC, Huffman decode and repacking into panels.\n\n" + creation_table)


if __name__ == "__main__":
    main()
