"""Post-training pruning of LeNet-300-100 at fixed sparsity, method against method, in numpy (issue #12, callenet11).

Fits on 3,000 of the 4,000 digits of models/mnist_calib.npz (seeded split) and measures on the other 1,000:
top-1 accuracy drop in points (labels), hurt/helped digits and top-1 agreement with the original. The
evaluation digits (models/mnist_eval.npz) are read only with --eval (the final figure).

Every method keeps the same number of weights in each layer (fc1 S1, fc2 S2, fc3 S3 sparsity), so at equal
bits the stored bytes are about equal. Methods:
  seq       sequential OBS (what --prune activation --score obs --sequential does): each layer pruned by OBS on
            its compressed inputs' Gram matrix, kept weights refit to the original layer's output (ridge 0.01)
  seqbias   the same, the refit with the bias as one more kept weight (a constant input column)
  down      fc1's OBS mask chosen against the next layer's view: row i's saliency scaled by
            sum_k W2[k,i]^2 * P(unit i active) (the Gauss-Newton diagonal through the ReLU)
  units     whole hidden units of fc1 removed first (lowest LS importance), then the rest as seqbias
  blockft   seqbias, then the kept weights of fc1+fc2 (and biases) fit by gradient descent to the original
            fc2 pre-activations through the ReLU (Adam, full batch)
  distill   seqbias, then all kept weights and biases fit to the original logits (Adam on the squared logit error)
  --bits B  every layer's kept weights then take a plain B-bit k-means codebook (nearest rounding; 0: float)
  --compress fc1/fc2/fc3 settings, e.g. 0.9/4,0.8/3,0.5/4: each method's model (method `none`: the original's weights)
            is then compressed by onnxcomp at those sparsities and bits (`--prune activation --score obs --sequential
            --min-elements 1`, biases 6 bits, fitted on all 4,000 calibration digits) and measured against the original
            model on the evaluation digits (ratio from onnxcomp's report)
Usage: PYTHONPATH=. python bench/lenet300_study.py [--sparsity 0.9,0.8,0.5] [--bits 0] [--methods ...] [--eval]
Results: docs/benchmarks.md, branch callenet11.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcomp.core import obs

ROOT = Path(__file__).resolve().parent.parent


def load():
    model = onnx.load(ROOT / "models" / "lenet300_mnist.onnx")
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    return [(w["fc1.weight"], w["fc1.bias"]), (w["fc2.weight"], w["fc2.bias"]), (w["fc3.weight"], w["fc3.bias"])]


def forward(layers, x):
    """[input, each layer's output (after its ReLU but the last)]."""
    outs = [x]
    for k, (w, b) in enumerate(layers):
        z = outs[-1] @ w.T + b
        if k < len(layers) - 1:
            z = np.maximum(z, 0)
        outs.append(z)
    return outs


def augment(x):
    return np.hstack([x, np.ones((len(x), 1))])


def refit(w, keep, xc, target, b, with_bias, ridge=0.01):
    """Rows' kept weights (and with_bias the bias) refit by ridge least squares so that xc v + c ~ target
    [samples, outputs] (ridge on the weights' mean diag); without, the bias stays b."""
    ac = augment(xc) if with_bias else xc
    ka = np.hstack([keep, np.ones((len(keep), 1), dtype=bool)]) if with_bias else keep
    goal = target if with_bias else target - b
    g = ac.T @ ac
    lam = ridge * float(np.mean(np.diag(g)[:xc.shape[1]])) + 1e-12
    rhs = ac.T @ goal
    out = np.zeros((len(keep), ac.shape[1]))
    for i in range(len(keep)):
        s = np.flatnonzero(ka[i])
        if len(s) == 0:
            continue
        system = g[np.ix_(s, s)].copy()
        system[np.diag_indices_from(system)] += lam
        out[i, s] = np.linalg.solve(system, rhs[s, i])
    if with_bias:
        return out[:, :-1], out[:, -1]
    return out, b.copy()


def obs_mask(w, x, sparsity, row_weight=None):
    """OBS keep mask (onnxcomp.core.obs.prune); with ``row_weight`` [outputs], row i's saliencies times row_weight_i."""
    gram = x.T @ x
    if row_weight is None:
        keep, _ = obs.prune(w, gram, sparsity)
        return keep
    # scaled saliency: prune rows' weights by (row_weight_i * OBS saliency), OBS compensation per row
    keep, _ = obs.prune(w * np.sqrt(row_weight)[:, None], gram, sparsity)
    return keep


def quantize(layers, bits):
    if not bits:
        return layers
    out = []
    for w, b in layers:
        nz = w[w != 0]
        qs = np.quantile(nz, np.linspace(0, 1, 2 ** bits + 2)[1:-1]) if len(nz) else np.zeros(1)
        c = qs.copy()
        for _ in range(20):
            idx = np.abs(nz[:, None] - c[None]).argmin(1)
            for j in range(len(c)):
                if np.any(idx == j):
                    c[j] = nz[idx == j].mean()
        q = w.copy()
        q[w != 0] = c[np.abs(nz[:, None] - c[None]).argmin(1)]
        out.append((q, b))
    return out


def sequential(layers, x, sparsities, with_bias, first_weight=None, targets=None):
    """targets: each layer's output in the original model (default: layers' own outputs)."""
    done = []
    xc, xo = x, x
    for k, ((w, b), s) in enumerate(zip(layers, sparsities)):
        keep = obs_mask(w, xc, s, first_weight if k == 0 else None)
        zo = xo @ w.T + b if targets is None else targets[k]
        v, c = refit(w, keep, xc, zo, b, with_bias)
        v = np.where(keep, v, 0.0)
        done.append((v, c))
        zc = xc @ v.T + c
        if k < len(layers) - 1:
            zc, zo = np.maximum(zc, 0), np.maximum(zo, 0)
        xc, xo = zc, zo
    return done


def adam_fit(params, masks, loss_grad, steps, lr):
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t in range(1, steps + 1):
        grads = loss_grad(params)
        for i, (p, g) in enumerate(zip(params, grads)):
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.999 * v[i] + 0.001 * g * g
            step = lr * (m[i] / (1 - 0.9 ** t)) / (np.sqrt(v[i] / (1 - 0.999 ** t)) + 1e-8)
            p -= step
            if masks[i] is not None:
                p *= masks[i]
    return params


def distill(done, original, x, steps, lr, layers_fit=3):
    """All kept weights and biases fit to the original logits, squared error, full batch."""
    x = x.astype(np.float32)
    target = forward(original, x)[-1].astype(np.float32)
    params = [a.astype(np.float32) for wb in done for a in wb]
    masks = [(p != 0).astype(np.float32) if p.ndim == 2 else None for p in params]

    def loss_grad(p):
        w1, b1, w2, b2, w3, b3 = p
        z1 = x @ w1.T + b1
        h1 = np.maximum(z1, 0)
        z2 = h1 @ w2.T + b2
        h2 = np.maximum(z2, 0)
        z3 = h2 @ w3.T + b3
        d3 = 2 * (z3 - target) / len(x)
        g3, gb3 = d3.T @ h2, d3.sum(0)
        d2 = (d3 @ w3) * (z2 > 0)
        g2, gb2 = d2.T @ h1, d2.sum(0)
        d1 = (d2 @ w2) * (z1 > 0)
        g1, gb1 = d1.T @ x, d1.sum(0)
        return [g1, gb1, g2, gb2, g3, gb3]

    p = [a.astype(np.float64) for a in adam_fit(params, masks, loss_grad, steps, lr)]
    return [(p[0], p[1]), (p[2], p[3]), (p[4], p[5])]


def block_fit(done, original, x, steps, lr):
    """Kept weights of fc1 and fc2 (and biases) fit to the original fc2 pre-activation, then fc3 refit by LS."""
    target = forward(original, x)[2]  # fc2 output after relu
    zo2 = forward(original, x)[1] @ original[1][0].T + original[1][1]
    params = [done[0][0].copy(), done[0][1].copy(), done[1][0].copy(), done[1][1].copy()]
    masks = [(params[0] != 0) * 1.0, None, (params[2] != 0) * 1.0, None]

    def loss_grad(p):
        w1, b1, w2, b2 = p
        z1 = x @ w1.T + b1
        h1 = np.maximum(z1, 0)
        z2 = h1 @ w2.T + b2
        d2 = 2 * (z2 - zo2) / len(x) * ((z2 > 0) | (zo2 > 0))  # error after the ReLU matters; both below 0: none
        g2, gb2 = d2.T @ h1, d2.sum(0)
        d1 = (d2 @ w2) * (z1 > 0)
        return [d1.T @ x, d1.sum(0), g2, gb2]

    p = adam_fit(params, masks, loss_grad, steps, lr)
    head = [(p[0], p[1]), (p[2], p[3])]
    xc = forward(head + [done[2]], x)[2]
    w3, b3 = original[2]
    keep3 = done[2][0] != 0
    v, c = refit(w3, keep3, xc, forward(original, x)[3], b3, True)
    return head + [(np.where(keep3, v, 0), c)]


def unit_removal(original, x, sparsities, units):
    """Remove `units` hidden units of fc1 (greedy by LS importance of fc2's input), then prune the rest."""
    w1, b1 = original[0]
    w2, b2 = original[1]
    h = forward(original, x)[1]
    # importance: the increase of fc2's output error when unit i is dropped and fc2 refit (OBS on fc2's input Gram,
    # one column at a time: sum_k W2[k,i]^2 / [H^-1]_ii)
    gram = h.T @ h + 1e-6 * np.mean(np.diag(h.T @ h)) * np.eye(h.shape[1])
    inv = np.linalg.inv(gram)
    score = (w2 ** 2).sum(0) / np.diag(inv)
    removed = np.argsort(score)[:units]
    keep_units = np.setdiff1d(np.arange(len(w1)), removed)
    nnz1 = round((1 - sparsities[0]) * w1.size)
    s1 = 1 - nnz1 / (len(keep_units) * w1.shape[1])
    nnz2 = round((1 - sparsities[1]) * w2.size)
    s2 = max(0.0, 1 - nnz2 / (w2.shape[0] * len(keep_units)))
    small = [(w1[keep_units], b1[keep_units]), (w2[:, keep_units], b2), original[2]]
    full = forward(original, x)
    targets = [x @ w1[keep_units].T + b1[keep_units], full[1] @ w2.T + b2, full[3]]
    done = sequential(small, x, [s1, s2, sparsities[2]], True, targets=targets)
    # back to full shapes (removed units: zero rows, zero columns)
    v1 = np.zeros_like(w1); v1[keep_units] = done[0][0]
    c1 = np.zeros_like(b1); c1[keep_units] = done[0][1]
    v2 = np.zeros_like(w2); v2[:, keep_units] = done[1][0]
    return [(v1, c1), (v2, done[1][1]), done[2]]


def measure(original, layers, x, labels):
    ref = forward(original, x)[-1]
    out = forward(layers, x)[-1]
    r, o = ref.argmax(1), out.argmax(1)
    hurt = int(np.sum((r == labels) & (o != labels)))
    helped = int(np.sum((r != labels) & (o == labels)))
    p = np.exp(ref - ref.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
    lq = out - out.max(1, keepdims=True); lq -= np.log(np.exp(lq).sum(1, keepdims=True))
    lp = np.log(p)
    kl = float(np.mean(np.sum(p * (lp - lq), 1)))
    return 100 * (hurt - helped) / len(x), hurt, helped, float(np.mean(r == o)), kl


def compressed(layers, grid: str, calibration: np.ndarray, method: str) -> str:
    """A table row: ``layers`` written into the model's graph, compressed by onnxcomp at the settings ``grid``
    ("sparsity/bits" for fc1, fc2, fc3), measured against the original model on the evaluation digits."""
    import tempfile

    import onnxruntime as ort

    import onnxcomp
    from onnxcomp.pipeline.compression import compress

    model = onnx.load(ROOT / "models" / "lenet300_mnist.onnx")
    names = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]
    values = dict(zip(names, [a for wb in layers for a in wb]))
    for tensor in model.graph.initializer:
        tensor.CopyFrom(numpy_helper.from_array(values[tensor.name].astype(np.float32), tensor.name))
    settings = {n: {"sparsity": 0.0, "bits": 6} for n in names[1::2]}
    for name, item in zip(names[0::2], grid.split(",")):
        sparsity, bits = item.split("/")
        settings[name] = {"sparsity": float(sparsity), "bits": int(bits)}
    evaluation = np.load(ROOT / "models" / "mnist_eval.npz")
    labels = evaluation["labels"]
    reference = ort.InferenceSession(str(ROOT / "models" / "lenet300_mnist.onnx")).run(
        None, {"input": evaluation["input"]})[0].argmax(1)
    with tempfile.TemporaryDirectory() as folder:
        source, out = str(Path(folder) / "in.onnx"), str(Path(folder) / "out.onnx")
        onnx.save(model, source)
        report = compress(source, out, calib={"input": calibration.astype(np.float32)}, settings=settings, fidelity=False,
                          prune="activation", sequential=True, min_elements=1, score="obs")
        output = onnxcomp.InferenceSession(out).run(None, {"input": evaluation["input"]})[0].argmax(1)
    hurt = int(np.sum((reference == labels) & (output != labels)))
    helped = int(np.sum((reference != labels) & (output == labels)))
    return (f"| {method}, then onnxcomp at {grid} | {report.ratio:.1f}x | {100 * (hurt - helped) / len(labels):+.2f} | "
            f"{hurt} | {helped} | {np.mean(output == reference):.3f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sparsity", default="0.9,0.8,0.5")
    ap.add_argument("--bits", type=int, default=0)
    ap.add_argument("--methods", default="seq,seqbias,down,units,blockft,distill")
    ap.add_argument("--units", type=int, default=60)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compress", help="fc1,fc2,fc3 settings sparsity/bits, e.g. 0.9/4,0.8/3,0.5/4")
    args = ap.parse_args()
    sparsities = [float(s) for s in args.sparsity.split(",")]
    calib = np.load(ROOT / "models" / "mnist_calib.npz")
    order = np.random.default_rng(args.seed).permutation(len(calib["labels"]))
    fit, test = np.sort(order[:3000]), np.sort(order[3000:])
    x = calib["input"].astype(np.float64)
    xf, xt, yt = x[fit], x[test], calib["labels"][test]
    if args.eval:
        ev = np.load(ROOT / "models" / "mnist_eval.npz")
        xt, yt = ev["input"].astype(np.float64), ev["labels"]
    original = load()
    print(f"original accuracy on the measured digits: {np.mean(forward(original, xt)[-1].argmax(1) == yt):.4f}")
    print("| method | drop (points) | hurt | helped | agreement | KL |")
    print("|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        if method == "none":
            layers = original
        elif method == "seq":
            layers = sequential(original, xf, sparsities, False)
        elif method == "seqbias":
            layers = sequential(original, xf, sparsities, True)
        elif method == "down":
            w2 = original[1][0]
            active = np.mean(forward(original, xf)[1] > 0, axis=0)
            layers = sequential(original, xf, sparsities, True, first_weight=(w2 ** 2).sum(0) * active)
        elif method == "units":
            layers = unit_removal(original, xf, sparsities, args.units)
        elif method == "blockft":
            layers = block_fit(sequential(original, xf, sparsities, True), original, xf, args.steps, args.lr)
        elif method == "distill":
            layers = distill(sequential(original, xf, sparsities, True), original, xf, args.steps, args.lr)
        else:
            sys.exit(f"unknown method {method}")
        layers = quantize(layers, args.bits)
        nnz = [int(np.count_nonzero(w)) for w, _ in layers]
        drop, hurt, helped, agree, kl = measure(original, layers, xt, yt)
        print(f"| {method} (nnz {nnz}) | {drop:+.2f} | {hurt} | {helped} | {agree:.3f} | {kl:.4f} |", flush=True)
        if args.compress:
            print(compressed(layers, args.compress, x, method), flush=True)


if __name__ == "__main__":
    main()
