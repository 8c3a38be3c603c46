"""Trace autotune._measure (the sensitivity curves) on the zoo's vgg16-tumor, one worker, each step's process CPU seconds
streamed (the trials' steps wrapped by timers; the calibration file's crops split by a seeded permutation), and each
prediction of the proxy with the anchors it had (why a trial went to the whole weight).
usage: ONNXCOMP_THREADS=1 python bench/curve_trace.py FIT HOLD WEIGHT_SUBSTR[,..] [--exact]  (--exact: every ridge refit solved exactly, as before the fix)"""
import sys, time, os, functools
import numpy as np, onnx
from onnxcomp.pipeline import autotune
from onnxcomp.core import budget as budget_math
from onnxcomp.core.outliers import parse_option
from onnxcomp.passes import share_weights, reconstruct_weights
from onnxcomp.core import reconstruction
from onnxcomp.passes.calibration import run_batched
from onnxcomp.passes import model_io

fit_n, hold_n, want = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
totals = {}
def timed(owner, name, label=None, describe=None):
    fn = getattr(owner, name)
    @functools.wraps(fn)
    def wrapper(*a, **k):
        c, w = time.process_time(), time.time()
        out = fn(*a, **k)
        dc, dw = time.process_time() - c, time.time() - w
        key = label or name
        t = totals.setdefault(key, [0, 0.0, 0.0]); t[0] += 1; t[1] += dc; t[2] += dw
        print(f"  {key:22s} cpu {dc:7.2f} wall {dw:7.2f} {describe(*a, **k) if describe else ''}", flush=True)
        return out
    setattr(owner, name, wrapper)
timed(autotune, "_pruned", describe=lambda t, s, *a, **k: f"rows {t.shape[0]} sparsity {s}")
timed(autotune, "_shared", describe=lambda t, b, *a, **k: f"rows {t.shape[0]} bits {b}")
timed(autotune._Proxy, "layer_error")
timed(autotune._Downstream, "run", "downstream run")
timed(autotune._Downstream, "__init__", "downstream init")
timed(reconstruction, "refit_rows")
predict = autotune._Proxy.predict


def traced_predict(self, eps, spot_check):
    """_Proxy.predict, printing what it decided from: the trial's eps, the anchors' ratios and eps range."""
    out = predict(self, eps, spot_check)
    ratios = self._ratios()
    used = [e for e, m in self.anchors if e > 0 and m > autotune.NOISE]
    print(f"  predict eps {eps:.3e} spot {spot_check}: {'measure' if out is None else f'{out:.3e}'}; anchors "
          f"{[(f'{e:.2e}', f'{m:.2e}') for e, m in self.anchors]}, ratio spread "
          f"{max(ratios) / min(ratios) if ratios else float('nan'):.2f}, eps range "
          f"{min(used) if used else float('nan'):.2e}-{max(used) if used else float('nan'):.2e}", flush=True)
    return out


autotune._Proxy.predict = traced_predict
if "--exact" in sys.argv:  # the behaviour before the fix: every ridge system solved exactly
    autotune.CG_ITERATIONS = 0
model = onnx.load(os.path.expanduser("~/.cache/onnxcomp-zoo/models/vgg16-tumor/model.onnx"))
model_io.constants_to_initializers(model.graph)
x = np.load(os.path.expanduser("~/.cache/onnxcomp-zoo/models/vgg16-tumor/calib.npz"))["input"]
order = np.random.default_rng(0).permutation(len(x))
fit = {"input": x[np.sort(order[:fit_n])]}
hold = {"input": x[np.sort(order[fit_n:fit_n + hold_n])]}
reference = run_batched(autotune._session(model), hold, 256)[0]
metric = budget_math.allocation_metric("top1", reference)
options = dict(prune="activation", score="wanda", reconstruct=True, ridge=1e-2, init="quantile", seed=0, rounding="obs",
               outliers=parse_option("auto"), matched_uniform=share_weights.MATCHED_UNIFORM)
names = [t.name for t in model.graph.initializer if np.prod(t.dims) >= 1024]
cached = {n: [(None, None, 0, 0.0)] for n in names if not any(w in n for w in want)}
print("metric", metric, "measuring", [n for n in names if n not in cached], "exact" if "--exact" in sys.argv else "cg", flush=True)
t0, c0 = time.time(), time.process_time()
curves = autotune._measure(model, fit, hold, reference, None, metric, autotune.SPARSITIES, autotune.BITS, options, 1024, cached=cached)
print(f"TOTAL wall {time.time() - t0:.1f} s, cpu {time.process_time() - c0:.1f} s", flush=True)
for k, (n, c, w) in totals.items():
    print(f"  {k:22s} calls {n:4d} cpu {c:8.1f} wall {w:8.1f}")
for n in curves:
    if n not in cached:
        for p in curves[n]:
            print("  point", p)
