"""Offline study of back-off variants after the default allocation's round at the model's budget misses the
fidelity check (issue #12, branch ratio5; docs/benchmarks.md, targeted back-off).

    python bench/backoff_variants.py MODEL VARIANT[,VARIANT...]

MODEL is a zoo model (bench/zoo/, prepared). Round 0, the gains and the round at BUDGET run as compress() runs them;
then each variant writes an output (the rounds after the first use the unscaled candidates, as the back-off does,
except t...), measured on the synthesised fidelity inputs and on the zoo's real data (its declared checks):
  regainN[g|m]       gains re-measured at the allocated errors on N samples (g: geometric mean with round 0's,
                     m: the larger), solved again at BUDGET, halved until the synthesised check passes (3 rounds)
  xF:SUB+SUB         the gains of the weights whose names contain SUB times F, solved again at BUDGET
  tF:SUB+SUB         only those weights' limits times F, every other weight's limit as in the round at BUDGET
  budgetB            every weight at model budget B
"""
import importlib.util
import os
import pathlib
import pickle
import sys
import tempfile
import time

import numpy as np
from onnxcomp.passes import model_io
from onnxcomp.pipeline import compression as C
from onnxcomp.pipeline import fidelity as F
from onnxcomp.pipeline.fidelity import attribute

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
spec = importlib.util.spec_from_file_location("zoocli", f"{HERE}/zoo.py")
zoocli = importlib.util.module_from_spec(spec)
spec.loader.exec_module(zoocli)
name, variants = sys.argv[1], sys.argv[2].split(",")
zm = zoocli.zoo.BY_NAME[name]
path = str(zm.onnx_path)
loaded = model_io.load_model(path, external_data=False)
feeds, source, _ = F.prepare(path, seed=0, model=loaded)
work = tempfile.mkdtemp(prefix=f"variants-{name}-")
cache, reference = {}, {}
def once(tag, limits, scaled=True):
    out = os.path.join(work, tag, "m.onnx")
    os.makedirs(os.path.dirname(out))
    rep = C._compress_once(path, out, None, loaded=loaded, allocation="proxy", check=False, allocation_limits=limits,
                           allocation_cache=cache, allocation_scaled=scaled)
    res = F.compare_runs(path, out, feeds, source, loaded, reference) if limits is not None else None
    return out, rep, res
def real(out):
    pkl = out + ".pkl"
    r = zoocli.evaluate(zm, pathlib.Path(out), "compressed", pathlib.Path(pkl), 3600)
    original = pickle.loads((zm.folder / "original.pkl").read_bytes())
    m = zoocli.measure(zm, original, r)
    return m["fidelity"], m["failures"]
def regain(out, rep, limits, samples):
    count = next((len(v) for v in feeds[0].values() if np.ndim(v)), 0)
    feed = {k: (v[:samples] if np.ndim(v) and len(v) == count else v) for k, v in feeds[0].items()}
    errors = attribute(path, out, feed, loaded)
    measured = {n: errors[n] / limits[n] for n in errors if limits.get(n, 0) > 0}
    med = float(np.median(list(measured.values())))
    return measured, med
t = time.perf_counter()
out0, rep0, _ = once("r0", None)
gains = C._gains(path, out0, feeds, cache, rep0, loaded)
limits = C._budget_limits(cache, gains, C.BUDGET, rep0)
out1, rep1, res1 = once("b015", limits)
print(f"{name} budget 0.15: {rep1.output_bytes:,} min cos {res1.min_cosine:.4f} ({time.perf_counter()-t:.0f}s)", flush=True)
results = {}
for v in variants:
    t = time.perf_counter()
    if v.startswith("regain"):  # regain{samples}[g] : gains re-measured at the allocated errors
        samples = int(v[6:].rstrip("gm") or 2)
        measured, med = regain(out1, rep1, limits, samples)
        new = {n: float(np.clip(measured.get(n, med) / med, *C.GAIN_RANGE)) for n in cache}
        if v.endswith("g"):  # geometric mean with round 0's
            new = {n: float(np.sqrt(new[n] * gains[n])) for n in cache}
        if v.endswith("m"):  # the larger of the two
            new = {n: max(new[n], gains[n]) for n in cache}
        print("  gains", {n[-30:]: (round(gains[n], 2), round(new[n], 2)) for n in cache if n in limits}, flush=True)
        b = C.BUDGET
        for k in range(3):
            lim = C._budget_limits(cache, new, b, rep1)
            out, rep, res = once(f"{v}-{k}", lim, scaled=False)
            print(f"  {v} budget {b:.4f}: {rep.output_bytes:,} ({rep.input_bytes/rep.output_bytes:.3f}x) min cos {res.min_cosine:.4f}", flush=True)
            if not res.below:
                break
            b *= 0.5
    elif v.startswith("x"):  # x{factor}:{sub}+{sub}: those weights' gains times factor, budget 0.15
        head, subs = v.split(":", 1)
        factor = float(head[1:])
        new = {n: gains[n] * (factor if any(s in n for s in subs.split("+")) else 1.0) for n in cache}
        lim = C._budget_limits(cache, new, C.BUDGET, rep1)
        out, rep, res = once(v.replace("/", "_").replace(":", "_").replace("+", "_"), lim, scaled=False)
        print(f"  {v}: {rep.output_bytes:,} ({rep.input_bytes/rep.output_bytes:.3f}x) min cos {res.min_cosine:.4f}", flush=True)
    elif v.startswith("t"):  # t{factor}:{sub}+{sub}: only those weights' limits times factor, the others as at 0.15
        head, subs = v.split(":", 1)
        factor = float(head[1:])
        lim = {n: l * (factor if any(s in n for s in subs.split("+")) else 1.0) for n, l in limits.items()}
        out, rep, res = once(v.replace("/", "_").replace(":", "_").replace("+", "_"), lim, scaled=True)
        print(f"  {v}: {rep.output_bytes:,} ({rep.input_bytes/rep.output_bytes:.3f}x) min cos {res.min_cosine:.4f}", flush=True)
    elif v.startswith("budget"):  # plain budget, unscaled (as the back-off)
        b = float(v[6:])
        lim = C._budget_limits(cache, gains, b, rep1)
        out, rep, res = once(v, lim, scaled=False)
        print(f"  {v}: {rep.output_bytes:,} ({rep.input_bytes/rep.output_bytes:.3f}x) min cos {res.min_cosine:.4f}", flush=True)
    fid, fails = real(out)
    print(f"  {v} REAL: {fid} {fails} ({time.perf_counter()-t:.0f}s)", flush=True)
