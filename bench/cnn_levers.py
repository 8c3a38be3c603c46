"""What bias correction and per-channel scaled codebooks buy on a zoo CNN under --calib (issue #12, branch calcnn11).

Calibration data only (the model's calib.npz, split by a seeded permutation into 3/4 fit and 1/4 held back;
never the evaluation data). Subcommands:

  split MODEL                      write /tmp/cnn_levers/MODEL-fit.npz and MODEL-held.npz
  error MODEL DENSE.onnx           the error of DENSE (an `onnxcomp decompress` output of a compressed MODEL) on the
                                   held-back samples, its decoded weights put back into the original graph
  bias MODEL DENSE.onnx            the same after empirical bias correction (Nagel et al. 2019, section 4.2): layer
                                   by layer in graph order, each Conv/Gemm's bias shifted by the per-channel mean of
                                   (original output - compressed output) over the fit samples, measured with every
                                   earlier correction in place
  decompose MODEL DENSE.onnx       per layer, on 16 fit samples: the relative error of its output in the compressed
                                   model (upstream errors included) and the share of its squared error that is the
                                   per-channel mean shift (what a bias correction removes)
  recipe REPORT.json ALLOWED OUT.toml
                                   the allocation a pre-cal11b run (errors summed) made at ALLOWED from its cached
                                   curves (the report's budget.cache), as a recipe: one [[layer]] rule per weight
  layers MODEL SAMPLES [NAME,...]  per weight, compressed alone as the budget's trials compress it at 3 and 4 bits:
                                   the layer error eps = ||X (W - Q)||^2 / ||X W||^2, the same with the mean part
                                   n (mu^T (W - Q))^2 removed (after a bias correction), and for the weight divided
                                   by its channel RMS (codebook.channel_scales) before sharing and multiplied back
                                   after, record bytes + 2 per channel

Errors: yolov8n-nudenet and ddddocr-det the balanced rel_l2 of their budget parts (bench/zoo/vision.py), other
models 1 - min cosine of the first output.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

ZOO = os.path.expanduser("~/.cache/onnxcomp-zoo")
OUT = "/tmp/cnn_levers"
PARTS = {"yolov8n-nudenet": ("output0", [lambda a: a[:, :4], lambda a: a[:, 4:]]),
         "ddddocr-det": ("output", [lambda a: a[..., :4], lambda a: a[..., 4:5], lambda a: a[..., 5:6]])}


def _session(model):
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = 1, 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _run(model, x, outputs, batch=8):
    session = _session(model)
    name = session.get_inputs()[0].name
    parts = [session.run(outputs, {name: x[i:i + batch]}) for i in range(0, len(x), batch)]
    return {o: np.concatenate([p[k] for p in parts]) for k, o in enumerate(outputs)}


def _with_outputs(model, names):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    have = {o.name for o in copy.graph.output}
    copy.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in have)
    return copy


def _error(name, reference, output):
    if name in PARTS:  # balanced rel_l2: each part scaled by the RMS of its per-sample norm in the original
        num = den = 0.0
        for part in PARTS[name][1]:
            r = part(reference).reshape(len(reference), -1)
            o = part(output).reshape(len(output), -1)
            scale = np.sqrt(np.mean((r.astype(np.float64) ** 2).sum(1)))
            num += (((o - r) / scale) ** 2).sum()
            den += ((r / scale) ** 2).sum()
        return float(np.sqrt(num / den))
    a, b = reference.reshape(len(reference), -1), output.reshape(len(output), -1)
    return float(1 - ((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def _substituted(original, dense):
    """The original graph with the decoded weights of ``dense`` (initializers of the same name and shape)."""
    decoded = {t.name: numpy_helper.to_array(t) for t in dense.graph.initializer}
    model = onnx.ModelProto()
    model.CopyFrom(original)
    changed = []
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        if t.name in decoded and decoded[t.name].shape == a.shape and a.size >= 1024 and not np.array_equal(a, decoded[t.name]):
            t.CopyFrom(numpy_helper.from_array(decoded[t.name].astype(a.dtype), t.name))
            changed.append(t.name)
    return model, changed


def _layers(model, weights):
    return [n for n in model.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 1 and n.input[1] in weights]


def _shift_bias(model, node, delta):
    inits = {t.name: t for t in model.graph.initializer}
    if len(node.input) > 2 and node.input[2]:
        t = inits[node.input[2]]
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32) + delta.astype(np.float32), t.name))
    else:
        model.graph.initializer.append(numpy_helper.from_array(delta.astype(np.float32), node.input[1] + ".bias_correction"))
        node.input.append(node.input[1] + ".bias_correction")


def _channel_mean(y):
    return y.mean(axis=tuple(i for i in range(y.ndim) if i != 1), dtype=np.float64)


def _load(name):
    original = onnx.load(f"{ZOO}/models/{name}/model.onnx")
    key = original.graph.input[0].name
    return original, np.load(f"{OUT}/{name}-fit.npz")[key], np.load(f"{OUT}/{name}-held.npz")[key]


def split(name):
    os.makedirs(OUT, exist_ok=True)
    calib = np.load(f"{ZOO}/models/{name}/calib.npz")
    key = onnx.load(f"{ZOO}/models/{name}/model.onnx", load_external_data=False).graph.input[0].name
    x = calib[key]
    order = np.random.default_rng(0).permutation(len(x))
    fit = len(x) * 3 // 4
    np.savez(f"{OUT}/{name}-fit.npz", **{key: x[np.sort(order[:fit])]})
    np.savez(f"{OUT}/{name}-held.npz", **{key: x[np.sort(order[fit:])]})
    print(f"{name}: {fit} fit, {len(x) - fit} held back")


def error(name, dense, correct=False):
    original, fit, held = _load(name)
    output = PARTS[name][0] if name in PARTS else original.graph.output[0].name
    reference = _run(original, held, [output])[output]
    model, changed = _substituted(original, onnx.load(dense))
    print(f"{name}, {dense}: {len(changed)} weights compressed; error on {len(held)} held-back samples "
          f"{_error(name, reference, _run(model, held, [output])[output]):.5f}", flush=True)
    if not correct:
        return
    outputs = [n.output[0] for n in _layers(original, set(changed))]
    means = {o: _channel_mean(v) for o, v in _run(_with_outputs(original, outputs), fit, outputs).items()}
    nodes = {n.output[0]: n for n in model.graph.node}
    for o in outputs:  # in graph order, each with the corrections before it in place
        _shift_bias(model, nodes[o], means[o] - _channel_mean(_run(_with_outputs(model, [o]), fit, [o])[o]))
    print(f"after bias correction on {len(fit)} fit samples: "
          f"{_error(name, reference, _run(model, held, [output])[output]):.5f}")


def decompose(name, dense, count=16):
    original, fit, _ = _load(name)
    model, changed = _substituted(original, onnx.load(dense))
    nodes = _layers(original, set(changed))
    outputs = [n.output[0] for n in nodes]
    a = _run(_with_outputs(original, outputs), fit[:count], outputs)
    b = _run(_with_outputs(model, outputs), fit[:count], outputs)
    print("| weight | relative error of its output (upstream included) | mean shift's share of the squared error |")
    print("|---|---|---|")
    for node, o in zip(nodes, outputs):
        d = b[o].astype(np.float64) - a[o]
        total = (d ** 2).mean(axis=tuple(i for i in range(d.ndim) if i != 1)).sum()
        print(f"| {node.input[1]} | {np.sqrt((d ** 2).sum() / (a[o].astype(np.float64) ** 2).sum()):.4f} | "
              f"{(_channel_mean(d) ** 2).sum() / total:.3f} |")


def layers(name, samples, names):
    import onnx_graphsurgeon as gs

    from onnxcomp.core import codebook
    from onnxcomp.passes import calibration
    from onnxcomp.passes.base import CompressionState
    from onnxcomp.passes.calibrate_weights import CalibrateWeightsPass
    from onnxcomp.passes.select_weights import SelectWeightsPass
    from onnxcomp.pipeline.autotune import _pruned, _shared
    sys.path.insert(0, os.path.dirname(__file__))
    from act_order import OPTIONS

    plain_add = calibration.LayerStatistics.add

    def add(self, rows, samples, threshold, weight=1.0, gram_rows=None):  # also the row sums (the inputs' means)
        self.sum_x = getattr(self, "sum_x", 0) + weight * rows.sum(axis=0, dtype=np.float64)
        return plain_add(self, rows, samples, threshold, weight, gram_rows)

    calibration.LayerStatistics.add = add
    model = onnx.load(f"{ZOO}/models/{name}/model.onnx")
    key = model.graph.input[0].name
    state = CompressionState(gs.import_onnx(model))
    SelectWeightsPass(min_elements=1024)(state)
    if names:
        state.targets = [t for t in state.targets if any(n in t.name for n in names)]
    CalibrateWeightsPass(data={key: np.load(f"{ZOO}/models/{name}/calib.npz")[key][:samples]}, keep_gram=True)(state)
    print("| weight | bits | bytes | eps | eps, mean part removed | channel-scaled bytes | eps | eps, mean part removed |")
    print("|---|---|---|---|---|---|---|---|")
    for t in state.targets:
        st = t.statistics
        if st is None or st.gram is None:
            continue
        gram, mu = st.gram.astype(np.float64), st.sum_x / st.rows
        w = calibration.to_rows(t.original, t.layer_input.layout).astype(np.float64)
        energy = ((w @ gram) * w).sum()

        def eps(q):
            d = q - w
            e = ((d @ gram) * d).sum()
            return e / energy, (e - st.rows * ((d @ mu) ** 2).sum()) / energy

        scales = codebook.channel_scales(t.original, 0)
        shape = (-1,) + (1,) * (len(t.shape) - 1)
        scaled = dataclasses.replace(t, constant=gs.Constant(t.name, (t.original / scales.reshape(shape)).astype(np.float32)))
        for bits in (3, 4):
            plain = _shared(_pruned(t, 0.0, OPTIONS, as_compress=True), bits, OPTIONS)
            e, c = eps(calibration.to_rows(plain.decoded(), t.layer_input.layout))
            other = _shared(_pruned(scaled, 0.0, OPTIONS, as_compress=True), bits, OPTIONS)
            es, cs = eps(calibration.to_rows(other.decoded() * scales.reshape(shape), t.layer_input.layout))
            print(f"| {t.name} | {bits} | {len(plain.record):,} | {e:.5f} | {c:.5f} | {len(other.record) + 2 * len(scales):,} | "
                  f"{es:.5f} | {cs:.5f} |", flush=True)


def recipe(report_path, allowed, out):
    import json

    from onnxcomp.core import budget
    report = json.load(open(report_path))
    curves = {n: [tuple(p) for p in points] for n, points in json.load(open(report["budget"]["cache"])).items()}
    choice = budget.allocate({n: [(c[2], c[3]) for c in points] for n, points in curves.items()}, allowed)
    lines = [f'description = "the allocation at allowed {allowed} of {report_path}"', "[options]", "min-elements = 1024"]
    for name, i in sorted(choice.items()):
        sparsity, bits = curves[name][i][:2]
        lines += ["[[layer]]", f'pattern = "{name}"'] + (["skip = true"] if sparsity is None else
                                                          [f"sparsity = {sparsity}", f"bits = {bits}"])
    open(out, "w").write("\n".join(lines) + "\n")
    print(f"{len(choice)} weights, {sum(curves[n][i][2] for n, i in choice.items()):,} curve bytes -> {out}")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "split":
        split(args[0])
    elif command in ("error", "bias"):
        error(args[0], args[1], command == "bias")
    elif command == "decompose":
        decompose(args[0], args[1])
    elif command == "recipe":
        recipe(args[0], float(args[1]), args[2])
    elif command == "layers":
        layers(args[0], int(args[1]), args[2].split(",") if len(args) > 2 else [])
