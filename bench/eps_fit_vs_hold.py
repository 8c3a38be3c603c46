"""Is a trial's layer error eps (autotune._Proxy, on the fit samples' Gram matrix) a worse predictor of the model
error on the held-back samples than the same eps on the held-back samples' own Gram matrix? For each weight and
setting given: eps on fit, eps on held-back, the model error (allocation metric) on held-back, and m / eps for both.
A pruned and ridge-refit weight is fit to the fit samples: if it overfits them, its eps on fit understates the
layer's error on unseen inputs (the ratio m / eps_fit rises with sparsity while m / eps_hold does not).
usage: python bench/eps_fit_vs_hold.py MODEL WEIGHT[,WEIGHT] [SETTINGS] [--budget top1] [--fit 200 --hold 100]
  SETTINGS: sparsity/bits pairs, e.g. 0/2,0/4,0.5/3,0.7/2,0.85/2 (the default); MODEL: a zoo model's name"""
import argparse
import os

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.core import budget as budget_math
from onnxcomp.core.outliers import parse_option
from onnxcomp.core.reconstruction import CG_ITERATIONS
from onnxcomp.passes import CalibrateWeightsPass, CompressionState, SelectWeightsPass, model_io, share_weights
from onnxcomp.passes.calibration import run_batched
from onnxcomp.pipeline import autotune

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("weights")
parser.add_argument("settings", nargs="?", default="0/2,0/4,0.5/3,0.7/2,0.85/2")
parser.add_argument("--budget", default="top1")
parser.add_argument("--fit", type=int, default=200)
parser.add_argument("--hold", type=int, default=100)
args = parser.parse_args()
folder = os.path.expanduser(f"~/.cache/onnxcomp-zoo/models/{args.model}")
model = onnx.load(os.path.join(folder, "model.onnx"))
model_io.constants_to_initializers(model.graph)
data = dict(np.load(os.path.join(folder, "calib.npz")))
count = len(next(iter(data.values())))
order = np.random.default_rng(0).permutation(count)
fit = {k: v[np.sort(order[:args.fit])] for k, v in data.items()}
hold = {k: v[np.sort(order[args.fit:args.fit + args.hold])] for k, v in data.items()}
session = autotune._session(model)
reference = run_batched(session, hold)[0]
metric = budget_math.allocation_metric(args.budget, reference)
options = dict(prune="activation", score="wanda", reconstruct=True, ridge=1e-2, init="quantile", seed=0, rounding="obs",
               outliers=parse_option("auto"), matched_uniform=share_weights.MATCHED_UNIFORM)
wanted = args.weights.split(",")


def targets(samples):
    state = CompressionState(gs.import_onnx(model))
    SelectWeightsPass(min_elements=1024)(state)
    state.targets = [t for t in state.targets if t.name in wanted]
    CalibrateWeightsPass(data=samples, keep_gram=True)(state)
    return {t.name: t for t in state.targets}


on_fit, on_hold = targets(fit), targets(hold)
print(f"{args.model}: metric {metric}, {args.fit} fit and {args.hold} held-back samples")
for name in wanted:
    fit_proxy, hold_proxy = autotune._Proxy(on_fit[name], metric), autotune._Proxy(on_hold[name], metric)
    whole = autotune._weight_as_input(model, name)
    print(name)
    for setting in args.settings.split(","):
        sparsity, bits = float(setting.split("/")[0]), int(setting.split("/")[1])
        trial = autotune._shared(autotune._pruned(on_fit[name], sparsity, options, iterations=CG_ITERATIONS), bits, options)
        values = trial.decoded()
        eps_fit, eps_hold = fit_proxy.layer_error(values), hold_proxy.layer_error(values)
        output = run_batched(autotune._session(whole), hold, extra={name: values.astype(np.float32)})[0]
        error = budget_math.error(metric, reference, output)
        print(f"  sparsity {sparsity:<4g} {bits} bits: eps fit {eps_fit:.3e}, eps held-back {eps_hold:.3e} "
              f"({eps_hold / eps_fit:.2f}x), model error {error:.3e}; m / eps fit {error / eps_fit:.3g}, "
              f"m / eps held-back {error / eps_hold:.3g}", flush=True)
