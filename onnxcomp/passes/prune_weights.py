"""PruneWeightsPass: choose which weights become exact zeros (the math is in onnxcomp/pruning.py).

Options: ``method`` ("none", "magnitude" or "activation"), ``score`` for activation pruning ("wanda" or
"tfidf"), ``sparsity`` (fraction pruned; one float, or a mapping from weight kind to fraction), ``threshold``
("percentile": prune the lowest ``sparsity`` fraction; "sensitivity": prune scores below
``sensitivity * std``), ``scope`` ("layer" or "global"). Wanda scores are compared within each output row,
as in the Wanda paper; the other scores within the layer or globally. ``rules`` (onnxcomp.recipes.LayerRule)
override the sparsity and the score ("magnitude", "wanda", "tfidf") of the weights whose names they match.
It sets each target's keep mask.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from onnxcomp import parallel
from onnxcomp.core import obs, pruning
from onnxcomp.passes.calibration import GRAM_LIMIT, from_rows, to_rows
from onnxcomp.errors import InvalidOptionError
from onnxcomp.core.recipes import LayerRule, rule_value

from .base import CompressionState, GraphPass, PassResult, WeightTarget, log
from .select_weights import drop_non_finite, non_finite_reason

METHODS = ("none", "magnitude", "activation")
SCORES = ("wanda", "tfidf", "obs")
SCOPES = ("layer", "global")
THRESHOLDS = ("percentile", "sensitivity")


def needs_gram(method: str, score: str, rules: tuple[LayerRule, ...] = ()) -> bool:
    """Whether pruning with these options scores some layer by OBS, which needs the layers' Gram matrices."""
    return (method == "activation" and score == "obs") or any(r.score == "obs" for r in rules)


class PruneWeightsPass(GraphPass):
    def __init__(self, *, method: str = "magnitude", score: str = "wanda", sparsity: float | Mapping[str, float] = 0.5,
                 scope: str = "layer", threshold: str = "percentile", sensitivity: float = 1.0,
                 tfidf: pruning.TfidfParameters | None = None, rules: tuple[LayerRule, ...] = ()) -> None:
        for value, allowed, what in ((method, METHODS, "pruning method"), (score, SCORES, "score"),
                                     (scope, SCOPES, "pruning scope"), (threshold, THRESHOLDS, "threshold mode")):
            if value not in allowed:
                raise InvalidOptionError(f"unknown {what} {value!r}: use one of {', '.join(allowed)}")
        for value in sparsity.values() if isinstance(sparsity, Mapping) else [sparsity]:
            if not 0.0 <= value < 1.0:
                raise InvalidOptionError(f"sparsity {value} is out of range: give a fraction in [0, 1)")
        if sensitivity < 0:
            raise InvalidOptionError(f"sensitivity {sensitivity} must be >= 0")
        if scope == "global" and isinstance(sparsity, Mapping) and threshold == "percentile":
            raise InvalidOptionError("global pruning takes one sparsity for all layers")
        if scope == "global" and threshold == "percentile" and any(r.sparsity is not None for r in rules):
            raise InvalidOptionError("global pruning takes one sparsity for all layers: drop the per-layer sparsity rules")
        self.rules = tuple(rules)
        self.method, self.score, self.sparsity, self.scope = method, score, sparsity, scope
        self.threshold, self.sensitivity, self.tfidf = threshold, sensitivity, tfidf

    def sparsity_for(self, target: WeightTarget) -> float:
        """The fraction pruned: a per-weight override, a layer rule matching the name, else the kind's value."""
        if target.sparsity_override is not None:
            return target.sparsity_override
        if (value := rule_value(self.rules, target.name, "sparsity")) is not None:
            return value
        return self.sparsity.get(target.kind, 0.0) if isinstance(self.sparsity, Mapping) else self.sparsity

    def score_for(self, name: str) -> str:
        """"magnitude", "wanda", "tfidf" or "obs" for the weight ``name``."""
        return rule_value(self.rules, name, "score") or (self.score if self.method == "activation" else "magnitude")

    def scores(self, target: WeightTarget) -> np.ndarray:
        """Scores in the weight's own shape."""
        score = self.score_for(target.name)
        if score == "magnitude" or target.statistics is None:
            if score != "magnitude":
                log.info("%s: no activation statistics, scored by magnitude", target.name)
            return pruning.magnitude_score(target.values)
        layout = target.layer_input.layout
        rows = to_rows(target.values, layout)
        if score == "wanda":
            scores = pruning.wanda_score(rows, target.statistics)
        elif score == "obs" and target.statistics.gram is not None:
            scores = obs.saliency(rows, target.statistics.gram)
        elif score == "obs":
            log.warning("%s: no Gram matrix (more than %d inputs), scored by wanda instead of obs", target.name, GRAM_LIMIT)
            scores = pruning.wanda_score(rows, target.statistics)
        else:
            scores = pruning.tfidf_score(rows, target.statistics, self.tfidf)
        return from_rows(scores, layout, target.shape)

    def layer_mask(self, t: WeightTarget, values: np.ndarray | None = None) -> np.ndarray:
        """The pruning mask of one weight on its own (scope "layer"); ``values``: ``t.values`` when the caller has
        read them already."""
        if (self.score_for(t.name) == "obs" and self.threshold == "percentile" and t.statistics is not None
                and t.statistics.gram is not None):
            return self.obs_mask(t)
        if self.threshold == "percentile" and (self.score_for(t.name) == "magnitude" or t.statistics is None):
            if self.score_for(t.name) != "magnitude":
                log.info("%s: no activation statistics, scored by magnitude", t.name)
            if self.sparsity_for(t) == 0:  # nothing pruned: the mask is known without reading the weight
                return np.ones(t.shape, dtype=bool)
            return pruning.magnitude_keep_mask(t.values if values is None else values, self.sparsity_for(t))
        scores = self.scores(t)
        if self.threshold == "sensitivity":
            return pruning.sensitivity_keep_mask(scores, self.sensitivity)
        if self.score_for(t.name) == "wanda" and t.statistics is not None:
            rows = to_rows(scores, t.layer_input.layout)
            return from_rows(pruning.row_keep_mask(rows, self.sparsity_for(t)), t.layer_input.layout, t.shape)
        return pruning.keep_mask(scores, self.sparsity_for(t))

    def obs_mask(self, t: WeightTarget) -> np.ndarray:
        """OBS pruning (onnxcomp/obs.py): the mask, and the compensated weights as the target's refit."""
        layout = t.layer_input.layout
        keep, rows = obs.prune(to_rows(t.values, layout), t.statistics.gram, self.sparsity_for(t),
                                       factor=obs.cached_inverse_factor(t.statistics))
        t.refit = from_rows(rows, layout, t.shape)
        return from_rows(keep, layout, t.shape)

    def run(self, state: CompressionState) -> PassResult:
        targets = [t for t in state.targets if t.keep is None and t.codebook is None]
        if self.method == "none" or not targets:
            return PassResult(False, "no pruning")
        if self.scope == "layer":  # one weight's scores per thread: memory stays bounded by the largest weights
            # Magnitude masks of different weights are independent and run on every core; activation-aware
            # ones (BLAS, Gram matrices) one at a time.
            workers = None if all(self.score_for(t.name) == "magnitude" or t.statistics is None for t in targets) else 1
            for target, keep in zip(targets, parallel.ordered_map(self.layer_mask, targets, workers)):
                target.keep = keep
            pruned = sum(t.size - int(t.keep.sum()) for t in targets)
            return PassResult(pruned > 0, f"pruned {pruned} weights in {len(targets)} tensors")
        scores = {t.name: self.scores(t) for t in targets}  # global: every layer's scores are ranked together
        for target in [t for t in targets if not t.checked]:  # streamed, first read: NaN/Inf must not enter the ranking
            reason = non_finite_reason(scores[target.name])  # (a magnitude is finite exactly when its weight is)
            if reason:
                drop_non_finite(state, target, reason)
                targets.remove(target)
                del scores[target.name]
            else:
                target.checked = True
        if self.threshold == "sensitivity":
            sigma = float(np.std(np.concatenate([s.ravel() for s in scores.values()])))
            masks = {name: s >= self.sensitivity * sigma for name, s in scores.items()}
        else:
            masks = pruning.global_keep_masks(scores, self.sparsity)
        for target in targets:
            target.keep = masks[target.name]
        pruned = sum(t.size - int(t.keep.sum()) for t in targets)
        return PassResult(pruned > 0, f"pruned {pruned} weights in {len(targets)} tensors")
