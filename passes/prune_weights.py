"""PruneWeightsPass: choose which weights become exact zeros (see onnxcomp/pruning.py for the math).

Options: ``method`` ("none" or a score name in ``onnxcomp.pruning.SCORES``), ``sparsity`` (fraction pruned;
a float for all layers, or a mapping from weight kind to fraction), ``scope`` ("layer" or "global").
It sets each target's keep mask; weights are rewritten later by the share pass.
"""

from __future__ import annotations

from collections.abc import Mapping

from onnxcomp import pruning
from onnxcomp.errors import InvalidOptionError

from .base import CompressionState, GraphPass, PassResult

SCOPES = ("layer", "global")


class PruneWeightsPass(GraphPass):
    def __init__(self, *, method: str = "magnitude", sparsity: float | Mapping[str, float] = 0.5, scope: str = "layer") -> None:
        if method != "none" and method not in pruning.SCORES:
            raise InvalidOptionError(f"unknown pruning method {method!r}: use none or {', '.join(pruning.SCORES)}")
        if scope not in SCOPES:
            raise InvalidOptionError(f"unknown pruning scope {scope!r}: use layer or global")
        values = sparsity.values() if isinstance(sparsity, Mapping) else [sparsity]
        for value in values:
            if not 0.0 <= value < 1.0:
                raise InvalidOptionError(f"sparsity {value} is out of range: give a fraction in [0, 1)")
        self.method, self.sparsity, self.scope = method, sparsity, scope

    def sparsity_for(self, kind: str) -> float:
        return self.sparsity.get(kind, 0.0) if isinstance(self.sparsity, Mapping) else self.sparsity

    def run(self, state: CompressionState) -> PassResult:
        targets = [t for t in state.targets if t.keep is None and t.codebook is None]
        if self.method == "none" or not targets:
            return PassResult(False, "no pruning")
        score = pruning.SCORES[self.method]
        if self.scope == "global":
            if isinstance(self.sparsity, Mapping):
                raise InvalidOptionError("global pruning takes one sparsity for all layers")
            masks = pruning.global_keep_masks({t.name: score(t.values) for t in targets}, self.sparsity)
            for target in targets:
                target.keep = masks[target.name]
        else:
            for target in targets:
                target.keep = pruning.keep_mask(score(target.values), self.sparsity_for(target.kind))
        pruned = sum(t.size - int(t.keep.sum()) for t in targets)
        return PassResult(pruned > 0, f"pruned {pruned} weights in {len(targets)} tensors")
