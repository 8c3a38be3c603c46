"""AllocateShareWeightsPass: the data-free allocation, magnitude pruning and sharing of each weight in one chain.

The defaults' path runs AllocateWeightsPass, PruneWeightsPass (by layer) and ShareWeightsPass one after the other,
each over every weight on the cores. Each of those steps is independent per weight, and the allocation costs about
the same for every weight (a 2^18-value sample), so with three weights on two cores a core idles for a third of the
allocation, and the largest weight's sharing cannot start before the last weight is allocated. Here each weight
goes through the three steps on one worker thread (largest first, each started as soon as a worker is free:
parallel.completed_map), so the next weight's allocation fills the time a core would idle. What touches the state
(the allocator cache, weights dropped or left dense, the choices and their log lines, weights with values that are
not finite) is applied afterwards on the caller's thread in the targets' order, as the three passes apply it: the
output is byte-identical to theirs (tests/test_fast_paths.py compares both on one and two threads).

Used only where the three passes would run each weight on its own (no calibration data, pruning by layer):
onnxcomp/pipeline/compression.py (build_pipeline, PIPELINED).
"""

from __future__ import annotations

from onnxcomp import parallel, progress

from .allocate_weights import AllocateWeightsPass
from .base import CompressionState, GraphPass, PassResult
from .prune_weights import PruneWeightsPass
from .select_weights import drop_non_finite
from .share_weights import ShareWeightsPass


# A weight's freed arrays returned to the system as soon as its chain ends, for weights of at least TRIM_ELEMENTS
# values (glibc keeps arrays below its mmap threshold, which rises to 32 MiB, in the worker thread's arena, under
# the peak of the weights that follow; the next weight's arrays then fault in fresh pages, so small weights, whose
# arrays matter little, are not trimmed: docs/benchmarks.md, branch names8).
TRIM_EACH = True
TRIM_ELEMENTS = 1 << 20


class AllocateShareWeightsPass(GraphPass):
    def __init__(self, allocate: AllocateWeightsPass, prune: PruneWeightsPass, share: ShareWeightsPass) -> None:
        if prune.scope != "layer":
            raise ValueError("AllocateShareWeightsPass prunes each weight on its own: it needs scope 'layer'")
        self.allocate, self.prune, self.share = allocate, prune, share
        self.steps = [allocate, prune, share]

    def run(self, state: CompressionState) -> PassResult:
        targets = list(state.targets)
        allocated = {id(t) for t in self.allocate.targets(state)}
        share = self.share.sharer(state, bool(targets))
        prune = self.prune.method != "none"

        def chain(i: int):  # one weight's allocation, mask and codebook, on a worker thread
            # The weight is read once for the allocation, its mask and its sharing (each read of a weight held in
            # the model copies its bytes: ~45 ms for a fresh 64 MB here, most of it the first touch of the pages).
            target, measured, values = targets[i], None, None
            if id(target) in allocated:
                if self.allocate.cache.get(target.name) is None and target.refit is None and target.codebook is None:
                    values = target.original  # (an allocator cached from an earlier round reads nothing)
                measured = self.allocate.measure(target, values)
                if not self.allocate.configure(target, measured):
                    return measured, None  # dropped or left dense: record() says which
            if target.codebook is not None:
                return measured, None
            if values is None and target.refit is None:
                values = target.original
            if prune and target.keep is None:
                target.keep = self.prune.layer_mask(target, values)
            shared = share(target, values)
            del values
            if TRIM_EACH and target.size >= TRIM_ELEMENTS:  # its freed arrays, back before the next weight's are made
                parallel.release_free_memory()
            return measured, shared

        by_size = sorted(range(len(targets)), key=lambda i: -targets[i].size)
        finished = dict(progress.track(parallel.completed_map(chain, by_size), "k-means codebooks", total=len(targets)))
        for i, target in enumerate(targets):  # the allocation's bookkeeping, in order (its skips come first)
            if id(target) in allocated:
                self.allocate.record(state, target, finished[i][0])
        for i, target in enumerate(targets):
            if finished[i][1]:
                drop_non_finite(state, target, finished[i][1])
        return PassResult(bool(targets), f"allocated, pruned and shared {len(targets)} tensors")
