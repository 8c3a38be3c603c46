"""float32 against float64 calibration statistics on large layers (issue #16): output error of the compressed model.

Layers above calibration.GRAM_FLOAT64_FEATURES inputs keep float32 statistics (their input rows while there are at
most a quarter as many rows as inputs, else a float32 Gram matrix) and round with a float32 OBS factor. This
compresses bench/scale.py's generated chain (``prune none``, ``bits 4``) with N calibration samples twice: as
shipped, and with the float64 limit raised above every layer (the float64 Gram matrix and factor of before), then
reports each output's relative error ||y - y0|| / ||y0|| against the original model on the calibration samples and
on 64 other seeded samples.
Usage:
    python bench/calib_precision.py [--layers 2] [--rows 3072] [--cols 1024] [--calib 4 --calib 256]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import scale  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=3072)
    parser.add_argument("--cols", type=int, default=1024)
    parser.add_argument("--calib", type=int, action="append")
    args = parser.parse_args()
    import onnxcomp
    from onnxcomp.passes import calibration
    from onnxcomp.runtime import InferenceSession
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "in.onnx"
        scale.make_model(source, args.layers, args.rows, args.cols)
        other = np.random.default_rng(2).standard_normal((64, args.rows), dtype=np.float32)
        dense = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
        for count in args.calib or [4, 256]:
            x = np.random.default_rng(1).standard_normal((count, args.rows), dtype=np.float32)
            np.savez(Path(folder) / "calib.npz", x=x)
            errors = {}
            for name, limit in (("float32", calibration.GRAM_FLOAT64_FEATURES), ("float64", 1 << 20)):
                calibration.GRAM_FLOAT64_FEATURES = limit
                out = Path(folder) / name / "out.onnx"
                out.parent.mkdir(exist_ok=True)
                onnxcomp.compress(source, out, **scale.options_for(args.layers, 0), calib=str(Path(folder) / "calib.npz"))
                session = InferenceSession(out)
                errors[name] = [float(np.linalg.norm(session.run(None, {"x": data})[0] - dense.run(None, {"x": data})[0])
                                      / np.linalg.norm(dense.run(None, {"x": data})[0])) for data in (x, other)]
            calibration.GRAM_FLOAT64_FEATURES = 2048
            print(f"| {args.layers} x {args.rows}x{args.cols}, {count} samples | "
                  f"{errors['float64'][0]:.4f} / {errors['float64'][1]:.4f} | {errors['float32'][0]:.4f} / {errors['float32'][1]:.4f} |", flush=True)


if __name__ == "__main__":
    main()
