"""ShareWeightsPass: per-layer k-means codebooks (see onnxcomp/core/codebook.py for the math).

Each target gets a codebook of at most 2^bits float32 values and one index per weight; pruned weights map to
index 0, whose value is exactly 0.0. ``bits`` is an int or a mapping from weight kind ("conv", "fc",
"embedding") to an int in 1..16; ``rules`` (onnxcomp.recipes.LayerRule) set the bits of the weights whose
names they match. With ``refit_codebook`` and calibration statistics, the shared values are
then refit by least squares against the dense layer's outputs (onnxcomp/reconstruction.py); with
``rounding="obs"`` (the default) the weights are first rounded to the codebook in input order, each rounding
error compensated in the inputs not yet rounded (onnxcomp/obs.py), instead of each to its nearest entry. ``encode``, if
given, is called on each target as soon as it is shared (the custom-op pipeline encodes its record there and
drops the indices), so only one weight's arrays are alive at a time.
"""

from __future__ import annotations

from collections.abc import Mapping

from onnxcomp.core import codebook as codebook_math
from onnxcomp.core import obs
from onnxcomp import progress
from onnxcomp.core import reconstruction
from onnxcomp.passes.calibration import from_rows, to_rows
from onnxcomp.errors import InvalidOptionError
from onnxcomp.core.recipes import LayerRule, rule_value

from .base import CompressionState, GraphPass, PassResult, to_element_type


ROUNDINGS = ("obs", "nearest")


class ShareWeightsPass(GraphPass):
    def __init__(self, *, bits: int | Mapping[str, int] = 5, init: str = "quantile", seed: int = 0,
                 refit_codebook: bool = False, rounding: str = "obs", rules: tuple[LayerRule, ...] = (), encode=None) -> None:
        for value in bits.values() if isinstance(bits, Mapping) else [bits]:
            if not isinstance(value, int) or not 1 <= value <= 16:
                raise InvalidOptionError(f"bits {value} is out of range: give an integer from 1 to 16")
        if init not in codebook_math.INITS:
            raise InvalidOptionError(f"unknown codebook initialisation {init!r}: use {', '.join(codebook_math.INITS)}")
        if rounding not in ROUNDINGS:
            raise InvalidOptionError(f"unknown rounding {rounding!r}: use one of {', '.join(ROUNDINGS)}")
        self.bits, self.init, self.seed, self.refit_codebook = bits, init, seed, refit_codebook
        self.rounding = rounding
        self.rules = tuple(rules)
        self.encode = encode

    def bits_for(self, target) -> int:
        """Index bits: a per-weight override (budget allocation), a layer rule matching the name, else the kind's."""
        if target.bits_override is not None:
            return target.bits_override
        if (value := rule_value(self.rules, target.name, "bits")) is not None:
            return value
        return self.bits[target.kind] if isinstance(self.bits, Mapping) else self.bits

    def run(self, state: CompressionState) -> PassResult:
        targets = [t for t in state.targets if t.codebook is None]
        for target in progress.track(targets, "k-means codebooks"):
            target.bits = self.bits_for(target)
            target.codebook, target.indices = codebook_math.quantize(
                target.values, target.keep, target.bits, self.init, self.seed)
            if self.refit_codebook and target.statistics is not None and target.statistics.gram is not None:
                layout = target.layer_input.layout
                if self.rounding == "obs":
                    keep = None if target.keep is None else to_rows(target.keep.reshape(target.shape), layout)
                    rows = obs.round_to_codebook(to_rows(target.values, layout), keep, target.codebook, target.statistics.gram)
                    nearest = to_rows(target.indices.reshape(target.shape), layout)
                    original = to_rows(target.original, layout)
                    errors = [reconstruction.row_errors(target.codebook[i], original, target.statistics.gram,
                                                        target.statistics.cross, target.statistics.gram_original).sum()
                              for i in (rows, nearest)]
                    if errors[0] < errors[1]:  # compensated rounding is kept only where it lowers the layer's error
                        target.indices = from_rows(rows, layout, target.shape).ravel()
                indices = to_rows(target.indices.reshape(target.shape), layout)
                target.codebook = reconstruction.refit_codebook(
                    to_rows(target.original, layout), indices, target.codebook, target.statistics.gram, target.keep is not None,
                    cross=target.statistics.cross, gram_original=target.statistics.gram_original)
            # A float16/bfloat16 weight is decoded to float32 and cast back: its codebook holds values of its type,
            # so every path (decode + Cast, a fused kernel after Cast, the portable lookup) computes the same numbers.
            target.codebook = to_element_type(target.codebook, target.dtype)
            if self.encode is not None:
                self.encode(target)
        return PassResult(bool(targets), f"shared {len(targets)} tensors")
