"""Size and speed of the three forms of one model: original, custom-op (sidecar + library), portable.

Same compression options for both compressed forms (the defaults unless given), so the codebooks and indices
are identical; only the storage differs. Measured in onnxruntime on CPU, one thread: session creation
(median of 5) and inference latency (median over repeated runs) at batch 1 and batch 256. Usage:
    python bench/portable_tradeoff.py [--model models/lenet300_fashion.onnx --data models/fashion_eval.npz]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime as ort

import onnxcomp
from onnxcomp.pipeline.evaluate import accuracy, load_data
from onnxcomp.passes.model_io import model_bytes

from report import update_section

ROOT = Path(__file__).resolve().parents[1]


def open_session(path: str, custom: bool) -> ort.InferenceSession:
    options = onnxcomp.session_options() if custom else ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def timings(path: str, custom: bool, feeds: dict[int, dict], repeats: int) -> tuple[float, dict[int, float]]:
    creation = []
    for _ in range(5):
        start = time.perf_counter()
        session = open_session(path, custom)
        creation.append(time.perf_counter() - start)
    latency = {}
    for batch, feed in feeds.items():
        session.run(None, feed)
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(None, feed)
            runs.append(time.perf_counter() - start)
        latency[batch] = statistics.median(runs)
    return statistics.median(creation), latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "lenet300_fashion.onnx"))
    parser.add_argument("--data", default=str(ROOT / "models" / "fashion_eval.npz"))
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--section", default=None)
    args = parser.parse_args()
    data = load_data(args.data, open_session(args.model, False))
    name = next(k for k in data if k != "labels")
    feeds = {batch: {name: data[name][:batch]} for batch in (1, 256)}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        custom, portable = os.path.join(folder, "custom.onnx"), os.path.join(folder, "portable.onnx")
        onnxcomp.compress(args.model, custom)
        onnxcomp.compress(args.model, portable, format="portable")
        for label, path, is_custom in (("original", args.model, False), ("custom-op (sidecar + library)", custom, True),
                                       ("portable (standard ops)", portable, False)):
            size = model_bytes(path)
            acc = accuracy(path, args.data, compressed=is_custom)
            creation, latency = timings(path, is_custom, feeds, args.repeats)
            rows.append((label, size, acc, creation, latency))
            print(f"{label:<32} {size:>10,} B  top-1 {100 * acc:.2f}%  session {1e3 * creation:.1f} ms  "
                  f"batch 1 {1e6 * latency[1]:.0f} us  batch 256 {1e3 * latency[256]:.2f} ms", flush=True)
    original = rows[0][1]
    lines = [f"Model `{Path(args.model).stem}`, default compression options, top-1 on `{Path(args.data).name}`; "
             "onnxruntime CPU, 1 thread; session creation median of 5, latency median of "
             f"{args.repeats} runs.", "",
             "| form | bytes on disk | ratio | top-1 | session creation | latency batch 1 | latency batch 256 |",
             "|---|---|---|---|---|---|---|"]
    for label, size, acc, creation, latency in rows:
        lines.append(f"| {label} | {size:,} | {original / size:.1f}x | {100 * acc:.2f}% | {1e3 * creation:.1f} ms | "
                     f"{1e6 * latency[1]:.0f} us | {1e3 * latency[256]:.2f} ms |")
    update_section(args.section or f"portable-{Path(args.model).stem}", "\n".join(lines))


if __name__ == "__main__":
    main()
