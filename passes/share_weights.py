"""ShareWeightsPass: per-layer k-means codebooks (see onnxcomp/codebook.py for the math).

Each target gets a codebook of at most 2^bits float32 values and one index per weight; pruned weights map to
index 0, whose value is exactly 0.0. ``bits`` is an int or a mapping from weight kind ("conv", "fc",
"embedding") to an int in 1..16.
"""

from __future__ import annotations

from collections.abc import Mapping

from onnxcomp import codebook as codebook_math
from onnxcomp.errors import InvalidOptionError

from .base import CompressionState, GraphPass, PassResult


class ShareWeightsPass(GraphPass):
    def __init__(self, *, bits: int | Mapping[str, int] = 5, init: str = "quantile", seed: int = 0) -> None:
        for value in bits.values() if isinstance(bits, Mapping) else [bits]:
            if not isinstance(value, int) or not 1 <= value <= 16:
                raise InvalidOptionError(f"bits {value} is out of range: give an integer from 1 to 16")
        if init not in codebook_math.INITS:
            raise InvalidOptionError(f"unknown codebook initialisation {init!r}: use {', '.join(codebook_math.INITS)}")
        self.bits, self.init, self.seed = bits, init, seed

    def bits_for(self, kind: str) -> int:
        return self.bits[kind] if isinstance(self.bits, Mapping) else self.bits

    def run(self, state: CompressionState) -> PassResult:
        targets = [t for t in state.targets if t.codebook is None]
        for target in targets:
            target.bits = self.bits_for(target.kind)
            target.codebook, target.indices = codebook_math.quantize(
                target.values, target.keep, target.bits, self.init, self.seed)
        return PassResult(bool(targets), f"shared {len(targets)} tensors")
