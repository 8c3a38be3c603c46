"""Time and error of the calibration statistics with and without the Gram row cap (calibration.GRAM_ROWS_PER_FEATURE).

    python bench/gram_rows.py MODEL.onnx CALIB.npz --samples 4 --total 200 --repeats 2

Runs the first ``--samples`` calibration samples through the model once (onnxruntime, every observed layer input
asked), then, for each Conv / MatMul / Gemm layer whose weight is an initializer, times
``calibration._observe`` on them as a pass over ``--total`` samples would (the cap's rows per sample: ceil(R /
total)) and as before the cap (every sampled row), alternating the two ``--repeats`` times in this process; prints
per layer the features, rows per sample before / after, the median seconds of each (process CPU time, so other
processes' load counts less), and the relative Frobenius error of the capped X^T X against the uncapped one on
the same samples (the estimate's sampling error at that many rows per sample: with ``total`` samples it is about
sqrt(samples / total) of this, the rows being independent draws per sample). Nothing is written.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcomp.passes import calibration


def layers(model: onnx.ModelProto) -> dict[str, calibration.LayerInput]:
    """LayerInput by weight name for Conv (group 1, explicit pads), MatMul and Gemm nodes reading an initializer."""
    weights = {t.name: numpy_helper.to_array(t).shape for t in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if len(node.input) < 2 or node.input[1] not in weights:
            continue
        shape = weights[node.input[1]]
        if node.op_type == "Conv" and len(shape) == 4 and attrs.get("group", 1) == 1:
            found[node.input[1]] = calibration.LayerInput(
                node.input[0], "conv", tuple(shape[2:]), tuple(attrs.get("strides", (1, 1))),
                tuple(attrs.get("pads", (0, 0, 0, 0))), tuple(attrs.get("dilations", (1, 1))))
        elif node.op_type == "MatMul" and len(shape) == 2:
            found[node.input[1]] = calibration.LayerInput(node.input[0], "kn")
        elif node.op_type == "Gemm" and attrs.get("transA", 0) == 0:
            found[node.input[1]] = calibration.LayerInput(node.input[0], "nk" if attrs.get("transB", 0) else "kn")
    return found


def observe(spec: calibration.LayerInput, values: dict, samples: int, total: int | None):
    stats: dict = {}
    start = time.process_time()
    calibration._observe(stats, {"w": spec}, values, samples, 0.0, True, {}, total=total)
    gram = stats["w"].gram  # rows kept (few rows, many inputs) become X^T X here, as they would later in a pass
    return time.process_time() - start, gram


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("calib")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--total", type=int, default=200, help="samples of the pass the cap is computed for")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    model = onnx.load(args.model)
    specs = layers(model)
    data = dict(np.load(args.calib))
    probe = calibration.probe_model(model, sorted({s.tensor for s in specs.values()}))
    session = calibration._session(probe)
    feeds = {i.name: data[i.name][:args.samples] for i in session.get_inputs()}
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    values.update(feeds)
    print(f"{args.model}: {len(specs)} layers, {args.samples} samples, cap for a pass of {args.total}; "
          f"GRAM_ROWS_PER_FEATURE {calibration.GRAM_ROWS_PER_FEATURE}, GRAM_ROWS_MIN {calibration.GRAM_ROWS_MIN}")
    print("| layer | K | rows per sample before | after | s before | s after | rel. Frobenius error of X^T X |")
    print("|---|---|---|---|---|---|---|")
    sums = [0.0, 0.0]
    for name, spec in specs.items():
        x = np.asarray(values[spec.tensor])
        times: dict = {None: [], args.total: []}
        kept = {}  # X^T X of each
        for _ in range(args.repeats):
            for total in (None, args.total):
                seconds, kept[total] = observe(spec, values, args.samples, total)
                times[total].append(seconds)
        per_sample = min(calibration.positions_per_sample(x, spec), calibration.ROW_SAMPLE_POSITIONS)
        features = x.shape[1] * spec.kernel[0] * spec.kernel[1] if spec.layout == "conv" else x.shape[-1]
        after = calibration.gram_positions(features, per_sample, args.total)
        before_s, after_s = statistics.median(times[None]), statistics.median(times[args.total])
        sums[0] += before_s
        sums[1] += after_s
        full, capped = kept[None], kept[args.total]
        error = "-" if full is None else f"{np.linalg.norm(capped - full) / np.linalg.norm(full):.4f}"
        print(f"| {name} | {features} | {per_sample} | {after} | {before_s:.3f} | {after_s:.3f} | {error} |")
    print(f"| all | | | | {sums[0]:.2f} | {sums[1]:.2f} | |")


if __name__ == "__main__":
    main()
