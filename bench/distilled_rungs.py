"""Diagnostic only (no choice is made on it): the distilled rungs of a README run on LeNet-300-100 rebuilt from its
cached curves (allowed error 0.01 x FACTOR, the float16 candidates from the run's "weights stored as float16" line),
compressed as the check set's sequence compresses them (fit on the search's 3,000 digits, sequential, distilled),
measured on the check digits (to confirm the rebuild) and on the evaluation digits (branch distill12).
Usage: PYTHONPATH=. python bench/distilled_rungs.py 'CACHE_DIR/sensitivity-*.json' HALF_ERROR FACTOR..."""
import glob, json, sys, tempfile, numpy as np, onnx
import onnxruntime as ort
import onnxcomp
from onnxcomp.core import budget as bm
from onnxcomp.pipeline import autotune
from onnxcomp.pipeline.compression import compress
model = onnx.load("models/lenet300_mnist.onnx")
curves = {n: [tuple(p) for p in pts] for n, pts in json.load(open(glob.glob(sys.argv[1])[0])).items()}
curves = autotune._with_float16(curves, autotune._halvable(model, curves), float(sys.argv[2]))
points = {n: [(c[2], c[3]) for c in cs] for n, cs in curves.items()}
calib = np.load("models/mnist_calib.npz"); x, y = calib["input"], calib["labels"]
fit, hold, check = autotune.budget_split(4000, 1000, 1000, 0)
searched = np.sort(np.concatenate([fit, hold]))
ev = np.load("models/mnist_eval.npz")
sess = ort.InferenceSession("models/lenet300_mnist.onnx")
for factor in [float(f) for f in sys.argv[3:]]:
    choice = bm.allocate(points, 0.01 * factor)
    settings = {n: autotune._setting(curves[n][i]) for n, i in sorted(choice.items())}
    with tempfile.TemporaryDirectory() as d:
        rep = compress("models/lenet300_mnist.onnx", d + "/o.onnx", calib={"input": x[searched]}, prune="activation", score="wanda",
                       min_elements=1, settings=settings, float16_others=True, sequential=True, fidelity=False)
        s = onnxcomp.InferenceSession(d + "/o.onnx")
        line = [f"rung {factor}x: {rep.output_bytes} B {rep.ratio:.1f}x {settings}"]
        for name, xs, ys in (("check", x[check], y[check]), ("eval", ev["input"], ev["labels"])):
            r = sess.run(None, {"input": xs})[0].argmax(1); o = s.run(None, {"input": xs})[0].argmax(1)
            hurt = int(np.sum((r == ys) & (o != ys))); helped = int(np.sum((r != ys) & (o == ys)))
            line.append(f"{name} drop {100*(hurt-helped)/len(ys):+.2f} ({hurt}/{helped})")
    print(" | ".join(line), flush=True)
