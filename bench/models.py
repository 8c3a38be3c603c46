"""Model-level speed, memory and session creation: dense fp32 versus onnxcomp-compressed (issue #4, Measure 2, 3).

Models: the bundled LeNet-300-100 and LeNet-5 (Fashion-MNIST; compressed with the default options), and a
transformer encoder with BERT-base MatMul shapes built here with onnx.helper and seeded random weights (hidden
768, FFN 3072, 12 heads, sequence 128, `--layers` layers: word embedding Gather 30522x768 + position Gather,
LayerNormalization, MatMul with the weight on the right + bias Add, Softmax attention, GELU via Erf;
compressed with `sparsity=0, bits=4`). For the transformer, onnxruntime's own weight-only 4-bit path
(MatMulNBits, block 32, symmetric, from `MatMulNBitsQuantizer`, embeddings as GatherBlockQuantized; needs
`onnx_ir`) is measured next to it.

One run measures, for every model:
- file sizes (dense model; compressed model + sidecar; MatMulNBits model);
- latency at batch 1 and 32, intra_op_num_threads 1 and 2, thread spinning off, medians of runs after a
  warm-up, the variants timed round-robin so they share the machine's state;
- session peak RSS: session creation + 3 batch-1 runs in a fresh subprocess, its peak RSS (`VmHWM`; Linux
  carries `ru_maxrss` over fork + exec, so a child of this big process would report the parent's), minus a
  baseline subprocess that only imports numpy and onnxruntime; cases interleaved, median of `--rss-repeats`;
- session creation time (1 thread, median of `--creations`, interleaved) and the indices decoded per second
  of creation (the whole creation counts as decoding, so a lower bound on the Huffman decode rate in MB/s
  of byte indices).
A missed batch-1 latency target is followed by onnxruntime's per-op profile of both models. Writes the
tables into docs/benchmarks.md (bench/report.py).

    python bench/models.py [--layers 4|12] [--quick] [--no-nbits] [--no-write] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import onnxcomp  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import update_section  # noqa: E402

VOCAB, HIDDEN, FFN, HEADS, MAX_POSITIONS = 30522, 768, 3072, 12, 512


# --------------------------------------------------------------------------------------------------- models

def transformer(path: Path, layers: int, seq: int, seed: int = 0) -> None:
    """A BERT-base-shaped encoder (post-LN) with seeded random weights; input `input_ids` int64 [batch, seq]."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def weight(name, shape, scale=0.02):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def ones(name):
        inits.append(numpy_helper.from_array(np.ones(HIDDEN, np.float32), name))
        return name

    def zeros(name):
        inits.append(numpy_helper.from_array(np.zeros(HIDDEN, np.float32), name))
        return name

    def linear(x, prefix, k, n):
        y = node("MatMul", [x, weight(prefix + ".weight", (k, n))], prefix + ".mm")
        return node("Add", [y, weight(prefix + ".bias", (n,))], prefix + ".out")

    def layer_norm(x, prefix):
        return node("LayerNormalization", [x, ones(prefix + ".gamma"), zeros(prefix + ".beta")], prefix + ".out",
                    axis=-1, epsilon=1e-12)

    head = HIDDEN // HEADS
    words = node("Gather", [weight("embeddings.word", (VOCAB, HIDDEN)), "input_ids"], "embeddings.words")
    positions = node("Gather", [weight("embeddings.position", (MAX_POSITIONS, HIDDEN)),
                                const("position_ids", np.arange(seq, dtype=np.int64))], "embeddings.positions")
    x = layer_norm(node("Add", [words, positions], "embeddings.sum"), "embeddings.ln")
    split = const("heads_shape", np.array([0, 0, HEADS, head], np.int64))
    merge = const("hidden_shape", np.array([0, 0, HIDDEN], np.int64))
    scale = const("attention_scale", np.array(1 / np.sqrt(head), np.float32))
    half, one, root2 = const("half", np.array(0.5, np.float32)), const("one", np.array(1, np.float32)), \
        const("sqrt2", np.array(np.sqrt(2), np.float32))
    for i in range(layers):
        p = f"layer{i}"
        q, k, v = (node("Reshape", [linear(x, f"{p}.{n}", HIDDEN, HIDDEN), split], f"{p}.{n}.heads") for n in "qkv")
        q = node("Transpose", [q], f"{p}.q.t", perm=[0, 2, 1, 3])
        k = node("Transpose", [k], f"{p}.k.t", perm=[0, 2, 3, 1])
        v = node("Transpose", [v], f"{p}.v.t", perm=[0, 2, 1, 3])
        scores = node("Mul", [node("MatMul", [q, k], f"{p}.scores.raw"), scale], f"{p}.scores")
        probs = node("Softmax", [scores], f"{p}.probs", axis=-1)
        context = node("Transpose", [node("MatMul", [probs, v], f"{p}.context.heads")], f"{p}.context.t", perm=[0, 2, 1, 3])
        context = node("Reshape", [context, merge], f"{p}.context")
        x = layer_norm(node("Add", [x, linear(context, f"{p}.o", HIDDEN, HIDDEN)], f"{p}.attn.res"), f"{p}.ln1")
        h = linear(x, f"{p}.ffn1", HIDDEN, FFN)
        erf = node("Erf", [node("Div", [h, root2], f"{p}.gelu.div")], f"{p}.gelu.erf")
        gelu = node("Mul", [node("Mul", [h, half], f"{p}.gelu.half"), node("Add", [erf, one], f"{p}.gelu.add")], f"{p}.gelu")
        x = layer_norm(node("Add", [x, linear(gelu, f"{p}.ffn2", FFN, HIDDEN)], f"{p}.ffn.res"), f"{p}.ln2")
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="output"))
    graph = helper.make_graph(nodes, "encoder", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", seq])],
                              [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", seq, HIDDEN])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def nbits(dense: Path, path: Path) -> None:
    import logging
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    # MatMul weights -> MatMulNBits, embedding tables -> GatherBlockQuantized: every weight 4-bit, like ours.
    quantizer = MatMulNBitsQuantizer(onnx.load(dense), bits=4, block_size=32, is_symmetric=True,
                                     op_types_to_quantize=("MatMul", "Gather"), quant_axes=(("MatMul", 0), ("Gather", 1)))
    quantizer.process()
    onnx.save(quantizer.model.model, path)


def file_bytes(path: Path) -> int:
    """The model file plus its external data files (sidecar) beside it."""
    total = path.stat().st_size
    model = onnx.load(path, load_external_data=False)
    locations = {entry.value for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL
                 for entry in t.external_data if entry.key == "location"}
    return total + sum((path.parent / name).stat().st_size for name in locations)


# --------------------------------------------------------------------------------------------------- running

def options(threads: int, custom: bool, library: str) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # Several sessions are alive at once (round-robin timing): idle pool threads must not spin.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if custom:
        so.register_custom_ops_library(library)
    return so


def feeds_for(session: ort.InferenceSession, batch: int, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in session.get_inputs():
        shape = [batch if not isinstance(d, int) else d for d in value.shape]
        if "int" in value.type:
            feeds[value.name] = rng.integers(0, 1000, shape, dtype=np.int64)
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def timeit(session, feeds) -> float:
    start = time.perf_counter()
    session.run(None, feeds)
    return time.perf_counter() - start


def medians(sessions: dict, batch: int, budget: float, min_reps: int) -> dict:
    """Median seconds per run of each session, round-robin after a warm-up."""
    feeds = {name: feeds_for(s, batch) for name, s in sessions.items()}
    first = {}
    for name, s in sessions.items():
        s.run(None, feeds[name])
        first[name] = timeit(s, feeds[name])
    reps = int(max(min_reps, min(300, budget / max(sum(first.values()), 1e-6))))
    times = defaultdict(list)
    for _ in range(reps):
        for name, s in sessions.items():
            times[name].append(timeit(s, feeds[name]))
    return {name: float(np.median(t)) for name, t in times.items()}, reps


def op_profile(path: Path, custom: bool, library: str, batch: int, runs: int = 20) -> dict:
    """Milliseconds per run by op type, from onnxruntime's profiler (1 thread)."""
    so = options(1, custom, library)
    so.enable_profiling = True
    with tempfile.TemporaryDirectory() as folder:
        so.profile_file_prefix = os.path.join(folder, "profile")
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feeds = feeds_for(session, batch)
        for _ in range(runs):
            session.run(None, feeds)
        events = json.load(open(session.end_profiling()))
    totals = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"] / 1e3 / runs
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


CHILD = r"""
import resource, sys, numpy as np, onnxruntime as ort
path, library, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
if path != "-":
    so = ort.SessionOptions(); so.intra_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if library != "-":
        so.register_custom_ops_library(library)
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    feeds = {}
    for v in s.get_inputs():
        shape = [1 if not isinstance(d, int) else d for d in v.shape]
        feeds[v.name] = rng.integers(0, 1000, shape, dtype=np.int64) if "int" in v.type else rng.standard_normal(shape).astype(np.float32)
    for _ in range(runs):
        s.run(None, feeds)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, hwm)
"""


PERF_CHILD = r"""
import sys, onnxruntime as ort
so = ort.SessionOptions(); so.intra_op_num_threads = 1
so.register_custom_ops_library(sys.argv[2])
for _ in range(int(sys.argv[3])):
    ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
"""
# Self time by symbol: decode_record is the Huffman / run-length decoder (to one byte per index);
# decode_record_bytes' own code packs those bytes into 4/8/16-bit slots; PackPanels repacks into column panels.
PERF_GROUPS = {"decode": lambda sym: sym == "onnxcomp::decode_record",
               "parse": lambda sym: sym == "onnxcomp::parse_record",
               "pack": lambda sym: sym == "onnxcomp::decode_record_bytes" or "PackPanels" in sym}


def creation_perf(path: Path, library: str, creations: int = 3, frequency: int = 1999) -> dict | None:
    """CPU milliseconds per session creation spent in the library's decode / parse (CRC) / packing code,
    from `perf record` samples (each sample ~ 1/frequency s of CPU time); None without a usable perf."""
    import shutil
    if not shutil.which("perf"):
        return None
    with tempfile.TemporaryDirectory() as folder:
        data = os.path.join(folder, "perf.data")
        record = subprocess.run(["perf", "record", "-q", "-F", str(frequency), "-o", data, sys.executable, "-c", PERF_CHILD,
                                 str(path), library, str(creations)], capture_output=True, text=True)
        if record.returncode != 0:
            return None
        script = subprocess.run(["perf", "script", "-i", data, "-F", "ip,sym"], capture_output=True, text=True).stdout
    counts = defaultdict(int)
    for line in script.splitlines():
        parts = line.split(None, 1)
        sym = parts[1].strip() if len(parts) == 2 else ""
        for group, match in PERF_GROUPS.items():
            if match(sym):
                counts[group] += 1
                break
    return {group: counts[group] / frequency / creations * 1e3 for group in PERF_GROUPS}


def peak_rss_kib(path: Path | None, library: str | None, runs: int = 3) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path) if path else "-", library or "-", str(runs)],
                         check=True, capture_output=True, text=True).stdout
    # ru_maxrss survives fork + exec on Linux (the child starts with the parent's peak, here hundreds of MiB), so
    # the figure used is VmHWM: the peak RSS of the process image since exec, which is what ru_maxrss reports
    # for a process started from a small parent.
    return int(out.split()[-1])


# --------------------------------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4, help="transformer layers (12 = BERT-base)")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--models", default="lenet300,lenet5,transformer")
    parser.add_argument("--no-nbits", action="store_true", help="skip MatMulNBits (needs onnx_ir)")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timed runs per (model, batch, threads)")
    parser.add_argument("--creations", type=int, default=5, help="session creations per variant (median)")
    parser.add_argument("--rss-repeats", type=int, default=3, help="subprocesses per RSS case (median)")
    parser.add_argument("--quick", action="store_true", help="short budget, batch 1, 1 thread, 1 transformer layer")
    parser.add_argument("--workdir", help="keep the built models here (default: a temporary folder)")
    parser.add_argument("--no-perf", dest="perf", action="store_false", help="skip the perf split of session creation")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.budget, args.creations, args.rss_repeats, args.layers = 0.5, 2, 1, 1
        args.batches, args.threads = "1", "1"
    batches = [int(b) for b in args.batches.split(",")]
    threads_list = [int(t) for t in args.threads.split(",")]
    library = onnxcomp.library_path()
    wanted = args.models.split(",")
    started = time.time()

    folder = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="onnxcomp-models-"))
    folder.mkdir(parents=True, exist_ok=True)
    cases = []  # (label, {variant: path}, {variant: custom}, decoded indices, compress options text)
    for key, label, source in [("lenet300", "LeNet-300-100", ROOT / "models" / "lenet300_fashion.onnx"),
                               ("lenet5", "LeNet-5", ROOT / "models" / "lenet5_fashion.onnx")]:
        if key in wanted:
            small = folder / f"{key}_small.onnx"
            report = onnxcomp.compress(source, small)
            cases.append((label, {"dense": source, "ours": small}, sum(layer.params for layer in report.layers), "defaults"))
    if "transformer" in wanted:
        label = f"Transformer {args.layers}L (seq {args.seq})"
        dense = folder / f"encoder{args.layers}.onnx"
        if not dense.exists():
            print("building", dense, flush=True)
            transformer(dense, args.layers, args.seq)
        small = folder / f"encoder{args.layers}_small.onnx"
        print("compressing", dense, flush=True)
        start = time.time()
        report = onnxcomp.compress(dense, small, sparsity=0.0, bits=4)
        print(f"compressed in {time.time() - start:.0f} s, ratio {report.ratio:.1f}x", flush=True)
        paths = {"dense": dense, "ours": small}
        if not args.no_nbits:
            paths["nbits"] = folder / f"encoder{args.layers}_nbits.onnx"
            if not paths["nbits"].exists():
                nbits(dense, paths["nbits"])
        cases.append((label, paths, sum(layer.params for layer in report.layers), "sparsity=0, bits=4"))
    custom = {"dense": False, "ours": True, "nbits": False}

    size_rows, latency_rows, rss_rows, creation_rows, profiles = [], [], [], [], {}
    for label, paths, indices, how in cases:
        print(f"== {label}", flush=True)
        sizes = {name: file_bytes(p) for name, p in paths.items()}
        size_rows.append((label, how, sizes))

        # (c) session creation, 1 thread, interleaved
        created = defaultdict(list)
        for _ in range(args.creations):
            for name, p in paths.items():
                start = time.perf_counter()
                ort.InferenceSession(str(p), options(1, custom[name], library), providers=["CPUExecutionProvider"])
                created[name].append(time.perf_counter() - start)
        created = {name: float(np.median(t)) for name, t in created.items()}
        perf = creation_perf(paths["ours"], library, creations=int(min(200, max(3, 1.0 / created["ours"])))) if args.perf else None
        creation_rows.append((label, indices, created, perf))
        print("creation ms", {n: round(v * 1e3, 1) for n, v in created.items()}, flush=True)

        # (b) peak RSS in fresh subprocesses, interleaved with the baseline
        rss = defaultdict(list)
        for _ in range(args.rss_repeats):
            rss["baseline"].append(peak_rss_kib(None, None))
            for name, p in paths.items():
                rss[name].append(peak_rss_kib(p, library if custom[name] else None))
        rss = {name: float(np.median(v)) for name, v in rss.items()}
        rss_rows.append((label, rss))
        print("peak RSS KiB", rss, flush=True)

        # (a) latency
        for threads in threads_list:
            sessions = {name: ort.InferenceSession(str(p), options(threads, custom[name], library),
                                                   providers=["CPUExecutionProvider"]) for name, p in paths.items()}
            for batch in batches:
                t, reps = medians(sessions, batch, args.budget * (2 if batch > 1 else 1), min_reps=3 if batch > 1 else 10)
                latency_rows.append((label, batch, threads, reps, t))
                print(f"batch {batch} threads {threads} ({reps} runs): " +
                      "  ".join(f"{n} {v * 1e3:.3f} ms" for n, v in t.items()), flush=True)
            del sessions
        for label_, batch, threads, reps, t in latency_rows:
            if label_ == label and batch == 1 and t["ours"] > t["dense"] and label not in profiles:
                profiles[label] = {name: op_profile(paths[name], custom[name], library, 1) for name in ("dense", "ours")}

    load = os.getloadavg()
    has_nbits = any("nbits" in paths for _, paths, _, _ in cases)

    def ms(t, name):
        return f"{t[name] * 1e3:.3f}" if name in t else "-"

    mib = lambda b: f"{b / 2**20:,.2f} MiB"  # noqa: E731
    lines = ["| model | compression | dense files | ours files (model + sidecar) | dense / ours | MatMulNBits 4-bit file | dense / NBits |",
             "|---|---|---|---|---|---|---|"]
    for label, how, s in size_rows:
        nb = (mib(s["nbits"]), f"{s['dense'] / s['nbits']:.1f}x") if "nbits" in s else ("-", "-")
        lines.append(f"| {label} | {how} | {mib(s['dense'])} | {mib(s['ours'])} | {s['dense'] / s['ours']:.1f}x | {nb[0]} | {nb[1]} |")
    size_table = "\n".join(lines)

    lines = ["| model | batch | threads | runs | dense ms | ours ms | MatMulNBits ms | dense / ours | ours / NBits | batch-1 target ours <= dense |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, batch, threads, reps, t in latency_rows:
        target = ("met" if t["ours"] <= t["dense"] else "**missed**") if batch == 1 else ""
        ratio_nb = f"{t['ours'] / t['nbits']:.2f}" if "nbits" in t else "-"
        lines.append(f"| {label} | {batch} | {threads} | {reps} | {ms(t, 'dense')} | {ms(t, 'ours')} | {ms(t, 'nbits')} | "
                     f"{t['dense'] / t['ours']:.2f}x | {ratio_nb} | {target} |")
    latency_table = "\n".join(lines)

    lines = ["| model | baseline (numpy + onnxruntime imported) | dense above baseline | ours above baseline | "
             "MatMulNBits above baseline | ours / dense | ours / NBits | target ours / dense <= 0.35 (transformer) |",
             "|---|---|---|---|---|---|---|---|"]
    for label, r in rss_rows:
        above = {n: (r[n] - r["baseline"]) * 1024 for n in r if n != "baseline"}
        nb = (mib(above["nbits"]), f"{above['ours'] / above['nbits']:.2f}") if "nbits" in above else ("-", "-")
        lines.append(f"| {label} | {mib(r['baseline'] * 1024)} | {mib(above['dense'])} | {mib(above['ours'])} | {nb[0]} | "
                     f"{above['ours'] / above['dense']:.2f} | {nb[1]} | "
                     f"{('met' if above['ours'] <= 0.35 * above['dense'] else '**missed**') if 'Transformer' in label else ''} |")
    rss_table = "\n".join(lines)

    lines = ["| model | indices decoded (M) | dense ms | ours ms | MatMulNBits ms | ours / dense | "
             "indices per second of whole creation, M/s (lower bound) | perf: decode / parse+CRC / packing CPU ms "
             "| Huffman decode MB/s of byte indices (indices / decode CPU time) |", "|---|---|---|---|---|---|---|---|---|"]
    for label, indices, c, perf in creation_rows:
        nb = f"{c['nbits'] * 1e3:.1f}" if "nbits" in c else "-"
        split, rate = "-", "-"
        if perf and perf["decode"] > 0:
            split = f"{perf['decode']:.1f} / {perf['parse']:.1f} / {perf['pack']:.1f}"
            rate = f"{indices / 1e3 / perf['decode']:.0f}"
        lines.append(f"| {label} | {indices / 1e6:.2f} | {c['dense'] * 1e3:.1f} | {c['ours'] * 1e3:.1f} | {nb} | "
                     f"{c['ours'] / c['dense']:.2f} | {indices / 1e6 / c['ours']:.0f} | {split} | {rate} |")
    creation_table = "\n".join(lines)

    profile_text = ""
    for label, prof in profiles.items():
        profile_text += f"\nBatch-1 latency target missed for {label}: onnxruntime's profiler (1 thread, batch 1, 20 runs), ms per run by op type:\n\n"
        profile_text += "| op type | dense ms | ours ms |\n|---|---|---|\n"
        for op in sorted(set(prof["dense"]) | set(prof["ours"]), key=lambda o: -max(prof["dense"].get(o, 0), prof["ours"].get(o, 0))):
            profile_text += f"| {op} | {prof['dense'].get(op, 0):.4f} | {prof['ours'].get(op, 0):.4f} |\n"
        profile_text += f"| total | {sum(prof['dense'].values()):.4f} | {sum(prof['ours'].values()):.4f} |\n"

    for table in (size_table, latency_table, rss_table, creation_table, profile_text):
        print(table, flush=True)
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; whole run {time.time() - started:.0f} s")
    if args.no_write:
        return
    note = (f"onnxruntime {ort.__version__}; load average at the end of the run: {load[0]:.1f} (1 min), {load[1]:.1f} (5 min) "
            "on 2 cores shared with other jobs. Dense models are single .onnx files; transformer weights are seeded "
            "random.")
    update_section("models-files", note + "\n\nFile sizes; LeNets compressed with the defaults (fc 3-bit + 50 % pruning), "
                   "the transformer with `sparsity=0, bits=4` (embeddings included)" +
                   (", MatMulNBits with block 32, symmetric (MatMul weights as MatMulNBits, embedding tables as GatherBlockQuantized)" if has_nbits else "") +
                   ".\n\n" + size_table)
    update_section("models-latency", note + "\n\nMedian latency per run; a transformer batch is `batch x seq` tokens (batch 1 = "
                   "128 rows per MatMul). One session per variant and thread count (intra_op_num_threads, spinning off), "
                   "warm-up run first, variants timed round-robin in one run.\n\n" + latency_table + "\n" + profile_text)
    update_section("models-rss", note + "\n\nSession peak RSS: a fresh Python subprocess creates the session (1 thread) and runs "
                   f"batch 1 three times, then reads its peak RSS (`VmHWM` from /proc/self/status: Linux carries `ru_maxrss` over fork + exec, so "
                   f"children of the benchmark process would all report its own peak); median of {args.rss_repeats} subprocesses per case, interleaved, "
                   "minus the baseline subprocess. Target (transformer): ours / dense <= 0.35.\n\n" + rss_table)
    update_section("models-session-creation", note + f"\n\nSession creation, 1 thread, median of {args.creations} interleaved "
                   "creations (file cache warm). The whole creation of the compressed model (ORT parsing, CRC, Huffman decode, "
                   "packing) counts in the 'whole creation' column, a lower bound on the decode rate. The perf columns "
                   "split the CPU time of at least 3 creations (about 1 s of them; a separate `perf record` subprocess, samples in "
                   "`onnxcomp::decode_record` = Huffman/run-length decode to byte indices, `parse_record` = header + CRC, "
                   "packing = byte indices into 4-bit slots (`decode_record_bytes`) and into column panels (`PackPanels`)) "
                   "and give the decode rate per core from the decode samples alone (target >= 300 MB/s per core).\n\n" + creation_table)


if __name__ == "__main__":
    main()
