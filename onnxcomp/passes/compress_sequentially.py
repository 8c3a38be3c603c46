"""CompressSequentiallyPass: prune, reconstruct and share one layer at a time, in graph order, so that each
layer is fit to inputs that already carry the upstream layers' compression error.

For layer l with inputs X_c (upstream layers compressed) and X_o (original model), the reconstruction then
minimises ``||X_c v - X_o w||^2`` (onnxcomp/reconstruction.py, cross terms X_c^T X_o and X_o^T X_o): each
layer also absorbs part of the error introduced before it. The other passes do the per-layer work; this pass
only orders it and gathers each layer's statistics.

The statistics come from one walk through the main graph in its (topological) order (``_Frontier``): for each
layer, only the nodes its input needs that have not run yet are run, over all calibration batches, once with the
weights compressed so far and once with the original weights; their outputs that later nodes or layers read are
kept (per batch, for both models) until the last node or layer reading them has run, then dropped. A node runs
for good only when every weight it reads is final (compressed, or not compressed at all): the values it yields
are then the ones the whole compressed model computes. The walk goes batch by batch: for each batch it runs the
layer's nodes in both models, observes the layer's input and updates that batch's frontier (the kept values), so
one batch's new values are alive at a time; the frontiers of all batches are kept in memory up to
``FRONTIER_BYTES`` (both models together), each further batch's in a temporary folder (``BatchStore``: numpy's
``.npy`` files, read back as the same bytes; removed when the pass ends, on an error or SIGTERM too). The output is
the same bytes wherever the frontier is kept (tests/test_calibration_memory.py). A node that reads a weight not compressed yet (a layer
whose observed input comes after its own first use) is run for that one layer and again later. Each node so runs
about twice in all, not twice per layer (docs/benchmarks.md, the seqcal section); the statistics are the ones
whole-model probes give (same nodes, same kernels, same batches: tests/test_calibration.py compares them).

With ``reuse`` (a dict the caller keeps between runs on the same model, data and options, e.g. the budget's check
set testing allocations that differ in a few weights' settings), a layer's statistics are taken from the last run
when the walk up to its input ran the same segments (nodes and outputs asked: what onnxruntime computes) and every
layer compressed before it had the same settings (so the same values: each layer's result depends only on its
statistics and settings), and its X_o^T X_o (the original model's rows) when the walk alone was the same. The walk
still runs every node as without ``reuse``, so the layers after the first changed one see the values a run without
it computes: the outputs are the same bytes (tests/test_calibration.py). ``reuse["reused"]`` counts, after a run,
the layers whose statistics, and those whose X_o^T X_o only, came from the last run.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from onnxcomp import progress
from onnxcomp.passes.calibration import (BatchStore, LayerInput, LayerStatistics, Segment, _Declared, _DeclaredSession, _observe,
                                         _segment_model, _session, accepted_batch, bounded_batch, collect, count_samples,
                                         names_read, sample_axes, take_samples)

FRONTIER_BYTES = 1 << 30  # frontier values (both models, all batches) one walk keeps in memory at most; the rest on disk

from .base import CompressionState, GraphPass, PassResult, log
from .calibrate_weights import layer_input
from .prune_weights import PruneWeightsPass
from .share_weights import ShareWeightsPass


class CompressSequentiallyPass(GraphPass):
    """``walk=False`` gathers the statistics by probing both models whole for each layer (WholeModelProbes), as
    before branch seqcal: the reference the tests and bench/sequential_speed.py compare the walk with. ``distill``
    (a DistillWeightsPass) distils a fully connected chain between a pruning walk and a sharing walk (run); ``tune``
    (a TuneCodebooksPass reading that distillation's context) then fine-tunes the shared codebooks."""

    def __init__(self, *, data: dict[str, np.ndarray], steps: list[GraphPass], batch: int = 64, threshold: float = 0.0,
                 walk: bool = True, reuse: dict | None = None, frontier_bytes: int = FRONTIER_BYTES,
                 distill: GraphPass | None = None, tune: GraphPass | None = None) -> None:
        self.data, self.steps, self.batch, self.threshold, self.walk = data, list(steps), batch, threshold, walk
        self.frontier_bytes = frontier_bytes
        self.reuse = reuse if walk else None
        self.distill, self.tune = distill, tune

    def run(self, state: CompressionState) -> PassResult:
        targets = [t for t in state.targets if t.codebook is None]
        if not targets:
            return PassResult(False, "nothing to compress")
        original = gs.export_onnx(state.graph.copy())
        if self.distill is None or self.distill.refusal(original) is not None:
            self._walk(state, targets, self.steps, self.reuse, original)
            return PassResult(False, f"compressed {len(targets)} layers in graph order")
        # Distillation (DistillWeightsPass): every layer pruned and refit first (a walk without sharing, the pruned
        # float weights written for the next layers' inputs), then all of them fit to the original's outputs, then a
        # second walk shares each layer, fit to the distilled model's layer outputs. The statistics of the first walk
        # depend on the settings of the layers before (reused as without distillation); those of the second on every
        # layer's (the distilled values), so it reuses nothing.
        sharing = [step for step in self.steps if isinstance(step, ShareWeightsPass)]
        pruning = [step for step in self.steps if not isinstance(step, ShareWeightsPass)]
        self._walk(state, targets, pruning, None if self.reuse is None else self.reuse.setdefault("pruned", {}), original,
                   final=False, label="sequential pruning")
        distilled = self.distill(state)
        self._walk(state, targets, [s for s in pruning if not isinstance(s, PruneWeightsPass)] + sharing, None,
                   gs.export_onnx(state.graph.copy()))
        message = distilled.message
        if self.tune is not None:  # the shared codebooks fit to the original's outputs (TuneCodebooksPass)
            message += f"; {self.tune(state).message}"
        return PassResult(False, f"compressed {len(targets)} layers in graph order ({message})")

    def _walk(self, state: CompressionState, targets: list, steps: list[GraphPass], reuse: dict | None,
              original: onnx.ModelProto, final: bool = True, label: str = "sequential layers") -> None:
        """Run ``steps`` on each target in graph order, each on its sequential statistics (the module docstring), the
        cross terms against ``original`` (state.graph exported). ``final``: the steps share the weights (the
        compressed model then holds the decoded ones), else they leave them pruned and refit in float (the compressed
        model holds those)."""
        position = {id(node): i for i, node in enumerate(state.graph.nodes)}  # the exported graph's order
        targets.sort(key=lambda t: min(position.get(id(node), 0) for node, _ in t.uses))
        compressed = onnx.ModelProto()
        compressed.CopyFrom(original)
        initializers = {t.name: t for t in compressed.graph.initializer}
        main_nodes = {id(node) for node in state.graph.nodes}  # a tensor inside an If/Loop/Scan body is no graph output
        for target in targets:
            target.layer_input = layer_input(target, main_nodes)
        frontier = self._frontier(original, compressed, targets, initializers)
        if reuse is not None:  # the last run's entries (looked up) and this run's (kept for the next)
            reuse.update(last=reuse.get("next", {}), original=reuse.get("next_original", {}), next={}, next_original={})
        prefix: list[tuple] = []  # the settings of the layers compressed so far, in order
        try:
            for target in progress.track(targets, label):
                with progress.silenced():  # one bar for the layers, not one per layer's steps
                    if target.layer_input is not None:
                        target.statistics = self._statistics(frontier, reuse, tuple(prefix), target)
                    single = CompressionState(state.graph, [target])
                    for step in steps:
                        step(single)
                if target.name in initializers:
                    initializers[target.name].CopyFrom(numpy_helper.from_array(
                        target.decoded() if final else _pruned_values(target), target.name))
                frontier.finished(target.name)
                prefix.append(_settings_of(target))
        finally:
            frontier.close()
        if reuse is not None:
            reuse.update(last={}, original={}, reused=(frontier.reused, frontier.reused_original))

    def _statistics(self, frontier, reuse: dict | None, prefix: tuple, target):
        """The layer's statistics: from the last run when its walk so far and the layers compressed before it were
        the same, else observed (with X_o^T X_o from the last run when its walk so far was the same)."""
        if reuse is None:
            return frontier.statistics(target.name, target.layer_input)
        found = {}

        def lookup(walk: tuple):
            found["walk"] = walk
            known = reuse["last"].get((target.name, walk, prefix))
            if known is None:  # no later layer can match either (its key extends this one's): forget the last run's
                reuse["last"] = {}
            return known, reuse["original"].get((target.name, walk))

        statistics = frontier.statistics(target.name, target.layer_input, lookup=lookup)
        if "walk" in found:
            reuse["next"][(target.name, found["walk"], prefix)] = statistics
            if statistics is not None and statistics.gram_original is not None:
                reuse["next_original"][(target.name, found["walk"])] = statistics.gram_original
        return statistics

    def _frontier(self, original, compressed, targets, initializers):
        if not self.walk:
            return WholeModelProbes(original, compressed, self.data, batch=self.batch, threshold=self.threshold)
        return _Frontier(original, compressed, self.data, [t.layer_input for t in targets],
                         {t.name for t in targets if t.name in initializers}, batch=self.batch, threshold=self.threshold,
                         frontier_bytes=self.frontier_bytes)


class WholeModelProbes:
    """Each layer's sequential statistics from two probes (calibration.collect with ``original``): the compressed
    model so far and the original, each run from the graph inputs to the layer's input."""

    def __init__(self, original: onnx.ModelProto, compressed: onnx.ModelProto, data: dict[str, np.ndarray], *,
                 batch: int, threshold: float) -> None:
        self.original, self.compressed, self.data, self.batch, self.threshold = original, compressed, data, batch, threshold
        from onnxcomp.pipeline.evaluate import model_specs
        specs = model_specs(original)
        feeds = {name: data[name] for name, _, _ in specs if name in data}
        self.batch = bounded_batch(original, feeds, sample_axes(specs), batch)  # the walk's batches (_Frontier)

    def statistics(self, layer: str, spec: LayerInput) -> LayerStatistics:
        return collect(self.compressed, {layer: spec}, self.data, batch=self.batch, threshold=self.threshold,
                       original=self.original)[layer]

    def finished(self, weight: str) -> None:
        pass

    def close(self) -> None:
        pass


class _Frontier:
    """The walk through the main graph that gives each layer's sequential statistics (module docstring).

    ``compressed`` is the model whose initializers the caller overwrites as layers are compressed; ``pending`` are
    the initializers that will still change (they leave it through ``finished``); ``inputs`` are the layers' inputs
    in the order they will be asked for (None for a layer without one)."""

    def __init__(self, original: onnx.ModelProto, compressed: onnx.ModelProto, data: dict[str, np.ndarray],
                 inputs: list[LayerInput | None], pending: set[str], *, batch: int, threshold: float,
                 frontier_bytes: int = FRONTIER_BYTES) -> None:
        from onnxcomp.pipeline.evaluate import model_specs
        self.original, self.compressed, self.data = original, compressed, data
        self.batch, self.threshold = batch, threshold
        self.pending = set(pending)
        graph = original.graph
        self.reads = [names_read(node) - {""} for node in graph.node]
        self.producer = {name: i for i, node in enumerate(graph.node) for name in node.output if name}
        self.initializer_names = {t.name for t in graph.initializer}
        self.waiting = [spec.tensor for spec in inputs if spec is not None]  # layer inputs still to be asked for, in order
        self.unrun = set(range(len(graph.node)))
        declared = [_Declared(name, shape) for name, shape, _ in model_specs(original) if name in data]
        self.axes = sample_axes(declared)
        feeds = {d.name: data[d.name] for d in declared}
        total = count_samples(feeds, self.axes)
        size = accepted_batch(_DeclaredSession(declared), batch, total, set(data))
        # fewer samples when one batch's values would be too many (calibration.bounded_batch); each session runs one
        # segment of the walk, the two models' values together those of two segments, counted as one whole run
        size = bounded_batch(original, feeds, self.axes, size)
        self.feeds = [take_samples(feeds, slice(start, start + size), self.axes) for start in range(0, total, size)]
        self.samples = [count_samples(f, self.axes) for f in self.feeds]
        # outputs of nodes run for good, per batch, in the compressed and in the original model
        self.kept = BatchStore(len(self.feeds), frontier_bytes // 2)
        self.kept_original = BatchStore(len(self.feeds), frontier_bytes // 2)
        self.walk: list[tuple] = []  # (nodes, outputs) of every segment run so far, in order
        self.reused = self.reused_original = 0  # layers whose statistics / X_o^T X_o a lookup gave

    def statistics(self, layer: str, spec: LayerInput, lookup=None) -> LayerStatistics:
        """The statistics of ``layer`` (input ``spec``) with the cross terms against the original model's inputs.

        ``lookup(walk)`` (optional) is called before the layer's nodes run, with ``walk``, every segment the walk
        has run so far and this one (nodes and outputs asked, in order; what its values depend on besides the
        weights), and
        returns (the layer's statistics, or None, its X_o^T X_o, or None) as an earlier walk left them: known
        statistics are returned as they are, a known X_o^T X_o is taken instead of summed."""
        if self.waiting and self.waiting[0] == spec.tensor:
            self.waiting.pop(0)
        tensor = spec.tensor
        if tensor not in self.producer and tensor not in self.feeds[0]:  # an initializer or an odd input: probe whole
            return WholeModelProbes(self.original, self.compressed, self.data, batch=self.batch,
                                    threshold=self.threshold).statistics(layer, spec)
        nodes = self._unrun_ancestors(tensor)
        final = self._final(nodes)
        later = self._read_later(set(final))
        outputs = [tensor] if tensor in self.producer and self.producer[tensor] in nodes else []
        outputs += [out for i in final for out in self.original.graph.node[i].output
                    if out and out in later and out not in outputs]
        walk = (*self.walk, (tuple(nodes), tuple(outputs)))
        known, gram_original = lookup(walk) if lookup is not None else (None, None)
        self.walk.append(walk[-1])
        self.reused += known is not None
        self.reused_original += known is None and gram_original is not None
        stats: dict[str, LayerStatistics] = {} if known is None else {layer: known}
        kept_outputs = [out for out in outputs if out in later and self.producer[out] in final]
        for b, feeds, values, values_original in self._run(nodes, outputs):
            kept, kept_original = self.kept.get(b), self.kept_original.get(b)
            if known is None:
                _observe(stats, {layer: spec}, {**feeds, **kept, **values}, count_samples(feeds, self.axes), self.threshold,
                         True, {}, {**feeds, **kept_original, **values_original}, original_gram=gram_original is None,
                         total=sum(self.samples))
            # what later nodes and layers read: this batch's frontier, stored (in memory or on disk) until then
            self.kept.put(b, {n: v for n, v in {**kept, **{out: values[out] for out in kept_outputs}}.items() if n in later})
            self.kept_original.put(b, {n: v for n, v in {**kept_original, **{out: values_original[out] for out in kept_outputs}}.items()
                                       if n in later})
            del kept, kept_original, values, values_original
        if known is None and gram_original is not None and stats[layer].cross is not None:
            stats[layer].gram_original = gram_original
        self.unrun -= set(final)
        return stats[layer]

    def finished(self, weight: str) -> None:
        """``weight`` has its final value in the compressed model."""
        self.pending.discard(weight)

    def _unrun_ancestors(self, tensor: str) -> list[int]:
        """The nodes not run for good that ``tensor`` depends on, in graph order."""
        keep, todo = set(), [self.producer[tensor]] if tensor in self.producer else []
        while todo:
            index = todo.pop()
            if index in keep or index not in self.unrun:
                continue
            keep.add(index)
            todo += [self.producer[name] for name in self.reads[index] if name in self.producer]
        return sorted(keep)

    def _final(self, nodes: list[int]) -> list[int]:
        """Those of ``nodes`` (in graph order) that read no weight still to change, directly or through a node
        among ``nodes`` that does: their outputs are the compressed model's for good."""
        provisional: set[str] = set()
        final = []
        for i in nodes:
            if self.reads[i] & self.pending or self.reads[i] & provisional:
                provisional.update(out for out in self.original.graph.node[i].output if out)
            else:
                final.append(i)
        return final

    def _read_later(self, running: set[int]) -> set[str]:
        """The values a node that stays unrun after ``running``, or a layer still to come, reads."""
        names = set(self.waiting)
        for i in self.unrun - running:
            names |= self.reads[i]
        return names

    def _run(self, nodes: list[int], outputs: list[str]):
        """Yield, batch by batch, (batch index, its feeds, ``outputs`` of ``nodes`` in the compressed model, the same
        in the original model): one batch's values at a time."""
        if not nodes:
            for b, feeds in enumerate(self.feeds):
                yield b, feeds, {}, {}
            return
        graph = self.original.graph
        read = set().union(*(self.reads[i] for i in nodes))
        made = {out for i in nodes for out in graph.node[i].output if out}
        carried = sorted(n for n in read if n in self.producer and n not in made)
        segment = Segment(nodes, carried, outputs, sorted(n for n in read if n in self.initializer_names and n not in made))
        types = self.kept.types()  # the carried values' dtypes (the same in both models)
        sessions = [_session(_segment_model(model, segment, types)) for model in (self.compressed, self.original)]
        wanted = [{i.name for i in session.get_inputs()} for session in sessions]
        names = [[o.name for o in session.get_outputs()] for session in sessions]
        for b, feeds in enumerate(self.feeds):
            runs = []
            for session, reads, outs, kept in zip(sessions, wanted, names, (self.kept, self.kept_original)):
                run_feeds = {n: v for n, v in {**feeds, **kept.get(b)}.items() if n in reads}
                runs.append(dict(zip(outs, session.run(None, run_feeds))))
                del run_feeds
            yield b, feeds, runs[0], runs[1]
        del sessions

    def close(self) -> None:
        """Remove the frontier's files on disk (BatchStore.close)."""
        if self.kept.spilled or self.kept_original.spilled:
            log.info("sequential walk: %d batches of %d samples at most; frontier values written to disk %d times "
                     "(above %d bytes in memory)", len(self.feeds), max(self.samples), self.kept.spilled + self.kept_original.spilled,
                     2 * self.kept.limit)
        self.kept.close()
        self.kept_original.close()


def _pruned_values(target) -> np.ndarray:
    """A target's pruned (and refit) float32 values in its shape, 0 where pruned."""
    values = np.asarray(target.values, dtype=np.float32).reshape(target.shape)
    return values if target.keep is None else np.where(target.keep.reshape(target.shape), values, np.float32(0))


def _settings_of(target) -> tuple:
    """What a layer's compressed values depend on besides its statistics and the pass's options: its name and its
    per-weight settings."""
    return (target.name, target.sparsity_override, target.bits_override, target.outliers_override,
            target.levels_override, target.alternative, target.scaled_alternative, target.codebook_size_override)
