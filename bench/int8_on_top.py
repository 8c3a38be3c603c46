"""onnxcomp on top of int8: the zoo's int8 anchors (onnxruntime's quantize_dynamic of each model, bench/zoo.py
prepare) compressed with onnxcomp, whose integer weights are coded losslessly (onnxcomp/passes/integer_weights.py).

    python bench/int8_on_top.py --name NAME --models yolov8n-nudenet,minilm-l3 [-- onnxcomp compress options]

Per model: the int8 file's size over the output's (model + sidecar), the task metric of the int8 model and of the
output (against the original float model's results, as bench/zoo.py measures them), whether the output's results
equal the int8 model's bit for bit, and, as bench/zoo.py speed does, one-thread CPU time per run of output / int8
model (batch 1, median of runs alternating in one process) and peak RSS (VmHWM over a process that only loads).
The int8 model is the reference here, not the float original. Outputs go to ~/.cache/onnxcomp-zoo/runs/NAME.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
import zoo  # noqa: E402  (the package bench/zoo/)

_spec = importlib.util.spec_from_file_location("zoo_cli", HERE / "zoo.py")
cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli)


def identical(a, b) -> bool:
    """True when two evaluation results hold the same arrays (every array-valued entry, bit for bit)."""
    keys = [k for k in a if isinstance(a[k], np.ndarray) and k in b]
    return bool(keys) and all(a[k].shape == b[k].shape and np.array_equal(a[k], b[k]) for k in keys)


def main() -> None:
    argv = sys.argv[1:]
    options = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--models", required=True)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    folder = cli.run_dir(args.name)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["| int8 model | int8 MB | output MB | ratio over int8 | task: float -> int8 -> output | output == int8 "
             "| batch-1 CPU ms int8 | output / int8 | peak RSS int8 MiB | output / int8 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in args.models.split(","):
        model = zoo.BY_NAME[name]
        source = model.folder / "int8.onnx"
        out = folder / f"{name}.onnx"
        report_file = folder / f"{name}.report.json"
        print(f"{name}: compressing ...", flush=True)
        subprocess.run([cli.onnxcomp_cli(), "compress", str(source), str(out), "--quiet", "--report", str(report_file),
                        *options], check=True)
        report = json.loads(report_file.read_text())
        kind = "compressed" if report.get("sidecar_path") else "original"
        result = cli.evaluate(model, out, kind, folder / f"{name}.pkl", 3600)
        reference = pickle.loads((model.folder / "original.pkl").read_bytes())
        int8 = pickle.loads((model.folder / "int8.pkl").read_bytes())
        task = cli.measure(model, reference, result)
        task_int8 = cli.measure(model, reference, int8)
        speed_file = folder / f"{name}.speed.json"
        subprocess.run([sys.executable, str(HERE / "zoo.py"), "_speed", name, str(source), str(out), str(args.repeats),
                        str(speed_file), "1"], check=True, capture_output=True, text=True)
        speed = json.loads(speed_file.read_text())["cpu"]["1"]
        feed_file = folder / f"{name}.feed1.npz"
        np.savez(feed_file, **model.feeds(cli.load_data(model), 1))
        base = cli.peak_rss(name, source, "baseline", feed_file)
        rss_int8 = cli.peak_rss(name, source, "original", feed_file) - base
        rss_out = cli.peak_rss(name, out, kind, feed_file) - base
        fmt = (lambda v: "-" if v is None else f"{v:.1f}")
        lines.append("| " + " | ".join([
            name, f"{report['input_bytes'] / 1e6:.2f}", f"{report['output_bytes'] / 1e6:.2f}",
            f"{report['input_bytes'] / report['output_bytes']:.2f}x"
            + (f" ({report['fallback'].split(':')[0]})" if report.get("fallback") else ""),
            f"{fmt(task['task_before'])} -> {fmt(task_int8['task_after'])} -> {fmt(task['task_after'])}",
            "yes" if identical(int8, result) else "no",
            f"{1000 * speed['original']:.2f}", f"{speed['compressed'] / speed['original']:.2f}",
            f"{rss_int8 / 2 ** 20:.1f}", f"{rss_out / max(rss_int8, 1):.2f}"]) + " |")
        print(lines[-1], flush=True)
    print(f"\nonnxcomp options: `{' '.join(options) or '(defaults)'}`\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
