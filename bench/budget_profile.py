"""Where one budget sensitivity trial spends its time (issue #16): cProfile of `autotune._pruned` and `_shared`, as
the sensitivity analysis calls them, on one weight of the zoo's MiniLM-L3 (prepare it with `python bench/zoo.py
prepare --models minilm-l3`), after the calibration pass on the 64 fit sentences.
Usage:
    python bench/budget_profile.py [WEIGHT_SUBSTRING] [--sparsity 0.5] [--bits 3 5]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
from pathlib import Path

import onnx_graphsurgeon as gs

from onnxcomp.passes import CalibrateWeightsPass, CompressionState, SelectWeightsPass, model_io
from onnxcomp.pipeline import autotune
from onnxcomp.pipeline.evaluate import load_calibration

ZOO = Path(os.environ.get("ONNXCOMP_ZOO_CACHE", Path.home() / ".cache" / "onnxcomp-zoo")).expanduser() / "models" / "minilm-l3"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weight", nargs="?", default="MatMul_482", help="a substring of the weight's name")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--bits", type=int, nargs="+", default=[3, 5])
    args = parser.parse_args()
    model = model_io.load_model(str(ZOO / "model.onnx"))
    model_io.constants_to_initializers(model.graph)
    data = load_calibration(str(ZOO / "calib.npz"), model, None, 0)
    fit_rows, _, _ = autotune.budget_split(len(data["input_ids"]), 32, 32, 0)
    state = CompressionState(gs.import_onnx(model))
    SelectWeightsPass(min_elements=1024)(state)
    CalibrateWeightsPass(data={k: v[fit_rows] for k, v in data.items()}, keep_gram=True)(state)
    options = dict(prune="magnitude", score="wanda", reconstruct=True, ridge=1e-2, init="quantile", seed=0,
                   rounding="obs", outliers="auto")
    target = next(t for t in state.targets if args.weight in t.name)
    if target.statistics is not None:
        target.statistics.factor_cache = {}  # as the sensitivity analysis keeps it per weight
    print(f"{target.name} {target.shape}")
    profile = cProfile.Profile()
    profile.enable()
    pruned = autotune._pruned(target, args.sparsity, options, iterations=autotune.CG_ITERATIONS)
    for bits in args.bits:
        autotune._shared(pruned, bits, options)
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
