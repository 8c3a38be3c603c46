"""Time and memory of a sequential compress (``--calib --prune activation --sequential``), issue #16.

Compresses MODEL with the first N samples of a calibration file in a fresh process, once per mode: ``walk`` (the
pass's one walk through the graph, each node run about twice in all) and ``probes`` (two whole-model probes per
layer, as before branch seqcal; CompressSequentiallyPass(walk=False)). Prints per mode the process's wall and CPU
time, the sequential pass's own wall and CPU time, peak RSS (VmHWM) and the SHA-256 of the output (model and
sidecar): the two modes should give the same bytes.
Usage:
    python bench/sequential_speed.py MODEL.onnx CALIB.npz [--samples 8] [--modes walk,probes] [--folder DIR]
        [-- extra compress options, e.g. --bits 4 --sparsity 0.5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = r"""
import functools, hashlib, json, resource, sys, time
args = json.loads(sys.argv[1])
import onnxcomp
from onnxcomp.passes import compress_sequentially
from onnxcomp.pipeline import compression
spent = {"wall": 0.0, "cpu": 0.0}
original_run = compress_sequentially.CompressSequentiallyPass.run
def timed(self, state):
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        return original_run(self, state)
    finally:
        spent["wall"] += time.perf_counter() - wall
        spent["cpu"] += time.process_time() - cpu
compress_sequentially.CompressSequentiallyPass.run = timed
compression.CompressSequentiallyPass = functools.partial(compress_sequentially.CompressSequentiallyPass, walk=args["mode"] == "walk")
wall, cpu = time.perf_counter(), time.process_time()
onnxcomp.compress(args["input"], args["output"], calib=args["calib"], prune="activation", sequential=True, **args["options"])
digest = hashlib.sha256()
for suffix in (".onnx", ".onnxcomp"):
    try:
        digest.update(open(args["output"][:-5] + suffix, "rb").read())
    except FileNotFoundError:
        pass
print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "pass_wall": spent["wall"],
                  "pass_cpu": spent["cpu"], "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "sha256": digest.hexdigest()}))
"""


def options_from(extra: list[str]) -> dict:
    """``--name value`` pairs as compress keyword arguments (numbers parsed)."""
    options = {}
    for flag, value in zip(extra[::2], extra[1::2]):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        options[flag.lstrip("-").replace("-", "_")] = parsed
    return options


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("calib")
    parser.add_argument("--samples", type=int, default=8, help="the first N samples of the calibration file")
    parser.add_argument("--modes", default="walk,probes")
    parser.add_argument("--folder", default=None)
    args = parser.parse_args(argv)
    folder = Path(args.folder or tempfile.mkdtemp(prefix="seqspeed-"))
    folder.mkdir(parents=True, exist_ok=True)
    with np.load(args.calib) as data:
        np.savez(folder / "calib.npz", **{k: v[:args.samples] for k, v in data.items()})
    for mode in args.modes.split(","):
        (folder / mode).mkdir(exist_ok=True)
        child = {"input": args.model, "output": str(folder / mode / "out.onnx"), "calib": str(folder / "calib.npz"),
                 "options": options_from(extra), "mode": mode}
        result = subprocess.run([sys.executable, "-c", CHILD, json.dumps(child)], capture_output=True, text=True, check=False)
        if result.returncode:
            print(f"{mode}: failed: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else result.returncode}")
            continue
        m = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"{mode}: {args.samples} samples: wall {m['wall']:.1f} s, CPU {m['cpu']:.1f} s; sequential pass wall "
              f"{m['pass_wall']:.1f} s, CPU {m['pass_cpu']:.1f} s; peak RSS {m['peak_rss'] / 2**30:.2f} GiB; "
              f"sha256 {m['sha256'][:16]}", flush=True)


if __name__ == "__main__":
    main()
