"""Default-compression throughput and where its time goes (issue #16): parameters per second, by stage.

Builds seeded models with onnx.helper (no downloads) and compresses each with the defaults
(``onnxcomp.compress(IN, OUT)``, as ``onnxcomp compress IN OUT`` does) in a fresh subprocess, timing the
stages by wrapping the functions that do them:

- ``mlp25m``: a 25.2M-parameter MLP, 1024 -> 4096 -> 4096 -> 1000 (MatMul + bias + Relu), weights N(0, 1/fan_in).
- ``vgg16``: the 13 convolutions of VGG-16 (14.7M parameters; 3x3 kernels, 64..512 channels) on a 1x3x32x32 input.
- ``minilm``: a MiniLM-L6-shaped encoder (22.7M parameters: a 30522x384 embedding table and 6 layers of
  Q, K, V, O 384x384 and FFN 384x1536 / 1536x384 MatMuls, residual Adds; attention itself is left out since
  it holds no weight): the shapes of the real one, which is what compression time depends on.

CPU time (user + system of the whole process) is reported beside the wall time since it depends less on what
else the machine runs. The time is split into the steps of ``compress`` on its main thread, which add up to the
total (each step's CPU time is the process's, so it includes the worker threads the step runs): load (reading and
checking the model), select (choosing weights), allocate (the data-free per-layer allocation: sampling each
weight, fitting candidates), prune (magnitude masks), share + encode (codebooks, outlier choice, assignment, and
each record's Huffman/gap coding on the same worker thread), allocate to encode (the three before it as one chain
per weight on the cores: the defaults' path since AllocateShareWeightsPass; the details below still split it), pack (the graph rewrite), export, write (sidecar and
model files), load check (the output opened in onnxruntime), gains (the per-weight measurement: each compressed
weight alone in the model, run in onnxruntime), budget (every candidate of every weight for the model-level
budget, and its solution), fidelity (inputs synthesised, both models run) and other (the rest: lazy imports,
model copies, size accounting). The default allocation compresses twice (the first round measures, the second
is written; a fidelity back-off adds rounds): "rounds" counts them, and every step sums over the rounds.
Details inside those steps, each call's thread CPU summed over threads: candidate fits (the allocator's
codebook fits and error sums), outlier choice (onnxcomp.core.outliers.share, its k-means and assign calls
included), k-means, assign, encode.
Usage:
    nice -n 10 python bench/compress_speed.py [--models mlp25m,vgg16,minilm] [--repeat 3] [--record]
        [--source OTHER_CHECKOUT --section NAME] [--against OTHER_CHECKOUT/.venv/bin/python]
    nice -n 10 python bench/compress_speed.py --input vgg16-tumor=PATH.onnx --sources MAIN_CHECKOUT,installed --keep DIR
        (a model file; two checkouts' code alternating, one run of each per repeat; outputs kept for cmp)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]


def _weight(rng, name, shape, fan_in):
    return numpy_helper.from_array((rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(fan_in))), name)


def _model(nodes, inputs, outputs, initializers):
    graph = helper.make_graph(nodes, "bench", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def mlp25m(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    sizes = [1024, 4096, 4096, 1000]
    nodes, inits, h = [], [], "x"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        inits += [_weight(rng, f"fc{i}.weight", (a, b), a), numpy_helper.from_array(np.zeros(b, np.float32), f"fc{i}.bias")]
        nodes += [helper.make_node("MatMul", [h, f"fc{i}.weight"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"fc{i}.bias"], [f"a{i}"])]
        h = f"a{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [h], [f"r{i}"]))
            h = f"r{i}"
    nodes.append(helper.make_node("Identity", [h], ["y"]))
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1024])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1000])], inits)


VGG16_CHANNELS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits, h, c = [], [], "x", 3
    for i, v in enumerate(VGG16_CHANNELS):
        if v == "M":
            nodes.append(helper.make_node("MaxPool", [h], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]))
            h = f"p{i}"
            continue
        inits += [_weight(rng, f"conv{i}.weight", (v, c, 3, 3), c * 9), numpy_helper.from_array(np.zeros(v, np.float32), f"conv{i}.bias")]
        nodes += [helper.make_node("Conv", [h, f"conv{i}.weight", f"conv{i}.bias"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        h, c = f"r{i}", v
    nodes.append(helper.make_node("Flatten", [h], ["y"]))
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 32, 32])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 512])], inits)


def minilm(seed: int = 0, layers: int = 6, hidden: int = 384, ffn: int = 1536, vocab: int = 30522) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [_weight(rng, "embeddings.word", (vocab, hidden), hidden)]
    nodes = [helper.make_node("Gather", ["embeddings.word", "ids"], ["h0"])]
    h = "h0"
    for i in range(layers):
        p = f"layer{i}."
        for name in ("q", "k", "v"):
            inits.append(_weight(rng, p + name, (hidden, hidden), hidden))
            nodes.append(helper.make_node("MatMul", [h, p + name], [p + name + "_out"]))
        inits += [_weight(rng, p + "o", (hidden, hidden), hidden), _weight(rng, p + "ffn1", (hidden, ffn), hidden),
                  _weight(rng, p + "ffn2", (ffn, hidden), ffn)]
        nodes += [helper.make_node("Add", [p + "q_out", p + "k_out"], [p + "qk"]),
                  helper.make_node("Add", [p + "qk", p + "v_out"], [p + "qkv"]),
                  helper.make_node("MatMul", [p + "qkv", p + "o"], [p + "att"]),
                  helper.make_node("Add", [h, p + "att"], [p + "res1"]),
                  helper.make_node("MatMul", [p + "res1", p + "ffn1"], [p + "up"]),
                  helper.make_node("Relu", [p + "up"], [p + "act"]),
                  helper.make_node("MatMul", [p + "act", p + "ffn2"], [p + "down"]),
                  helper.make_node("Add", [p + "res1", p + "down"], [f"h{i + 1}"])]
        h = f"h{i + 1}"
    nodes.append(helper.make_node("Identity", [h], ["y"]))
    return _model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", "t"])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "t", hidden])], inits)


MODELS = {"mlp25m": mlp25m, "vgg16": vgg16, "minilm": minilm}

CHILD = r"""
import json, os, sys, threading, time
args = json.loads(sys.argv[1])
PARTS = args["parts"]
if args["source"]:  # another checkout's Python code (the compiled parts come from the installed package)
    sys.path.insert(0, args["source"])
    sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__.startswith("_editable")]
from collections import defaultdict
import importlib
import onnxcomp

def module(*names):  # the package's layout, or an older checkout's flat one (--source)
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            pass
    return None

model_io = module("onnxcomp.passes.model_io", "onnxcomp.model_io")
select = module("onnxcomp.passes.select_weights", "passes.select_weights")
prune = module("onnxcomp.passes.prune_weights", "passes.prune_weights")
pack = module("onnxcomp.passes.pack_weights", "passes.pack_weights")
codebook = module("onnxcomp.core.codebook", "onnxcomp.codebook")
sidecar = module("onnxcomp.core.sidecar", "onnxcomp.sidecar")
compression = module("onnxcomp.pipeline.compression", "onnxcomp.pipeline")
outliers = module("onnxcomp.core.outliers")
allocation = module("onnxcomp.core.allocation")
fidelity = module("onnxcomp.pipeline.fidelity")

totals = defaultdict(float)
cpu = defaultdict(float)
calls = defaultdict(int)
sequence = []  # (step, wall seconds, CPU seconds) of the main thread's steps in the order they ran
lock = threading.Lock()
depth = threading.local()
main_thread = threading.main_thread()

def timed(owner, attribute, stage, part=False):
    # Time calls of owner.attribute as the stage. A part is a step of the main thread: its CPU time is the whole
    # process's (its worker threads included) and a part called inside another part counts in the outer one, so
    # the parts and "other" add up to the total. Other stages (details) sum each call's thread CPU time, over
    # every thread, and overlap the parts.
    function = getattr(owner, attribute)
    if function is None:
        return
    def wrapper(*args, **kwargs):
        if part:
            outer = threading.current_thread() is main_thread and not getattr(depth, "part", False)
            key = "part"
        else:
            key = stage
            outer = not getattr(depth, stage, False)  # time only the outermost call of a stage
        if not outer:
            return function(*args, **kwargs)
        setattr(depth, key, True)
        start, start_cpu = time.perf_counter(), (time.process_time() if part else time.thread_time())
        try:
            return function(*args, **kwargs)
        finally:
            setattr(depth, key, False)
            with lock:
                if part:
                    sequence.append((stage, round(time.perf_counter() - start, 2), round(time.process_time() - start_cpu, 2)))
                totals[stage] += time.perf_counter() - start
                cpu[stage] += (time.process_time() if part else time.thread_time()) - start_cpu
                calls[stage] += 1
    setattr(owner, attribute, wrapper)

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

allocate_pass = module("onnxcomp.passes.allocate_weights")
share_pass = module("onnxcomp.passes.share_weights", "passes.share_weights")
timed(model_io, "load_model", "load", part=True)
timed(select.SelectWeightsPass, "run", "select", part=True)
if allocate_pass is not None:
    timed(allocate_pass.AllocateWeightsPass, "run", "allocate", part=True)
timed(prune.PruneWeightsPass, "run", "prune", part=True)
timed(share_pass.ShareWeightsPass, "run", "share + encode", part=True)
fused_pass = module("onnxcomp.passes.allocate_share")
if fused_pass is not None:  # allocate, prune and share + encode as one chain per weight (the defaults' path)
    timed(fused_pass.AllocateShareWeightsPass, "run", "allocate to encode", part=True)
timed(pack.PackWeightsPass, "run", "pack", part=True)
timed(compression.gs, "export_onnx", "export", part=True)
timed(model_io, "write_compressed", "write", part=True)
if hasattr(compression, "check_output_loads"):
    timed(compression, "check_output_loads", "load check", part=True)
if hasattr(compression, "_gains"):
    timed(compression, "_gains", "gains", part=True)
if hasattr(compression, "_error_carriers"):
    timed(compression, "_error_carriers", "error carriers", part=True)
if hasattr(compression, "_budget_limits"):
    timed(compression, "_budget_limits", "budget", part=True)
if fidelity is not None:
    timed(fidelity, "prepare", "fidelity", part=True)
    timed(fidelity, "compare_runs", "fidelity", part=True)
timed(compression, "_compress_once", "rounds")
if allocation is not None:  # on the worker threads: the candidates' codebook fits and errors
    timed(allocation.Allocator, "_measure", "candidate fits")
if outliers is not None:
    timed(outliers, "share", "outlier choice")
timed(codebook, "fit_codebook", "k-means")
timed(codebook, "fit_sorted", "k-means")
timed(codebook, "assign", "assign")
timed(sidecar, "encode_record", "encode")
if fidelity is not None and hasattr(fidelity, "attribute"):
    timed(fidelity, "attribute", "attribution runs")
start, times = time.perf_counter(), os.times()
report = onnxcomp.compress(args["input"], args["output"])
seconds = time.perf_counter() - start
after = os.times()
cpu_seconds = (after.user - times.user) + (after.system - times.system)
params = sum(layer.params for layer in report.layers)
parts = [stage for stage in PARTS if stage in totals]
totals["other"] = seconds - sum(totals[stage] for stage in parts)
cpu["other"] = cpu_seconds - sum(cpu[stage] for stage in parts)
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "params": params, "peak_rss": status("VmHWM"),
                  "ratio": report.ratio, "rounds": calls["rounds"], "output_bytes": report.output_bytes,
                  "backoff": [(round(h["budget"], 4), round(h["min_cosine"], 4), h["passed"], len(h.get("tightened", [])))
                              for h in report.backoff], "stages": dict(totals), "sequence": sequence, "stage_cpu": dict(cpu)}))
"""


def measure(input_path, output_path, source: str | None = None, python: str | None = None) -> dict:
    arguments = json.dumps({"input": str(input_path), "output": str(output_path), "source": source, "parts": PARTS})
    result = subprocess.run([python or sys.executable, "-c", CHILD, arguments], capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"compression failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--input", action="append", default=[], metavar="NAME=PATH",
                        help="compress this model file (e.g. a zoo model) instead of --models; repeatable")
    parser.add_argument("--repeat", type=int, default=3, help="runs per model; the median run is reported")
    parser.add_argument("--folder", default=None, help="where to write the models (default: a temporary folder)")
    parser.add_argument("--keep", default=None, help="write the outputs here and keep them (NAME.LABEL.K.onnx and sidecar), "
                        "e.g. to compare two checkouts' bytes with cmp")
    parser.add_argument("--record", action="store_true", help="write the result into docs/benchmarks.md")
    parser.add_argument("--section", default="compress-speed", help="section name in docs/benchmarks.md")
    parser.add_argument("--source", default=None, help="import onnxcomp's Python code from this checkout instead "
                        "(e.g. an older commit's `git archive`, for before/after figures)")
    parser.add_argument("--sources", default=None, help="comma-separated checkouts run alternately, one run of each per "
                        "repeat (A/B in one period; `installed` = the installed code); overrides --source")
    parser.add_argument("--against", default=None, metavar="PYTHON",
                        help="also time this interpreter's install (another checkout's venv python, its compiled "
                        "module too), alternating with the others run by run on the same input")
    args = parser.parse_args()
    sources = [None if s == "installed" else s for s in args.sources.split(",")] if args.sources else [args.source]
    labels = [Path(s).name if s else "installed" for s in sources]
    pythons = [None] * len(sources)
    if args.against:
        sources, labels, pythons = sources + [None], labels + ["against"], pythons + [args.against]
    inputs = dict(item.split("=", 1) for item in args.input)
    names = list(inputs) if inputs else args.models.split(",")
    rows, stage_rows = [], []
    Path(args.folder).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        outputs = Path(args.keep or folder)
        outputs.mkdir(parents=True, exist_ok=True)
        for name in names:
            source = Path(inputs[name]) if name in inputs else Path(folder) / f"{name}.onnx"
            if name not in inputs:
                onnx.save(MODELS[name](), str(source))
            found = {label: [] for label in labels}
            for k in range(args.repeat):
                for checkout, label, python in zip(sources, labels, pythons):
                    run = measure(source, outputs / f"{name}.{label}.{k}.onnx", checkout, python)
                    print(f"{name} {label} run {k}: {run['seconds']:.2f} s wall, {run['cpu_seconds']:.2f} s CPU, "
                          f"{run['output_bytes']:,} bytes, back-off {run['backoff']}\n  steps (wall, CPU s): "
                          + ", ".join(f"{step} {wall:.2f}/{cpu:.2f}" for step, wall, cpu in run["sequence"]
                                      if wall >= 0.05), flush=True)
                    found[label].append(run)
            for label in labels:
                runs = sorted(found[label], key=lambda r: r["seconds"])
                run = runs[len(runs) // 2]
                rate = run["params"] / run["seconds"] / 1e6
                title = name if len(labels) == 1 else f"{name} ({label})"
                rows.append(f"| {title} | {run['params'] / 1e6:.1f} M | {run['ratio']:.2f}x | "
                            f"{statistics.median(r['seconds'] for r in runs):.2f} s | {rate:.1f} M/s | "
                            f"{statistics.median(r['cpu_seconds'] for r in runs):.2f} s | "
                            f"{run['params'] / run['cpu_seconds'] / 1e6:.1f} M/s | {run['peak_rss'] / 2**20:.0f} MiB |")
                stages, stage_cpu = run["stages"], run["stage_cpu"]
                stage_rows.append(f"| {title} | {run['rounds']} | " + " | ".join(
                    f"{stages.get(s, 0.0):.2f} / {stage_cpu.get(s, 0.0):.2f}" for s in COLUMNS) + " |")
                print(rows[-1], flush=True)
                print(stage_rows[-1], flush=True)
    table = ("| Model | Compressed parameters | Ratio | Wall time (median) | Rate (wall) | CPU time (median) | Rate per CPU second | Peak RSS |\n"
             "|---|---|---|---|---|---|---|---|\n"
             + "\n".join(rows) + "\n\nSeconds per stage in the median run, wall / CPU. The steps up to \"other\" add up to "
             "the total (a step's CPU time includes its worker threads; \"other\" is the rest: imports, model copies, size "
             "accounting); the last columns are details inside them, summed over calls and threads:\n\n"
             "| Model | rounds | " + " | ".join(COLUMNS) + " |\n|---|---|" + "---|" * len(COLUMNS) + "\n" + "\n".join(stage_rows))
    print(table)
    if args.record:
        sys.path.insert(0, str(ROOT / "bench"))
        from report import update_section
        body = ("Default compression (`onnxcomp.compress(IN, OUT)`, no options) of seeded models built with onnx.helper, "
                f"each in a fresh process, {args.repeat} runs, median reported. Rate = compressed parameters / wall time.\n\n" + table)
        update_section(args.section, body)


PARTS = ["load", "select", "allocate", "prune", "share + encode", "allocate to encode", "pack", "export", "write", "load check", "gains", "budget",
         "error carriers", "fidelity"]
DETAILS = ["candidate fits", "outlier choice", "k-means", "assign", "encode", "attribution runs"]
COLUMNS = PARTS + ["other"] + DETAILS

if __name__ == "__main__":
    main()
