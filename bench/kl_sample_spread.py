"""The per-sample spread of the KL divergence on a zoo model's held-back calibration samples (the split of
``compress --budget``: 400 samples, 100 held back, 100 in the check set, seed 0), with one weight quantised to a
1-D k-means codebook of 2^b entries (no calibration): for each (weight, bits) the mean KL, the coefficient of
variation of the per-sample terms (std / mean), the share of the sum in the 10 largest terms and the median / mean.
What autotune.SAMPLE_SPREAD (held_subset_size) was declared from, before the subset was run (docs/benchmarks.md, vgg13).
usage: python bench/kl_sample_spread.py [MODEL] [WEIGHT_SUBSTRING,...] [BITS,...]
       (default: vgg16-tumor block4_conv3,block2_conv2 2,3)"""
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from onnxcomp.pipeline.autotune import budget_split

model_name = sys.argv[1] if len(sys.argv) > 1 else "vgg16-tumor"
parts = (sys.argv[2] if len(sys.argv) > 2 else "block4_conv3,block2_conv2").split(",")
widths = [int(b) for b in (sys.argv[3] if len(sys.argv) > 3 else "2,3").split(",")]
folder = os.path.expanduser(f"~/.cache/onnxcomp-zoo/models/{model_name}")
model = onnx.load(f"{folder}/model.onnx")
data = np.load(f"{folder}/calib.npz")
name = [k for k in data.files if k not in ("labels", "groups")][0]
x = data[name]
_, hold, _ = budget_split(len(x), len(x) // 4, len(x) // 4, 0)
samples = x[hold]


def run(m):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(m.SerializeToString(), options)
    feed = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {feed: samples[i:i + 20]})[0] for i in range(0, len(samples), 20)])


def log_softmax(a):
    a = a - a.max(1, keepdims=True)
    return a - np.log(np.exp(a).sum(1, keepdims=True))


def kmeans_values(w, k, steps=15):
    """w's values replaced by the nearest of k centroids fit by Lloyd's steps on a seeded sample of 200,000."""
    sample = np.random.default_rng(0).choice(w, min(w.size, 200_000), replace=False)
    centroids = np.quantile(sample, (np.arange(k) + 0.5) / k)
    for _ in range(steps):
        nearest = np.abs(sample[:, None] - centroids[None]).argmin(1)
        for j in range(k):
            if (nearest == j).any():
                centroids[j] = sample[nearest == j].mean()
    return centroids[np.abs(w[:, None] - centroids[None]).argmin(1)]


reference = log_softmax(run(model).astype(np.float64))
for part in parts:
    tensor = next(t for t in model.graph.initializer if part in t.name and "convolution" in t.name or part == t.name)
    weight = numpy_helper.to_array(tensor)
    for bits in widths:
        changed = onnx.ModelProto()
        changed.CopyFrom(model)
        values = kmeans_values(weight.ravel().astype(np.float64), 2 ** bits).reshape(weight.shape).astype(np.float32)
        next(t for t in changed.graph.initializer if t.name == tensor.name).CopyFrom(numpy_helper.from_array(values, tensor.name))
        terms = (np.exp(reference) * (reference - log_softmax(run(changed).astype(np.float64)))).sum(1)
        top = np.sort(terms)[::-1]
        print(f"{tensor.name} {bits} bits: mean KL {terms.mean():.3g}, cv {terms.std(ddof=1) / terms.mean():.2f}, "
              f"10 largest {top[:10].sum() / top.sum():.2f} of the sum, median / mean {np.median(terms) / terms.mean():.3f}",
              flush=True)
