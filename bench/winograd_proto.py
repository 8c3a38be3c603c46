"""Winograd F(2x2,3x3) and F(4x4,3x3) on the NCHWc16 layout against onnxruntime's NCHWc Conv: time per layer, error.

A prototype measurement for issue #14 (branch speed13), not part of the library. For every 3x3, stride-1,
dilation-1, group-1 convolution of the named zoo models with C and O multiples of 16 (shapes by ONNX shape
inference at the model's zoo input size, the layer's own weights and bias), it builds a one-Conv ONNX model
(onnxruntime's optimiser converts it to ReorderInput -> NCHWc Conv -> ReorderOutput) and times, alternating in one
process on one thread: onnxruntime's NCHWc Conv node (its profiled kernel time, median) and the library's AVX-512
Winograd kernel alone (csrc/cpu/winograd_avx512.cc with bench/winograd_proto.cc's entry points, compiled here
with g++ -O3 -mavx512f -mfma -ffp-contract=off; its call on a pre-blocked input with U transformed beforehand,
median of wall times). Error: max |y - ref| / max |ref| against a float64 numpy convolution, inputs standard
normal. bench/winograd_layers.py times the whole CodebookConv node instead (reorders and U's transform included).

    python bench/winograd_proto.py --models vgg16-tumor,yolov8n-nudenet,ddddocr-det [--batch 1] [--repeats 10]

Prints a markdown table: layer shape, onnxruntime ms, F(2) ms, F(4) ms, speedups, the three errors.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper, shape_inference

HERE = os.path.dirname(os.path.abspath(__file__))
ZOO = os.path.expanduser("~/.cache/onnxcomp-zoo/models")
INPUT_SHAPES = {"vgg16-tumor": [240, 240, 3], "yolov8n-nudenet": [3, 320, 320], "ddddocr-det": [3, 416, 416]}


def build_library(folder: str) -> ctypes.CDLL:
    """Compiles bench/winograd_proto.cc and the library's AVX-512 Winograd kernel into folder; returns the loaded
    library (entry points typed)."""
    out = os.path.join(folder, "winograd_proto.so")
    csrc = os.path.join(HERE, os.pardir, "csrc")
    subprocess.run(["g++", "-O3", "-mavx512f", "-mfma", "-ffp-contract=off", "-shared", "-fPIC", "-std=c++17",
                    "-DONNXCOMP_HAVE_AVX512_KERNELS", "-I", csrc, os.path.join(HERE, "winograd_proto.cc"),
                    os.path.join(csrc, "cpu", "winograd_avx512.cc"), "-o", out], check=True)
    lib = ctypes.CDLL(out)
    f32 = ctypes.POINTER(ctypes.c_float)
    i64 = ctypes.c_int64
    lib.winograd_weights.argtypes = [ctypes.c_int, f32, i64, i64, f32]
    lib.winograd_weights.restype = None
    lib.winograd_conv.argtypes = [ctypes.c_int, f32, i64, i64, i64, i64, f32, i64, f32, i64, i64, i64, i64,
                                  ctypes.c_int, i64, f32]
    return lib


def ptr(a: np.ndarray):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


def layers(model: str) -> list[dict]:
    """The model's 3x3 stride-1 group-1 convolutions with C, O multiples of 16: dicts of C, O, H, W, pads, w, b."""
    proto = onnx.load(os.path.join(ZOO, model, "model.onnx"))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, [1] + INPUT_SHAPES[model]):
        dim.ClearField("dim_param")
        dim.dim_value = value
    proto = shape_inference.infer_shapes(proto)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(proto.graph.value_info) + list(proto.graph.input)}
    inits = {i.name: i for i in proto.graph.initializer}
    found = []
    for node in proto.graph.node:
        if node.op_type != "Conv":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        if (w.shape[2:] != (3, 3) or attrs.get("group", 1) != 1 or list(attrs.get("strides", [1, 1])) != [1, 1]
                or list(attrs.get("dilations", [1, 1])) != [1, 1] or attrs.get("auto_pad", b"NOTSET") != b"NOTSET"):
            continue
        o, c = w.shape[:2]
        if c % 16 or o % 16:
            continue
        b = (numpy_helper.to_array(inits[node.input[2]]).astype(np.float32) if len(node.input) > 2 and node.input[2]
             else np.zeros(o, np.float32))
        h, wd = shapes[node.input[0]][2:]
        found.append({"model": model, "c": c, "o": o, "h": h, "w": wd, "pads": list(attrs.get("pads", [0] * 4)),
                      "weight": w, "bias": b})
    return found


def distinct_layers(models: str, unique: bool):
    """layers() of each comma-separated model; with unique, the first layer of each shape (C, O, H, W, pads) only."""
    for model in models.split(","):
        seen = set()
        for layer in layers(model):
            key = (layer["c"], layer["o"], layer["h"], layer["w"], tuple(layer["pads"]))
            if unique and key in seen:
                continue
            seen.add(key)
            yield layer


def conv_model(layer: dict, n: int, codebook: bool = False) -> bytes:
    """One Conv node on the layer's weight and bias, X [n, C, H, W]; with codebook, a CodebookConv node instead
    (the float32 weight as W, domain ai.onnxcomp)."""
    domain = {"domain": "ai.onnxcomp"} if codebook else {}
    node = helper.make_node("CodebookConv" if codebook else "Conv", ["x", "w", "b"], ["y"], pads=layer["pads"],
                            **domain)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, layer["c"], layer["h"], layer["w"]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(layer["weight"], "w"), numpy_helper.from_array(layer["bias"], "b")]
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("ai.onnxcomp", 1)] if codebook else [])
    graph = helper.make_graph([node], "conv", [x], [y], inits)
    return helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString()


def reference(x: np.ndarray, layer: dict) -> np.ndarray:
    """float64 convolution, [N, O, OH, OW]."""
    top, left, bottom, right = layer["pads"]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    oh, ow = xp.shape[2] - 2, xp.shape[3] - 2
    w = layer["weight"].astype(np.float64)
    y = np.zeros((x.shape[0], w.shape[0], oh, ow))
    for i in range(3):
        for j in range(3):
            y += np.einsum("nchw,oc->nohw", xp[:, :, i:i + oh, j:j + ow], w[:, :, i, j], optimize=True)
    return y + layer["bias"].astype(np.float64)[None, :, None, None]


def block16(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(n, c // 16, 16, h, w).transpose(0, 1, 3, 4, 2))


def unblock16(y: np.ndarray) -> np.ndarray:
    n, cb, h, w, _ = y.shape
    return np.ascontiguousarray(y.transpose(0, 1, 4, 2, 3).reshape(n, cb * 16, h, w))


def block_tiles_for(c: int, o: int, m: int, total: int) -> int:
    """Tiles per block: the library's rule (WinogradBlockTiles in csrc/cpu/codebook_conv.cc): 12, and 12 more per
    8 MiB of U = alpha^2 * C * O floats."""
    u_bytes = 4 * (m + 2) ** 2 * c * o
    return min(12 * max(1, -(-u_bytes // (8 << 20))), total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg16-tumor,yolov8n-nudenet,ddddocr-det")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--block", type=int, default=0, help="tiles per block (0: the rule in block_tiles_for)")
    parser.add_argument("--unique", action="store_true", help="time each distinct shape once")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="winograd-proto-")
    lib = build_library(folder)
    rng = np.random.default_rng(0)
    print(f"batch {args.batch}, {args.repeats} repeats, one thread; ms are medians")
    print("| model | C -> O | H x W | ort ms | F2 ms | F4 ms | ort / F2 | ort / F4 | ort err | F2 err | F4 err |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    totals = {"ort": 0.0, "f2": 0.0, "f4": 0.0}
    for layer in distinct_layers(args.models, args.unique):
        model = layer["model"]
        n = args.batch
        x = rng.standard_normal((n, layer["c"], layer["h"], layer["w"])).astype(np.float32)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(folder, "prof")
        session = ort.InferenceSession(conv_model(layer, n), options, providers=["CPUExecutionProvider"])
        xb = block16(x)
        top, left, bottom, right = layer["pads"]
        oh, ow = layer["h"] + top + bottom - 2, layer["w"] + left + right - 2
        outs, times, us = {}, {"f2": [], "f4": []}, {}
        for m in (2, 4):
            u = np.empty(((m + 2) ** 2 * layer["o"] * layer["c"] + 16,), np.float32)
            offset = (-u.ctypes.data % 64) // 4
            u = u[offset:offset + (m + 2) ** 2 * layer["o"] * layer["c"]]
            o, c = layer["o"], layer["c"]
            filter_obo = np.ascontiguousarray(layer["weight"].reshape(o // 16, 16, c, 3, 3).transpose(0, 2, 3, 4, 1))
            lib.winograd_weights(m, ptr(filter_obo), c, o, ptr(u))
            us[m] = u
            outs[m] = np.empty((n, layer["o"] // 16, oh, ow, 16), np.float32)
        tiles = {m: n * ((oh + m - 1) // m) * ((ow + m - 1) // m) for m in (2, 4)}
        blocks = {m: args.block or block_tiles_for(layer["c"], layer["o"], m, tiles[m]) for m in (2, 4)}
        y_ort = session.run(None, {"x": x})[0]
        for _ in range(args.repeats + 1):
            session.run(None, {"x": x})
            for m in (2, 4):
                start = time.perf_counter()
                rc = lib.winograd_conv(m, ptr(xb), n, layer["c"], layer["h"], layer["w"], ptr(us[m]), layer["o"],
                                       ptr(layer["bias"]), top, left, bottom, right, 0, blocks[m], ptr(outs[m]))
                times[f"f{m}"].append(time.perf_counter() - start)
                assert rc == 0
        profile = session.end_profiling()
        with open(profile) as f:
            events = json.load(f)
        conv = [e["dur"] / 1000 for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
                and e["args"].get("op_name") == "Conv"]
        t_ort = float(np.median(conv[1:]))  # the first is the first run's
        t2, t4 = (float(np.median(times[k][1:])) * 1000 for k in ("f2", "f4"))
        ref = reference(x, layer)
        scale = np.abs(ref).max()
        err = [np.abs(y - ref).max() / scale for y in (y_ort, unblock16(outs[2]), unblock16(outs[4]))]
        totals["ort"] += t_ort
        totals["f2"] += t2
        totals["f4"] += t4
        print(f"| {model} | {layer['c']} -> {layer['o']} | {layer['h']} x {layer['w']} | {t_ort:.2f} | {t2:.2f} | "
              f"{t4:.2f} | {t_ort / t2:.2f} | {t_ort / t4:.2f} | {err[0]:.1e} | {err[1]:.1e} | {err[2]:.1e} |",
              flush=True)
    print(f"sums: ort {totals['ort']:.1f} ms, F2 {totals['f2']:.1f} ms, F4 {totals['f4']:.1f} ms; "
          f"ort / F2 {totals['ort'] / totals['f2']:.2f}, ort / F4 {totals['ort'] / totals['f4']:.2f}")


if __name__ == "__main__":
    main()
