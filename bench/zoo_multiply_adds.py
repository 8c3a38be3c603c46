"""Each prepared zoo model's multiply-adds per sample (autotune.multiply_adds on its first calibration sample), its
calibration samples and the held-back share of ``compress --budget`` (0.25), and whether autotune.held_subset
would measure a spread weight's trials on a subset there (a run on the held-back samples above SUBSET_WORK, and
a subset smaller than them). usage: python bench/zoo_multiply_adds.py"""
import os

import numpy as np
import onnx

from onnxcomp.passes.calibration import count_samples, sample_axes, take_samples
from onnxcomp.pipeline import autotune

folder = os.path.expanduser("~/.cache/onnxcomp-zoo/models")
for name in sorted(os.listdir(folder)):
    model = onnx.load(f"{folder}/{name}/model.onnx")
    data = dict(np.load(f"{folder}/{name}/calib.npz"))
    data.pop("labels", None)
    data.pop("groups", None)
    axes = sample_axes(autotune.model_specs(model))
    count = count_samples(data, axes)
    held = max(1, int(round(0.25 * count)))
    per_sample = autotune.multiply_adds(model, take_samples(data, np.arange(1), axes))
    subset = per_sample * held > autotune.SUBSET_WORK and autotune.held_subset_size(held) < held
    print(f"{name}: {per_sample:.3g} multiply-adds a sample, {count} samples, {held} held back: a run on them "
          f"{per_sample * held:.3g}; subset: {'yes, ' + str(autotune.held_subset_size(held)) if subset else 'no'}", flush=True)
