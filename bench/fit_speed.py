"""The two Adam fits of the distilled chain (core/distillation.py: ``fit``, DistillWeightsPass; ``fit_shared``,
TuneCodebooksPass) timed on one allocation of the README's calibrated LeNet-300-100 command (issue #12's speed,
branch fitspeed): the allocation a report wrote (``--report`` JSON, its budget's settings), compressed as the check
set's sequence compresses it (the search's 3,000 calibration digits, sequential, distilled, codebooks tuned). Prints
each fit's held-back output error (start -> best), steps, step kept, and its wall and CPU seconds. Only calibration
digits are used (the fits' held-back quarter is theirs); nothing reads the evaluation digits.
Usage: PYTHONPATH=. python bench/fit_speed.py REPORT.json [--plain] [--shared-rate LR] [--rate LR]
  --plain: the codebook fit without LookupProducts (every step decodes the first layer and multiplies by it)
  --shared-rate / --rate: Adam's step for fit_shared / fit (default: distillation.LEARNING_RATE)"""
import argparse, json, tempfile, time
import numpy as np
from onnxcomp.core import distillation
from onnxcomp.pipeline import autotune
from onnxcomp.pipeline.compression import compress

parser = argparse.ArgumentParser()
parser.add_argument("report")
parser.add_argument("--plain", action="store_true")
parser.add_argument("--rate", type=float)
parser.add_argument("--shared-rate", type=float)
args = parser.parse_args()
if args.plain:
    distillation.LOOKUP_BYTES = 0
settings = json.load(open(args.report))["budget"]["settings"]
calib = np.load("models/mnist_calib.npz")
fit_rows, hold_rows, _ = autotune.budget_split(4000, 1000, 1000, 0)
searched = {"input": calib["input"][np.sort(np.concatenate([fit_rows, hold_rows]))]}


def timed(name, function, rate):
    def run(*positional, **options):
        if rate is not None:
            options["learning_rate"] = rate
        wall, cpu = time.perf_counter(), time.process_time()
        result = function(*positional, **options)
        print(f"{name}: held-back error {result.start_error:.6g} -> {result.best_error:.6g} (step {result.best_step} "
              f"of {result.steps}), {time.perf_counter() - wall:.1f} s wall, {time.process_time() - cpu:.1f} s CPU", flush=True)
        return result
    return run


distillation.fit = timed("fit (distillation)", distillation.fit, args.rate)
distillation.fit_shared = timed("fit_shared (codebooks)", distillation.fit_shared, args.shared_rate)
with tempfile.TemporaryDirectory() as folder:
    report = compress("models/lenet300_mnist.onnx", folder + "/out.onnx", calib=searched, prune="activation",
                      score="wanda", min_elements=1, settings=settings, float16_others=True, sequential=True, fidelity=False)
    print(f"written: {report.output_bytes} bytes")
