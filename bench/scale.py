"""Compressing a model far larger than comfortable memory: peak RSS and wall time (issue #5, Scale).

Generates a transformer-like chain of MatMul weights stored as ONNX external data (written straight to the
data file through numpy.memmap, seeded), then compresses it in a fresh subprocess that reports its peak
resident set (VmHWM from /proc/self/status), its resident set just before compressing, and the wall time.
The default model is 24 weights of 4096x8192 float32 (3.2 GB); options keep the run quick (no pruning,
4-bit codebooks; the k-means fit already uses a bounded sample). ``--dense N`` leaves the last N weights
uncompressed (a layer rule), so the output passes 2 GB and its dense weights stream into OUT.data.
``--calib N`` compresses with N calibration samples (seeded normal inputs; activation statistics, Gram matrices,
compensated rounding and refits), ``--calib-prune`` with activation pruning as well.
Usage:
    python bench/scale.py [--layers 24] [--rows 4096] [--cols 8192] [--dense 0] [--calib N] [--repeat 1] [--source CHECKOUT]
        [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]


def weight_name(i: int) -> str:
    return f"layer{i:02d}.weight"


def make_model(path: str | os.PathLike, layers: int = 24, rows: int = 4096, cols: int = 8192, seed: int = 0) -> int:
    """Write ``path`` and ``path``.data: x[1, rows] -> MatMul by W0 [rows, cols] -> W1 [cols, rows] -> ...

    Weights are N(0, 1/fan_in) float32, generated in row blocks into a memory map, so the generator never
    holds a whole weight. Returns the data file's size in bytes.
    """
    path = Path(path)
    data_path = path.with_name(path.name + ".data")
    shapes = [(rows, cols) if i % 2 == 0 else (cols, rows) for i in range(layers)]
    total = sum(r * c * 4 for r, c in shapes)
    data = np.memmap(data_path, dtype=np.float32, mode="w+", shape=(total // 4,))
    rng = np.random.default_rng(seed)
    initializers, nodes, offset = [], [], 0
    for i, (r, c) in enumerate(shapes):
        block = max(1, (1 << 22) // c)
        scale = np.float32(1.0 / np.sqrt(r))
        for start in range(0, r, block):
            stop = min(r, start + block)
            data[offset // 4 + start * c: offset // 4 + stop * c] = rng.standard_normal((stop - start) * c, dtype=np.float32) * scale
        tensor = TensorProto(name=weight_name(i), data_type=TensorProto.FLOAT, dims=[r, c])
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(r * c * 4))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        initializers.append(tensor)
        nodes.append(helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", weight_name(i)], [f"h{i + 1}" if i < layers - 1 else "y"]))
        offset += r * c * 4
    data.flush()
    del data
    out_features = shapes[-1][1]
    graph = helper.make_graph(nodes, "scale", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", rows])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", out_features])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return total


CHILD = r"""
import json, os, sys, time
args = json.loads(sys.argv[1])
if args["source"]:  # another checkout's Python code (the compiled parts come from the installed package)
    sys.path.insert(0, args["source"])
    sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__.startswith("_editable")]
import onnxcomp
import onnxcomp.pipeline.compression, onnxcomp.core.codebook, onnxcomp.core.sidecar  # imported before the baseline

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

before = status("VmRSS")
start, times = time.perf_counter(), os.times()
report = onnxcomp.compress(args["input"], args["output"], **args["options"])
seconds = time.perf_counter() - start
after = os.times()
cpu = (after.user - times.user) + (after.system - times.system)
print(json.dumps({"rss_before": before, "peak_rss": status("VmHWM"), "seconds": seconds, "cpu_seconds": cpu,
                  "output_bytes": report.output_bytes, "input_bytes": report.input_bytes, "layers": len(report.layers)}))
"""


def measure(input_path, output_path, source: str | None = None, **options) -> dict:
    """Compress in a fresh Python process (with the Python code of checkout ``source`` if given); returns its peak
    RSS, RSS before compressing, the wall time and the CPU time (user + system)."""
    arguments = json.dumps({"input": str(input_path), "output": str(output_path), "options": options, "source": source})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", CHILD, arguments], capture_output=True, text=True, env=env, check=False)
    if result.returncode:
        raise RuntimeError(f"compression failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def options_for(layers: int, dense: int) -> dict:
    rules = [{"pattern": weight_name(i), "skip": True} for i in range(layers - dense, layers)]
    # fidelity=False: this measures the compression's memory; the fidelity check runs both models in onnxruntime,
    # which holds the whole input model (compress --no-fidelity skips it for models near the memory limit).
    return {"prune": "none", "bits": 4, "fidelity": False, **({"layers": rules} if rules else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=8192)
    parser.add_argument("--dense", type=int, default=0, help="leave the last N weights uncompressed")
    parser.add_argument("--folder", default=None, help="where to write the models (default: a temporary folder)")
    parser.add_argument("--calib", type=int, default=0, help="compress with N seeded calibration samples")
    parser.add_argument("--record", action="store_true", help="write the result into docs/benchmarks.md")
    parser.add_argument("--repeat", type=int, default=1, help="compressions of the generated model; the median run is reported")
    parser.add_argument("--source", default=None, help="import onnxcomp's Python code from this checkout instead (before/after)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        source = Path(folder) / "scale.onnx"
        start = time.perf_counter()
        size = make_model(source, args.layers, args.rows, args.cols)
        generated = time.perf_counter() - start
        options = options_for(args.layers, args.dense)
        if args.calib:
            calib = Path(folder) / "calib.npz"
            np.savez(calib, x=np.random.default_rng(1).standard_normal((args.calib, args.rows), dtype=np.float32))
            options["calib"] = str(calib)
        load_before = os.getloadavg()[0]
        runs = sorted((measure(source, Path(folder) / "out.onnx", args.source, **options) for _ in range(args.repeat)),
                      key=lambda r: r["seconds"])
        result = runs[len(runs) // 2]
        for run in runs:
            print(f"run: {run['seconds']:.1f} s wall, {run['cpu_seconds']:.1f} s CPU, peak RSS {run['peak_rss'] / 1e9:.2f} GB", flush=True)
        files = sorted(p.name + f" ({p.stat().st_size / 1e6:.0f} MB)" for p in Path(folder).glob("out.onnx*"))
    load = (load_before, os.getloadavg()[0])
    params = (args.layers - args.dense) * args.rows * args.cols  # compressed parameters
    gb = 1e9
    calibrated = f", --calib {args.calib} samples" if args.calib else ""
    row = (f"| {args.layers} x {args.rows}x{args.cols} float32, {args.dense} left dense{calibrated} | {size / gb:.2f} GB | "
           f"{result['output_bytes'] / gb:.3f} GB | {result['rss_before'] / gb:.2f} GB | {result['peak_rss'] / gb:.2f} GB | "
           f"{result['seconds']:.0f} s | {result['cpu_seconds']:.0f} s | {params / result['seconds'] / 1e6:.1f} M/s | "
           f"{params / result['cpu_seconds'] / 1e6:.1f} M/s |")
    print(f"generated {size / gb:.2f} GB in {generated:.0f} s; output files: {', '.join(files)}")
    print(row)
    if args.record:
        from report import update_section
        body = ("Compressing a generated transformer-like chain of MatMul weights stored as external data "
                "(`prune none`, `bits 4`), in a fresh process: weights are read one tensor at a time and each record "
                "is encoded as soon as its weight is shared. Peak RSS is the process's VmHWM (Python, numpy, onnx "
                "and the compressor included); the RSS before compressing is after the imports. CPU time is user + "
                f"system of the compressing process; the 1-minute load average was {load[0]:.1f} before and "
                f"{load[1]:.1f} after the runs (wall times on a shared machine stretch with it). "
                f"{args.repeat} run(s), median reported.\n\n"
                "| Model | Input | Output | RSS before | Peak RSS | Wall time | CPU time | Parameters per second (wall) | "
                "per CPU second |\n|---|---|---|---|---|---|---|---|---|\n" + row)
        update_section(f"scale{'-dense' if args.dense else ''}{'-calib' if args.calib else ''}", body)


if __name__ == "__main__":
    main()
