"""What the budget's check set saves by reusing sequential statistics between allocations (issue #16, branch calconv6).

In one process: compresses MODEL sequentially (``--prune activation --sequential``, fidelity off) with allocation A
(every selected weight at SPARSITY and BITS), then with allocation B (A with the last ``--changed`` weights in
graph order at BITS + 1), B with the ``sequential_reuse`` dict A filled (as compress_to_budget's check set does),
then B without it. Prints each run's wall and CPU seconds, the layers that reused statistics (and X_o^T X_o
only), peak RSS, and whether the two B outputs are the same bytes.
Usage:
    python bench/sequential_reuse.py MODEL.onnx CALIB.npz [--samples 24] [--changed 1] [--sparsity 0.5] [--bits 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("calib")
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--changed", type=int, default=1)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--bits", type=int, default=4)
    args = parser.parse_args()
    import onnx
    import onnx_graphsurgeon as gs
    import onnxcomp
    from onnxcomp.passes import CompressionState, SelectWeightsPass

    with np.load(args.calib) as data:
        calib = {k: data[k][:args.samples] for k in data.files}
    state = CompressionState(gs.import_onnx(onnx.load(args.model)))
    SelectWeightsPass(min_elements=1024)(state)
    position = {id(node): i for i, node in enumerate(state.graph.nodes)}
    order = sorted(state.targets, key=lambda t: min(position.get(id(node), 0) for node, _ in t.uses))
    a = {t.name: {"sparsity": args.sparsity, "bits": args.bits} for t in order}
    b = {**a, **{t.name: {"sparsity": args.sparsity, "bits": args.bits + 1} for t in order[-args.changed:]}}
    reuse: dict = {}
    outputs = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, settings, kept in (("A", a, reuse), ("B reusing A", b, reuse), ("B alone", b, None)):
            out = Path(folder) / name.replace(" ", "_") / "out.onnx"
            out.parent.mkdir()
            wall, cpu = time.perf_counter(), time.process_time()
            onnxcomp.compress(args.model, out, calib=calib, prune="activation", sequential=True, settings=settings,
                              sequential_reuse=kept, fidelity=False)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            outputs[name] = out.read_bytes() + out.with_suffix(".onnxcomp").read_bytes()
            reused = reuse.get("reused") if kept is not None else None
            print(json.dumps({"run": name, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "layers": len(order),
                              "reused_statistics_and_original_gram": reused,
                              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}), flush=True)
    print(json.dumps({"B identical with and without reuse": outputs["B reusing A"] == outputs["B alone"]}))


if __name__ == "__main__":
    main()
