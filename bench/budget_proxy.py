"""How well the budget's per-layer proxy predicts the whole model's error (issue #16): for a few weights of the
zoo's MiniLM-L3 (prepare it with `python bench/zoo.py prepare --models minilm-l3`), every (sparsity, bits) trial
is compressed as the sensitivity analysis compresses it (autotune._pruned with the conjugate-gradient refit,
autotune._shared), its layer error eps on the 64 fit sentences computed (autotune._Proxy.layer_error) and the
model's error measured end to end in onnxruntime on the 32 held-back sentences (the sentence embedding, output
"461", in the budget's metric). The proxy predicts alpha * eps^p with alpha the geometric mean of m / eps^p over
its first ANCHORS measured trials (as autotune._Proxy does before the spot checks add anchors); printed: each
trial's measured and predicted error and their ratio, then the median and the range of predicted / measured
over the trials the proxy would predict (errors above 1e-6, the proxy's noise floor).
Usage:
    python bench/budget_proxy.py [WEIGHT_SUBSTRING ...] [--metric cosine] [--bits 2 3 4 5 6 8]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.core import budget as budget_math
from onnxcomp.passes import CalibrateWeightsPass, CompressionState, SelectWeightsPass, model_io
from onnxcomp.passes.calibration import run_batched, sample_axes, take_samples
from onnxcomp.pipeline import autotune
from onnxcomp.pipeline.evaluate import load_calibration, model_specs

ZOO = Path(os.environ.get("ONNXCOMP_ZOO_CACHE", Path.home() / ".cache" / "onnxcomp-zoo")).expanduser() / "models" / "minilm-l3"
EMBEDDING = "461"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", nargs="*", default=["MatMul_470", "MatMul_482"], help="substrings of weight names")
    parser.add_argument("--metric", default="cosine")
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 5, 6, 8])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7, 0.85, 0.93])
    args = parser.parse_args()
    model = model_io.load_model(str(ZOO / "model.onnx"))
    kept = next(o for o in model.graph.output if o.name == EMBEDDING)
    del model.graph.output[:]
    model.graph.output.append(kept)
    model_io.constants_to_initializers(model.graph)
    data = load_calibration(str(ZOO / "calib.npz"), model, None, 0)
    axes = sample_axes(model_specs(model))
    fit_rows, hold_rows, _ = autotune.budget_split(len(data["input_ids"]), 32, 32, 0)
    fit, hold = take_samples(data, fit_rows, axes), take_samples(data, hold_rows, axes)
    reference = run_batched(autotune._session(model), hold)[0]
    state = CompressionState(gs.import_onnx(model))
    SelectWeightsPass(min_elements=1024)(state)
    CalibrateWeightsPass(data=fit, keep_gram=True)(state)
    options = dict(prune="magnitude", score="wanda", reconstruct=True, ridge=1e-2, init="quantile", seed=0,
                   rounding="obs", outliers="auto")
    summary = []
    for wanted in args.weights:
        target = next(t for t in state.targets if wanted in t.name)
        target.statistics.factor_cache = {}
        session = autotune._session(autotune._weight_as_input(model, target.name), 1)
        proxy = autotune._Proxy(target, args.metric)
        rows = []
        for sparsity in args.sparsities:
            pruned = autotune._pruned(target, sparsity, options, iterations=autotune.CG_ITERATIONS)
            for bits in args.bits:
                values = autotune._shared(pruned, bits, options).decoded()
                eps = proxy.layer_error(values)
                output = run_batched(session, hold, extra={target.name: values.astype(np.float32)})[0]
                rows.append((sparsity, bits, eps, budget_math.error(args.metric, reference, output, None)))
        power = proxy.power
        usable = [(e, m) for _, _, e, m in rows if e > 0 and m > autotune.NOISE]
        alpha = float(np.exp(np.mean([np.log(m / e ** power) for e, m in usable[:autotune.ANCHORS]])))
        print(f"{target.name} {target.shape}: alpha {alpha:.4g} from its first {autotune.ANCHORS} trials")
        ratios = []
        for sparsity, bits, eps, measured in rows:
            predicted = alpha * eps ** power
            ratio = predicted / measured if measured > autotune.NOISE else float("nan")
            if measured > autotune.NOISE:
                ratios.append(ratio)
            print(f"  sparsity {sparsity:.2f} bits {bits}: eps {eps:.4g} measured {measured:.4g} predicted {predicted:.4g} "
                  f"ratio {ratio:.3f}")
        ratios = np.array(ratios)
        line = (f"{target.name}: {len(ratios)} trials, predicted / measured median {np.median(ratios):.3f}, "
                f"range {ratios.min():.3f}-{ratios.max():.3f}, within 1.5x: {np.mean((ratios > 1 / 1.5) & (ratios < 1.5)):.0%}")
        summary.append(line)
    print("\n".join(summary))


if __name__ == "__main__":
    main()
