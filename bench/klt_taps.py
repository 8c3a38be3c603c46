"""Transform coding of k x k convolution taps, measured through the pipeline's own sharing (issue #12, session 21; a
study, nothing built).

High-rate theory: coding a weight's k*k taps in their Karhunen-Loeve basis (the eigenvectors of the taps' covariance
over all filters and input channels) instead of directly gains 0.5 log2(arithmetic / geometric mean of the
eigenvalues) bits per weight over coding them with one scale per tap position (Jayant and Noll 1984, Digital Coding
of Waveforms, ch. 12). ``gain`` prints that figure per model. ``layers`` measures what it buys where it matters: each
k x k convolution weight of MODEL compressed alone as the budget's trials compress it (activation-aware pruning
pass at sparsity 0, k-means codebook, outliers auto, compensated OBS rounding, codebook refit; bench/act_order.py's
OPTIONS), once directly and once in the KLT basis (weight w -> w V per input channel, the layer's Gram matrix
G -> P^T G P with P = I kron V, so the rounding is compensated against the same output error; the decoded
coefficients turned back by V^T), at 2-5 bits. Both errors are eps = ||X (W - Q)||^2 / ||X W||^2 on the first
SAMPLES calibration samples (the model's calib.npz in the zoo cache: never evaluation data), in the weight domain.
The KLT record is charged its k*k float32 basis. The summary gives, per weight, the KLT error at the direct
record's bytes (log-log interpolation between the KLT trials) over the direct error: below 1 the transform pays.

    python bench/klt_taps.py gain MODEL [MODEL ...]
    python bench/klt_taps.py layers MODEL SAMPLES [NAME,...]
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys

import numpy as np
import onnx
from onnx import numpy_helper

ZOO = os.path.expanduser("~/.cache/onnxcomp-zoo")
BITS = (2, 3, 4, 5)


def _taps(weight: np.ndarray) -> np.ndarray:
    """[O * I, k*k] float64: every filter's taps, each output channel divided by its RMS (a BN fold's scale out)."""
    rows = weight.reshape(weight.shape[0], -1).astype(np.float64)
    rms = np.sqrt((rows ** 2).mean(axis=1)) + 1e-12
    return (rows / rms[:, None]).reshape(-1, weight.shape[2] * weight.shape[3])


def gain(models: list[str]) -> None:
    for name in models:
        model = onnx.load(f"{ZOO}/models/{name}/model.onnx")
        total = weighted = 0.0
        for tensor in model.graph.initializer:
            weight = numpy_helper.to_array(tensor)
            if weight.dtype != np.float32 or weight.ndim != 4 or weight.shape[2] * weight.shape[3] < 9 or weight.size < 1024:
                continue
            taps = _taps(weight)
            covariance = taps.T @ taps / len(taps)
            eigenvalues = np.clip(np.linalg.eigvalsh(covariance), 1e-12, None)
            variances = np.diag(covariance)
            bits = 0.5 * (np.log2(variances.mean() / np.exp(np.log(eigenvalues).mean()))
                          - np.log2(variances.mean() / np.exp(np.log(variances).mean())))
            total += weight.size
            weighted += weight.size * bits
        print(f"{name}: {weighted / max(total, 1):.3f} bit per weight over {int(total):,} k x k convolution weights")


def layers(name: str, samples: int, names: list[str]) -> None:
    import onnx_graphsurgeon as gs

    from onnxcomp.passes import calibration
    from onnxcomp.passes.base import CompressionState
    from onnxcomp.passes.calibrate_weights import CalibrateWeightsPass
    from onnxcomp.passes.select_weights import SelectWeightsPass
    from onnxcomp.pipeline.autotune import _pruned, _shared
    sys.path.insert(0, os.path.dirname(__file__))
    from act_order import OPTIONS

    model = onnx.load(f"{ZOO}/models/{name}/model.onnx")
    key = model.graph.input[0].name
    state = CompressionState(gs.import_onnx(model))
    SelectWeightsPass(min_elements=1024)(state)
    state.targets = [t for t in state.targets if len(t.shape) == 4 and t.shape[2] * t.shape[3] >= 9 and t.shape[1] > 1
                     and (not names or any(n in t.name for n in names))]
    CalibrateWeightsPass(data={key: np.load(f"{ZOO}/models/{name}/calib.npz")[key][:samples]}, keep_gram=True)(state)
    print("| weight | shape | bits | direct bytes | eps | KLT bytes | eps |")
    print("|---|---|---|---|---|---|---|")
    summary = []
    for target in state.targets:
        statistics = target.statistics
        if statistics is None or statistics.gram is None:
            continue
        outputs, inputs, kh, kw = target.shape
        k = kh * kw
        gram = statistics.gram.astype(np.float64)
        w = calibration.to_rows(target.original, target.layer_input.layout).astype(np.float64)  # [O, I k]
        energy = ((w @ gram) * w).sum()
        taps = target.original.reshape(-1, k).astype(np.float64)
        basis = np.linalg.eigh(taps.T @ taps)[1][:, ::-1]  # by decreasing variance
        coefficients = (w.reshape(outputs, inputs, k) @ basis).reshape(target.shape)
        turned = copy.copy(statistics)
        turned.gram = np.einsum("aibj,ip,jq->apbq", gram.reshape(inputs, k, inputs, k), basis, basis,
                                optimize=True).reshape(inputs * k, inputs * k).astype(statistics.gram.dtype)
        transformed = dataclasses.replace(target, constant=gs.Constant(target.name, coefficients.astype(np.float32)),
                                          statistics=turned)

        def eps(q: np.ndarray) -> float:
            d = q - w
            return float(((d @ gram) * d).sum() / energy)

        direct, klt = [], []
        for b in BITS:
            plain = _shared(_pruned(target, 0.0, OPTIONS, as_compress=True), b, OPTIONS)
            e_direct = eps(calibration.to_rows(plain.decoded(), target.layer_input.layout))
            coded = _shared(_pruned(transformed, 0.0, OPTIONS, as_compress=True), b, OPTIONS)
            decoded = (coded.decoded().reshape(outputs, inputs, k).astype(np.float64) @ basis.T).reshape(outputs, -1)
            e_klt = eps(decoded)
            direct.append((len(plain.record), e_direct))
            klt.append((len(coded.record) + 4 * k * k, e_klt))
            print(f"| {target.name} | {tuple(target.shape)} | {b} | {direct[-1][0]:,} | {e_direct:.5f} | {klt[-1][0]:,} | "
                  f"{e_klt:.5f} |", flush=True)
        xs, ys = np.log([b for b, _ in klt]), np.log([e for _, e in klt])
        order = np.argsort(xs)
        ratios = [math.exp(np.interp(math.log(b), xs[order], ys[order])) / e for b, e in direct
                  if xs.min() <= math.log(b) <= xs.max()]
        summary.append((target.name, direct[1][0], ratios))
    print("\n| weight | KLT error / direct error at the direct record's bytes, 2-5 bits (where the KLT trials reach) |")
    print("|---|---|")
    logs, sizes = [], []
    for weight, size, ratios in summary:
        print(f"| {weight} | {' '.join(f'{r:.2f}' for r in ratios)} |")
        if ratios:
            logs.append(np.mean(np.log(ratios)))
            sizes.append(size)
    if logs:
        print(f"\ngeometric mean over weights, weighted by their 3-bit bytes: "
              f"{math.exp(np.average(logs, weights=sizes)):.2f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["gain"]:
        gain(sys.argv[2:])
    elif sys.argv[1:2] == ["layers"]:
        layers(sys.argv[2], int(sys.argv[3]), sys.argv[4].split(",") if len(sys.argv) > 4 else [])
    else:
        sys.exit(__doc__)
