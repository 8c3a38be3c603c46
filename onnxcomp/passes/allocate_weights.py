"""AllocateWeightsPass: per-layer sparsity and bits chosen without data (the proxy in onnxcomp/core/allocation.py).

For each selected weight without a per-weight setting already (a budget allocation, ``settings``), the pass
measures candidates' relative L2 and worst-case error on the weight itself and sets (bits, sparsity, outlier
fraction) of the smallest candidate whose proxy stays under the layer's ``scales`` entry (default 1);
a weight with no such candidate (or none smaller than float32) is left dense and listed as skipped. ``cache`` (a dict kept by the caller)
holds the candidates per weight name, so a re-run with other scales (the fidelity back-off) does not measure
again. ``limits`` (weight name -> relative L2 limit) replace L2_LIMIT per weight: the model-level budget
(onnxcomp.core.allocation.solve_budget) sets them, a limit of 0 keeping the weight dense. Each choice is kept in
``choices`` (weight name -> onnxcomp.core.allocation.Candidate).
"""

from __future__ import annotations

from onnxcomp import parallel, progress
from onnxcomp.core import allocation
from onnxcomp.core import outliers as outlier_math

from .base import CompressionState, GraphPass, PassResult, log
from .select_weights import drop_non_finite, non_finite_reason
from .share_weights import scale_axis


class AllocateWeightsPass(GraphPass):
    def __init__(self, *, scales: dict[str, float] | None = None, limits: dict[str, float] | None = None,
                 cache: dict | None = None, seed: int = 0,
                 sparsities: dict[str, tuple] | None = None, outliers: str | float = "auto", scaled: bool = True) -> None:
        self.scales = dict(scales or {})
        self.limits = dict(limits or {})
        self.cache = cache if cache is not None else {}
        self.seed = seed
        self.scaled = scaled  # channel-scaled alternatives for Conv filters (a back-off round turns them off)
        # Without data, magnitude pruning is allowed where the proxy accepts it; embeddings stay dense-valued.
        self.sparsities = sparsities or {"fc": (0.0, 0.3, 0.5), "conv": (0.0, 0.3), "embedding": (0.0,)}
        # (a sparsity whose pruning alone exceeds the relative L2 limit is never fit, so these cost little)
        self.choices: dict[str, allocation.Candidate] = {}
        # An outlier fraction given by the user is the only one considered; "auto" lets the proxy choose.
        option = outlier_math.parse_option(outliers)
        self.outliers = allocation.OUTLIERS if option == outlier_math.AUTO else (float(option),)

    def targets(self, state: CompressionState) -> list:
        """The weights this pass allocates: those without per-weight settings already."""
        return [t for t in state.targets if t.bits_override is None and t.sparsity_override is None]

    def run(self, state: CompressionState) -> PassResult:
        targets = self.targets(state)
        measured = parallel.ordered_map(self.measure, targets)
        for target, result in progress.track(zip(targets, measured), "per-layer allocation", total=len(targets)):
            self.configure(target, result)
            self.record(state, target, result)
        return PassResult(False, f"allocated {len(targets)} weights")

    def measure(self, target, values=None) -> tuple:
        """(allocator, (choice, k-means choice, scaled alternative), reason its values are not finite or None) of one
        weight. Touches nothing shared but reads of ``cache`` (runs on a worker thread: weights are independent,
        each read once, sampled, fit). ``values``: ``target.original`` when the caller has read it already."""
        allocator = self.cache.get(target.name)
        if allocator is None:
            values = target.original if values is None else values
            if not target.checked:  # a streamed weight: this is its first read
                reason = non_finite_reason(values)
                if reason:
                    return None, (None, None, None), reason
                target.checked = True
            allocator = allocation.Allocator(
                values, sparsities=self.sparsities.get(target.kind, (0.0,)), outliers=self.outliers, seed=self.seed,
                channel_axis=scale_axis(target))
            del values
        limit = self.limits.get(target.name, allocation.L2_LIMIT)
        if limit <= 0:
            return allocator, (None, None, None), None
        # A limit from the model's budget (found over the k-means candidates) may be met by a uniform codebook
        # with fewer bytes; the per-weight proxy (round 0, whose choices the measured gains refer to) takes k-means.
        scale = self.scales.get(target.name, 1.0)
        kmeans = allocator.choose(scale, 4.0 * target.size, l2_limit=limit, uniform=False)
        choice = kmeans
        if target.name in self.limits:
            choice = allocator.choose(scale, 4.0 * target.size, l2_limit=limit, families=("kmeans", "uniform"))
        if choice is not None and choice.levels and kmeans is not None and kmeans.sparsity > 0:
            choice = kmeans  # uniform codebooks are unpruned: ShareWeightsPass could not fall back to a pruned k-means
        # A channel-scaled grid smaller than the k-means codebook: ShareWeightsPass tries it beside the choice
        # (it must pass the same channel checks against k-means, so k-means stays the fallback).
        scaled = None
        if self.scaled and target.name in self.limits and kmeans is not None and kmeans.sparsity == 0:
            scaled = allocator.choose(scale, kmeans.bytes, l2_limit=limit, families=("scaled",))
        return allocator, (choice, kmeans, scaled), None

    @staticmethod
    def configure(target, result: tuple) -> bool:
        """Set ``target``'s settings from its ``measure`` result (only the target's own fields: safe on a worker
        thread); False when the weight is not to be compressed (``record`` then drops or skips it)."""
        _, (choice, kmeans, scaled), non_finite = result
        if non_finite or choice is None:
            return False
        target.sparsity_override, target.bits_override = choice.sparsity, choice.bits
        target.outliers_override = choice.outliers
        target.levels_override = choice.levels
        target.scaled_alternative = (scaled.levels, scaled.outliers) if scaled is not None else None
        # ShareWeightsPass keeps a uniform codebook (or the scaled alternative) only if its worst channel is no
        # worse than k-means' would be
        target.alternative = ((kmeans.bits, kmeans.outliers) if (choice.levels or scaled is not None)
                              and kmeans is not None else None)
        return True

    def record(self, state: CompressionState, target, result: tuple) -> None:
        """What ``measure`` found for ``target`` kept in the pass and the state, on the caller's thread in the
        targets' order (the allocator cached, the weight dropped or listed as skipped, the choice kept and logged)."""
        allocator, (choice, _, _), non_finite = result
        if non_finite:
            drop_non_finite(state, target, non_finite)
            return
        self.cache[target.name] = allocator
        if choice is None and self.limits.get(target.name, allocation.L2_LIMIT) <= 0:
            state.targets.remove(target)
            state.skipped.append((target.name, "kept dense by the model's error budget (its measured effect on the "
                                               "output makes bits there cheaper than anywhere else)"))
            return
        if choice is None:
            state.targets.remove(target)
            state.skipped.append((target.name, "no codebook keeps its predicted error under the threshold "
                                               "(worst-case or relative L2): left dense to keep the output safe"))
            return
        self.choices[target.name] = choice
        log.info("%s: %d bits%s, sparsity %.2f, outliers %.3f (relative L2 %.4f, worst-case %.4f)", target.name,
                 choice.bits, f" (uniform, {choice.levels} values)" if choice.levels else "", choice.sparsity,
                 choice.outliers, choice.relative_l2, choice.max_relative)
