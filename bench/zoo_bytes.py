"""Where the bytes of a zoo run's outputs go: record sections, dense weights, the graph.

Usage: python bench/zoo_bytes.py RUN [RUN ...]   (runs under ~/.cache/onnxcomp-zoo/runs, as bench/zoo.py wrote them)

Per model, the output's bytes (model file + sidecar) split into: index payloads (Huffman-coded indices, or gaps
and values in sparse coding), Huffman tables, codebooks (4 bytes per entry), outlier sections, record headers and
CRCs plus the sidecar's header and directory, dense float32 and float16 initializers left in the model, and the
rest of the model file (graph, names, integer constants). Each record is parsed by the layout of docs/format.md.
Prints one markdown table per run (kB = 1,000 bytes; "% of output" in parentheses for the two largest parts).
"""

from __future__ import annotations

import os
import struct
import sys

import numpy as np
import onnx

from onnxcomp.core import sidecar
from onnxcomp.passes.model_io import graphs_of

RUNS = os.path.expanduser("~/.cache/onnxcomp-zoo/runs")


def record_parts(data: bytes) -> dict[str, int]:
    """Bytes of each section of one record (docs/format.md, weight record)."""
    version, rank, coding = struct.unpack_from("<H", data, 4)[0], data[7], data[9]
    k = struct.unpack_from("<I", data, 12)[0]
    at = 24 + 8 * rank
    parts = {"header": at + 4, "codebook": 4 * k}  # + the CRC
    at += 4 * k
    if coding == 0:
        tables = k
        payload_bits = struct.unpack_from("<Q", data, at + tables)[0]
        at += tables + 8
    else:
        gap_bits = data[at]
        tables = (1 << gap_bits) + k
        payload_bits = struct.unpack_from("<Q", data, at + 9 + tables)[0]
        at += 9 + tables + 8
        parts["header"] += 9
    payload = (payload_bits + 7) // 8
    parts["tables"] = tables
    parts["header"] += 8
    parts["payload"] = payload
    at += payload
    parts["outliers"] = len(data) - 4 - at if version == 2 else 0
    return parts


def breakdown(run: str, model: str) -> dict[str, int] | None:
    onnx_path = os.path.join(RUNS, run, model + ".onnx")
    if not os.path.exists(onnx_path):
        return None
    parts = {"payload": 0, "tables": 0, "codebook": 0, "outliers": 0, "header": 0}
    side = sidecar.sidecar_path(onnx_path)
    if os.path.exists(side):
        with open(side, "rb") as f:
            data = f.read()
        entries = sidecar.read_directory(side)
        for entry in entries:
            for key, value in record_parts(data[entry.offset:entry.offset + entry.length]).items():
                parts[key] += value
        parts["header"] += len(data) - sum(entry.length for entry in entries)  # file header + directory
    graph = onnx.load(onnx_path, load_external_data=False)
    parts["dense fp32"] = parts["dense fp16"] = 0
    for g in graphs_of(graph.graph):
        for t in g.initializer:
            n = int(np.prod(t.dims, dtype=np.int64)) if len(t.dims) else 1
            if t.data_type == onnx.TensorProto.FLOAT:
                parts["dense fp32"] += 4 * n
            elif t.data_type == onnx.TensorProto.FLOAT16:
                parts["dense fp16"] += 2 * n
    parts["graph"] = os.path.getsize(onnx_path) - parts["dense fp32"] - parts["dense fp16"]
    parts["total"] = os.path.getsize(onnx_path) + (os.path.getsize(side) if os.path.exists(side) else 0)
    return parts


COLUMNS = ("payload", "tables", "codebook", "outliers", "header", "dense fp32", "dense fp16", "graph", "total")


def main(runs: list[str]) -> None:
    for run in runs:
        models = sorted(f[:-5] for f in os.listdir(os.path.join(RUNS, run)) if f.endswith(".onnx"))
        print(f"\nRun `{run}` (kB)\n")
        print("| model | " + " | ".join(COLUMNS) + " |")
        print("|---" * (len(COLUMNS) + 1) + "|")
        for model in models:
            parts = breakdown(run, model)
            if parts is None:
                continue
            top = sorted(COLUMNS[:-1], key=lambda c: -parts[c])[:2]
            cells = [f"{parts[c] / 1e3:,.1f}" + (f" ({100 * parts[c] / parts['total']:.0f} %)" if c in top else "")
                     for c in COLUMNS]
            print(f"| {model} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["defaults"])
