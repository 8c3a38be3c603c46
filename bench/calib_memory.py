"""Working memory of a calibrated compression, per weight (issue #16): traced allocations against the weight's bytes.

Writes a one-weight model W [inputs, outputs] float32 as external data (bench/scale.py's generator) and N seeded
calibration samples, then compresses it (``prune none``, ``bits 4``, calibration: statistics, compensated
rounding and the codebook refit) in a fresh process under tracemalloc, which sees numpy's and LAPACK's buffers
(not onnxruntime's). Reports the peak of traced allocations during ``compress`` divided by the weight's float32
bytes: everything the compression of that weight holds at once, the weight itself included.
Usage:
    python bench/calib_memory.py [--shape 4096x2048 ...] [--calib 4] [--source CHECKOUT] [--folder DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import scale  # noqa: E402

CHILD = r"""
import json, sys, time, tracemalloc
args = json.loads(sys.argv[1])
if args["source"]:
    sys.path.insert(0, args["source"])
    sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__.startswith("_editable")]
import onnxcomp
import onnxcomp.pipeline.compression
tracemalloc.start()
before = tracemalloc.get_traced_memory()[0]
start = time.process_time()
onnxcomp.compress(args["input"], args["output"], **args["options"])
print(json.dumps({"peak": tracemalloc.get_traced_memory()[1] - before, "cpu": time.process_time() - start}))
"""


def measure(inputs: int, outputs: int, calib: int, folder: str, source: str | None) -> dict:
    path = Path(folder) / f"w{inputs}x{outputs}.onnx"
    scale.make_model(path, layers=1, rows=inputs, cols=outputs)
    data = Path(folder) / "calib.npz"
    np.savez(data, x=np.random.default_rng(1).standard_normal((calib, inputs), dtype=np.float32))
    options = {**scale.options_for(1, 0), "calib": str(data)}
    arguments = json.dumps({"input": str(path), "output": str(Path(folder) / "out.onnx"), "options": options, "source": source})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", CHILD, arguments], capture_output=True, text=True, env=env, check=False)
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    for leftover in Path(folder).glob("*"):
        leftover.unlink()
    return {**measured, "ratio": measured["peak"] / (inputs * outputs * 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", action="append", help="INPUTSxOUTPUTS (repeatable; default 4096x2048 and 2048x4096)")
    parser.add_argument("--calib", type=int, default=4)
    parser.add_argument("--source", default=None, help="import onnxcomp's Python code from this checkout instead")
    parser.add_argument("--folder", default=None)
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in (args.shape or ["4096x2048", "2048x4096"])]
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        for inputs, outputs in shapes:
            r = measure(inputs, outputs, args.calib, folder, args.source)
            print(f"| {inputs} inputs x {outputs} outputs, {inputs * outputs * 4 / 2**20:.0f} MiB | {args.calib} | "
                  f"{r['peak'] / 2**20:.0f} MiB | {r['ratio']:.1f}x | {r['cpu']:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
