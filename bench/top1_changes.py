"""Which samples a compressed classifier's top-1 prediction changes on, against the original (issue #12, branch counted12).

For a zoo model whose input is one array `x` [samples, ...] and whose first output is class scores [samples, classes]
(ppocr-cls, pplcnet-orientation): runs the original (onnxruntime) and each given output (onnxcomp.InferenceSession)
on every sample of the model's calib.npz and eval.npz, one at a time, and prints per file the indices whose argmax
changed, how many of them are blank (every channel constant: a page on which no text line fitted) and the
original's top-2 margin (largest minus second score) on each. A top-1 budget and the zoo's agreement check count
these changes; a sample the original is undecided on (margin near 0) changes under almost any perturbation.

Usage:
    python bench/top1_changes.py MODEL OUTPUT.onnx [OUTPUT.onnx ...]     (the zoo cache: $ONNXCOMP_ZOO_CACHE)
"""

from __future__ import annotations

import sys

import numpy as np

import zoo  # noqa: F401  (bench/zoo/, for the cache folder)


def scores(session, x: np.ndarray) -> np.ndarray:
    """First output, one sample per run (float [samples, classes])."""
    return np.concatenate([session.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])


def main(name: str, outputs: list[str]) -> None:
    import onnxruntime

    import onnxcomp

    model = zoo.BY_NAME[name]
    original = onnxruntime.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])
    data = {}
    for part in ("calib", "eval"):
        with np.load(model.folder / f"{part}.npz") as f:
            x = f["x"]
        reference = scores(original, x)
        top2 = np.sort(reference, 1)[:, -2:]
        blank = x.reshape(len(x), x.shape[1], -1).std(2).max(1) < 1e-6
        data[part] = (x, reference, top2[:, 1] - top2[:, 0], blank)
        print(f"{name} {part}.npz: {len(x)} samples, {int(blank.sum())} blank; original's top-2 margin below 0.05 on "
              f"{int((data[part][2] < 0.05).sum())} ({int((data[part][2][blank] < 0.05).sum())} of them blank)")
    for output in outputs:
        session = onnxcomp.InferenceSession(output)
        for part, (x, reference, margin, blank) in data.items():
            changed = np.flatnonzero(scores(session, x).argmax(1) != reference.argmax(1))
            print(f"{output} on {part}.npz: {len(changed)} changed {changed.tolist()}, {int(blank[changed].sum())} blank; "
                  f"original's top-2 margin {np.round(margin[changed].astype(float), 4).tolist()}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2:])
