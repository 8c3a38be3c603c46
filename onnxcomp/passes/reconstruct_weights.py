"""ReconstructWeightsPass: refit each pruned layer's surviving weights by ridge least squares so that its
output on the calibration data stays close to the dense layer's (math in onnxcomp/reconstruction.py).
``iterations`` > 0 solves the costly ridge systems approximately by that many conjugate-gradient steps at most
(reconstruction.refit_rows: the budget's sensitivity trials); the default, 0, solves them all exactly."""

from __future__ import annotations

from onnxcomp import progress
from onnxcomp.core import reconstruction
from onnxcomp.passes.calibration import from_rows, to_rows

from .base import CompressionState, GraphPass, PassResult, log


class ReconstructWeightsPass(GraphPass):
    def __init__(self, *, ridge: float = 1e-2, iterations: int = 0) -> None:
        self.ridge = ridge
        self.iterations = iterations

    def run(self, state: CompressionState) -> PassResult:
        done = 0
        for target in progress.track(state.targets, "reconstruction"):
            if target.keep is None or target.codebook is not None:
                continue
            if target.statistics is None or target.statistics.gram is None:
                log.info("%s: no Gram matrix (no calibration use, or too many inputs); not reconstructed", target.name)
                continue
            layout = target.layer_input.layout
            rows = reconstruction.refit_rows(to_rows(target.original, layout), to_rows(target.keep, layout),
                                             target.statistics.gram, self.ridge, target.statistics.cross,
                                             target.statistics.gram_original, to_rows(target.values, layout),
                                             iterations=self.iterations)
            target.refit = from_rows(rows, layout, target.shape)
            done += 1
        return PassResult(False, f"reconstructed {done} layers")
