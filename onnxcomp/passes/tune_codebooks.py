"""TuneCodebooksPass: after the sharing walk of a distilled fully connected chain, fine-tune every layer's codebook
entries (and its outlier values, and any float bias) to the original model's outputs on the calibration inputs; the
indices, the outliers' positions and the pruned zeros do not move. The math (the centroid gradient, Deep
Compression's fine-tuning step, and the Adam fit with early stopping) is in onnxcomp/core/distillation.py
(``fit_shared``).

It runs inside CompressSequentiallyPass (``--sequential`` with distillation on, as DistillWeightsPass), last: it
takes from the DistillWeightsPass that distilled the chain its recognised layers, the original model's outputs and
the seeded split of the samples (the same held-back quarter stops both fits). Nothing else changes: a target whose
layer is not in the chain, or that has no codebook and indices (a weight left dense, a streamed one whose indices
were released) keeps its values, and so does every weight when no step lowered the held-back error.

Stored types: each tuned codebook is rounded to its weight's type (to_element_type: float32 stays, a float16 or
bfloat16 weight's codebook holds values of that type, as ShareWeightsPass leaves it), each outlier list through the
record's value format (outliers.stored_values: binary16 when it holds every value within 2^-11), and the pruned
entry 0 stays exactly +0.0 (sparse coding needs it). A float bias is written float32; the writer may store it as
binary16 as before (passes/half_dense.py: within a relative 2^-11 of each value). Each tuned target's record is
dropped and the packing pass encodes it again from the same indices: its index section, and so its size but for the
codebook and outlier values, is the same.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.core import distillation, sidecar
from onnxcomp.core import outliers as outlier_math

from .base import CompressionState, GraphPass, PassResult, WeightTarget, log, to_element_type


class TuneCodebooksPass(GraphPass):
    """Options: ``distilled`` (the DistillWeightsPass whose last run distilled this chain: its ``context``),
    ``learning_rate``, ``max_steps``, ``patience`` (onnxcomp/core/distillation.py)."""

    def __init__(self, *, distilled, learning_rate: float = distillation.LEARNING_RATE,
                 max_steps: int = distillation.MAX_STEPS, patience: int = distillation.PATIENCE) -> None:
        self.distilled = distilled
        self.learning_rate, self.max_steps, self.patience = learning_rate, max_steps, patience
        self.result: distillation.SharedFitResult | None = None  # the last run's fit

    def run(self, state: CompressionState) -> PassResult:
        context = self.distilled.context
        if context is None:
            return PassResult(False, "no distilled chain")
        chain, x, expected, fit, stop = context
        constants = {name: t for name, t in state.graph.tensors().items() if isinstance(t, gs.Constant)}
        targets = {t.name: t for t in state.targets}
        names = [name for layer in chain.layers for name in (layer.weight, layer.bias) if name in targets]
        if any(targets[name].codebook is not None and targets[name].indices is None for name in names):
            return PassResult(False, "the indices were released (a streamed model)")
        layers, weights, biases, tuned = [], [], [], []
        for layer in chain.layers:
            weight = _shared(targets.get(layer.weight), layer.transposed)
            bias = None if layer.bias is None else _shared(targets.get(layer.bias), False)
            dense = (weight.decoded(np.float64) if weight is not None else
                     _float(constants[layer.weight], targets.get(layer.weight), layer.transposed))
            bias_values = None if layer.bias is None else (
                bias.decoded(np.float64).reshape(-1) if bias is not None else
                _float(constants[layer.bias], targets.get(layer.bias), False).reshape(-1))
            # a bias that is a target without a codebook (left dense by the walk) is held, as a dense weight is
            fixed_bias = None if layer.bias is None or bias is not None or layer.bias not in targets else \
                np.zeros(len(bias_values), bool)
            layers.append(distillation.DenseLayer(dense, bias_values, layer.relu, None, fixed_bias))
            weights.append(weight)
            biases.append(bias)
            tuned += [name for name, coded in ((layer.weight, weight), (layer.bias, bias)) if coded is not None]
        if not tuned:
            return PassResult(False, "no shared layer in the chain")
        result = distillation.fit_shared(layers, weights, biases, x[fit], expected[fit], x[stop], expected[stop],
                                         learning_rate=self.learning_rate, max_steps=self.max_steps,
                                         patience=self.patience, dtype=np.float32)
        self.result = result
        log.info("codebook fine-tuning: held-back output error %.4g -> %.4g (step %d of %d; %d tensors)",
                 result.start_error, result.best_error, result.best_step, result.steps, len(tuned))
        if result.best_step == 0:
            return PassResult(False, "codebook fine-tuning lowered no held-back error")
        for layer, weight, bias in zip(chain.layers, result.weights, result.biases):
            for name, values, transposed in ((layer.weight, weight, layer.transposed), (layer.bias, bias, False)):
                if isinstance(values, distillation.SharedValues):
                    self._write_shared(targets[name], values, transposed)
                elif values is not None and name not in targets:  # a float bias
                    constants[name].values = np.ascontiguousarray(values, np.float32).reshape(tuple(constants[name].shape))
        return PassResult(True, f"tuned the codebooks of {len(tuned)} tensors: held-back error "
                                f"{result.start_error:.4g} -> {result.best_error:.4g}")

    def _write_shared(self, target: WeightTarget, values: distillation.SharedValues, transposed: bool) -> None:
        """The tuned codebook and outlier values become ``target``'s (in its stored types: module docstring); its
        record is dropped, to be encoded again."""
        codebook = to_element_type(np.asarray(values.codebook, np.float32), target.dtype)
        if values.fixed is not None:
            codebook[values.fixed] = target.codebook[values.fixed]  # exactly as they were (the pruned +0.0)
        target.codebook = codebook
        if len(target.outlier_positions):  # (in the target's order: _shared keeps it)
            target.outlier_values = to_element_type(outlier_math.stored_values(values.values), target.dtype)
        target.record = None  # the packing pass encodes it again (PackWeightsPass.encode), from the same indices
        # a target the packing pass leaves dense (a small bias added after a MatMul, a record not smaller than the
        # dense tensor) is written from its constant: the decoded values, which the fit assumed
        target.constant.values = np.ascontiguousarray(target.decoded(), np.float32).reshape(tuple(target.constant.shape))


def _chain_positions(target: WeightTarget, transposed: bool) -> np.ndarray:
    """int64 [M]: the flat position of each of ``target``'s outliers (in its order) in the chain's orientation."""
    positions = np.asarray(target.outlier_positions, np.int64)
    if not transposed:
        return positions
    rows, columns = np.divmod(positions, target.shape[1])
    return columns * target.shape[0] + rows


def _shared(target: WeightTarget | None, transposed: bool) -> distillation.SharedValues | None:
    """``target``'s codebook lookup in the chain's orientation ([outputs, inputs]: transposed from a MatMul's or
    Gemm transB = 0's [inputs, outputs]), or None when it has no codebook and indices."""
    if target is None or target.codebook is None or target.indices is None:
        return None
    shape = tuple(int(d) for d in target.shape)
    indices = np.asarray(target.indices).reshape(shape)
    scales = None
    if target.scales is not None:
        scales = sidecar.apply_scales(np.ones(int(np.prod(shape)), np.float32), shape, target.scale_axis,
                                      target.scales).reshape(shape)
    positions = _chain_positions(target, transposed)
    if transposed:
        indices = indices.T
        scales = None if scales is None else scales.T
    fixed = np.zeros(len(target.codebook), bool)
    fixed[0] = bool(np.asarray(target.codebook, np.float32)[:1].view(np.uint32)[0] == 0)  # the pruned +0.0
    return distillation.SharedValues(np.asarray(target.codebook, np.float32), np.ascontiguousarray(indices), positions,
                                     np.asarray(target.outlier_values, np.float32),
                                     None if scales is None else np.ascontiguousarray(scales), fixed)


def _float(constant: gs.Constant, target: WeightTarget | None, transposed: bool) -> np.ndarray:
    """A float tensor as the compressed model computes it (a target left uncoded: its values; else the constant's),
    float64, in the chain's orientation."""
    values = np.asarray(target.decoded() if target is not None and target.codebook is not None else constant.values,
                        np.float64)  # (a target's indices are there: TuneCodebooksPass.run checks)
    return values.T if transposed else values
