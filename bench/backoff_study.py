"""Which weights carry the output error when the default allocation's first budget round misses the fidelity check
(issue #12, branch ratio5).

    python bench/backoff_study.py MODEL.onnx [--budget 0.15] [--json out.json]

Runs the default (proxy) path's round 0 and per-weight gains (onnxcomp.pipeline.compression._gains), the budget
round at ``--budget``, then on all the fidelity inputs (the same synthesised inputs the check uses) runs the
original with: every weight decoded (the round's output), each weight alone decoded, and every weight decoded but
one restored. Prints, per weight: its clipped gain, the allocation's predicted share (g e2)^2 / sum, its measured
output error alone (relative L2 over the compared outputs, all samples) and the gain that implies, the min cosine
with it alone and with it restored. Also the error model's check: the measured combined error against
sqrt(sum of the measured single errors^2) (independent errors) and their plain sum (coherent errors).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import numpy_helper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--budget", type=float, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import onnxruntime as ort
    from onnxcomp.passes import model_io
    from onnxcomp.passes.calibration import run_batched
    from onnxcomp.pipeline import compression as C
    from onnxcomp.pipeline import fidelity as F
    from onnxcomp.pipeline.autotune import _weight_as_input

    budget = args.budget if args.budget is not None else C.BUDGET
    path = args.model
    loaded = model_io.load_model(path, external_data=False)
    feeds, source, unavailable = F.prepare(path, seed=0, model=loaded)
    assert not unavailable, unavailable
    work = tempfile.mkdtemp(prefix="backoff-study-")
    start = time.perf_counter()
    cache: dict = {}
    first = os.path.join(work, "r0.onnx")
    report0 = C._compress_once(path, first, None, loaded=loaded, allocation="proxy", check=False,
                               allocation_limits=None, allocation_cache=cache, allocation_scaled=True)
    gains = C._gains(path, first, feeds, cache, report0, loaded)
    limits = C._budget_limits(cache, gains, budget, report0)
    out = os.path.join(work, "r1.onnx")
    report = C._compress_once(path, out, None, loaded=loaded, allocation="proxy", check=False,
                              allocation_limits=limits, allocation_cache=cache, allocation_scaled=True)
    reference: dict = {}
    result = F.compare_runs(path, out, feeds, source, loaded, reference)
    print(f"budget {budget}: {report.output_bytes:,} bytes, min cosine {result.min_cosine:.4f} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)

    decoded = C.decoded_weights(report.sidecar_path)
    model = model_io.load_model(path)
    model_io.constants_to_initializers(model.graph)
    originals = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in decoded}
    decoded = {k: v.astype(originals[k].dtype) for k, v in decoded.items() if k in originals}
    names = sorted(decoded)
    probe = _weight_as_input(model, names)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def outputs(weights: dict) -> np.ndarray:
        rows = [run_batched(session, feed, 16, extra=weights)[0] for feed in feeds]
        return np.concatenate(rows).reshape(sum(len(r) for r in rows), -1).astype(np.float64)

    def measured(actual: np.ndarray) -> tuple[float, float]:
        error = float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))
        return error, float(np.nanmin(F.cosines(expected, actual)))

    expected = outputs(originals)
    combined = outputs(decoded)
    all_error, all_cos = measured(combined)
    rows = []
    e2 = {layer.name: limits.get(layer.name, 0.0) for layer in report.layers}
    predicted = {n: (gains.get(n, 1.0) * e2.get(n, 0.0)) ** 2 for n in names}
    total = sum(predicted.values()) or 1.0
    for name in names:
        alone = outputs({**originals, name: decoded[name]})
        restored = outputs({**decoded, name: originals[name]})
        error, cos_alone = measured(alone)
        _, cos_restored = measured(restored)
        rows.append({"name": name, "gain": gains.get(name, 1.0), "e2": e2.get(name, 0.0),
                     "predicted_share": predicted[name] / total, "error_alone": error,
                     "implied_gain": error / e2[name] if e2.get(name) else None,
                     "min_cos_alone": cos_alone, "min_cos_restored": cos_restored,
                     "deviation": (alone - expected).tolist()})
        print(f"{name[-40:]:>40} g {gains.get(name, 1.0):6.3f} e2 {e2.get(name, 0):.4f} share {predicted[name] / total:6.1%} "
              f"err {error:.4f} cos alone {cos_alone:.4f} restored {cos_restored:.4f}", flush=True)
    singles = np.array([r["error_alone"] for r in rows])
    deviations = sum(np.asarray(r["deviation"]) for r in rows)
    additive = float(np.linalg.norm(deviations) / np.linalg.norm(expected))
    print(f"combined: error {all_error:.4f}, min cosine {all_cos:.4f}; sqrt(sum single^2) {np.sqrt((singles ** 2).sum()):.4f}, "
          f"sum single {singles.sum():.4f}, |sum of single deviations| {additive:.4f}", flush=True)
    if args.json:
        for r in rows:
            r.pop("deviation")
        with open(args.json, "w") as f:
            json.dump({"budget": budget, "bytes": report.output_bytes, "min_cosine": result.min_cosine,
                       "combined_error": all_error, "combined_min_cos": all_cos, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
