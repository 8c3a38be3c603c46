"""CalibrateWeightsPass: observe each selected weight's input activations on calibration data.

It finds, for every target, the tensor entering its layer (MatMul with the weight on the right, Gemm with
transA=0, 2-D Conv with group 1), runs the still-uncompressed graph in onnxruntime with those tensors as
extra outputs, and stores per-layer statistics (see onnxcomp/calibration.py). Only uses in the main graph
count: a tensor inside an If/Loop/Scan body cannot be made a graph output. Targets with no such use keep
no statistics, and activation-aware steps fall back to magnitude for them, with a log line saying why.

With ``steps`` (the per-layer passes: pruning with scope "layer", reconstruction, sharing), each group of
targets is compressed as soon as its statistics are complete (calibration.collect_segments: after the segment of
the graph that produces its input) and its statistics dropped, so a model streamed from external data holds one
segment's weights or one group's statistics at a time; the targets without statistics go last. Each target's
result is the same as with the passes run after the calibration (they are per-weight).
"""

from __future__ import annotations

import contextlib

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp import progress
from onnxcomp.passes.calibration import SEGMENT_BYTES, LayerInput, collect_segments

from .base import CompressionState, ExternalValues, GraphPass, PassResult, WeightTarget, log
from .names import all_graphs


def layer_input(target: WeightTarget, main_nodes: set[int] | None = None) -> LayerInput | None:
    for node, slot in target.uses:
        if slot != 1 or len(target.shape) < 2 or (main_nodes is not None and id(node) not in main_nodes):
            continue
        if node.op == "MatMul" and len(target.shape) == 2:
            return LayerInput(node.inputs[0].name, "kn")
        if node.op == "Gemm" and node.attrs.get("transA", 0) == 0:
            return LayerInput(node.inputs[0].name, "nk" if node.attrs.get("transB", 0) else "kn")
        if node.op == "Conv" and len(target.shape) == 4 and node.attrs.get("group", 1) == 1 \
                and node.attrs.get("auto_pad", "NOTSET") in ("NOTSET", "VALID"):
            kernel = tuple(target.shape[2:])
            return LayerInput(node.inputs[0].name, "conv", kernel, tuple(node.attrs.get("strides", (1, 1))),
                              tuple(node.attrs.get("pads", (0, 0, 0, 0))), tuple(node.attrs.get("dilations", (1, 1))))
    return None


def external_initializers(graph: gs.Graph) -> tuple[dict, dict[str, int]]:
    """Readers and byte sizes, by name, of the constants whose values stay in external data files (a streamed model)."""
    readers, sizes = {}, {}
    for subgraph in all_graphs(graph):
        for tensor in subgraph.tensors().values():
            values = getattr(tensor, "_values", None)
            if isinstance(tensor, gs.Constant) and isinstance(values, ExternalValues):
                readers[tensor.name] = values.load
                count = int(np.prod(values.shape, dtype=np.int64))
                sizes[tensor.name] = values.length if values.length is not None else \
                    count * onnx.helper.tensor_dtype_to_np_dtype(values.tensor.data_type).itemsize
    return readers, sizes


class CalibrateWeightsPass(GraphPass):
    def __init__(self, *, data: dict[str, np.ndarray], batch: int = 64, threshold: float = 0.0, keep_gram: bool = True,
                 steps: list[GraphPass] | None = None) -> None:
        self.data, self.batch, self.threshold, self.keep_gram = data, batch, threshold, keep_gram
        self.steps = list(steps or [])
        self.quiet = False


    def run(self, state: CompressionState) -> PassResult:
        layers = {}
        main_nodes = {id(node) for node in state.graph.nodes}
        for target in state.targets:
            if target.statistics is not None or target.codebook is not None:
                continue
            target.layer_input = layer_input(target, main_nodes)
            if target.layer_input is None:
                log.info("%s: no MatMul/Gemm/Conv(group 1) use whose input can be observed; magnitude scores apply", target.name)
            else:
                layers[target.name] = target.layer_input
        for step in self.steps:  # the steps run on groups of targets: their preconditions hold for the whole state
            step.check(state)
        if not layers:
            self._compress(state, list(state.targets))
            return PassResult(False, "no layer to calibrate")
        model = gs.export_onnx(state.graph.copy())
        readers, sizes = external_initializers(state.graph)
        self.quiet = sum(sizes.values()) > SEGMENT_BYTES  # several groups: one progress bar, the segments'
        pending = list(state.targets)
        count = 0
        for stats in collect_segments(model, layers, self.data, batch=self.batch, threshold=self.threshold,
                                      keep_gram=self.keep_gram, externals=readers, external_bytes=sizes):
            group = [t for t in pending if t.name in stats]
            for target in group:
                target.statistics = stats[target.name]
            count += len(group)
            if self.steps and group:
                pending = [t for t in pending if t.name not in stats]
                self._compress(state, group)
                for target in group:
                    target.statistics = None  # its Gram matrix is no longer needed
        self._compress(state, pending)
        return PassResult(False, f"calibrated {count} layers on {len(next(iter(self.data.values())))} samples")

    def _compress(self, state: CompressionState, group: list[WeightTarget]) -> None:
        """Run the steps on ``group`` alone; targets they leave dense leave ``state`` too."""
        if not group or not self.steps:
            return
        part = CompressionState(state.graph, list(group), graph_inputs=state.graph_inputs)
        with progress.silenced() if self.quiet else contextlib.nullcontext():
            for step in self.steps:  # run, not called: the checks ran on the whole state
                result = step.run(part)
                log.debug("%s: modified=%s %s", type(step).__name__, result.modified, result.message)
        for target in group:
            if target not in part.targets:
                state.targets.remove(target)
        state.skipped.extend(part.skipped)
