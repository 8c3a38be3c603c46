"""What storing the original's outputs saves in compress's fidelity checks (fidelity.compare_runs ``reference``).

Times three checks of a zoo run's output of one model against the original on the default fidelity inputs
(synthesised, as compress prepares them): without the store, storing (the first round of a compress), and
reading the stored outputs (every later round): wall and process CPU seconds, and the min cosine (the same
three times).

    python bench/fidelity_cache.py --model vgg16-tumor --run ratio3-final
"""

from __future__ import annotations

import argparse
import os
import time

import onnx

from onnxcomp.pipeline import fidelity

ZOO = os.path.expanduser("~/.cache/onnxcomp-zoo")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a zoo model's name")
    parser.add_argument("--run", required=True, help="the zoo run whose output is checked")
    args = parser.parse_args()
    original = os.path.join(ZOO, "models", args.model, "model.onnx")
    output = os.path.join(ZOO, "runs", args.run, args.model + ".onnx")
    graph = onnx.load(original, load_external_data=False)
    feeds, source, reason = fidelity.prepare(original, model=graph)
    if reason:
        raise SystemExit(f"no fidelity inputs: {reason}")
    stored: dict = {}
    print("| check | wall s | CPU s | min cosine |\n|---|---|---|---|")
    for label, kwargs in (("no store", {}), ("storing", {"reference": stored}), ("reading", {"reference": stored})):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fidelity.compare_runs(original, output, feeds, source, graph, **kwargs)
        print(f"| {label} | {time.perf_counter() - wall:.1f} | {time.process_time() - cpu:.1f} | {result.min_cosine:.4f} |")


if __name__ == "__main__":
    main()
