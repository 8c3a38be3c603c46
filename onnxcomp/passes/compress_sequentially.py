"""CompressSequentiallyPass: prune, reconstruct and share one layer at a time, in graph order, so that each
layer is fit to inputs that already carry the upstream layers' compression error.

For layer l with inputs X_c (upstream layers compressed) and X_o (original model), the reconstruction then
minimises ``||X_c v - X_o w||^2`` (onnxcomp/reconstruction.py, cross terms X_c^T X_o and X_o^T X_o): each
layer also absorbs part of the error introduced before it. The other passes do the per-layer work; this pass
only orders it and re-collects statistics (two onnxruntime sessions per layer over the calibration data).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from onnxcomp import progress
from onnxcomp.passes.calibration import collect

from .base import CompressionState, GraphPass, PassResult
from .calibrate_weights import layer_input


class CompressSequentiallyPass(GraphPass):
    def __init__(self, *, data: dict[str, np.ndarray], steps: list[GraphPass], batch: int = 64, threshold: float = 0.0) -> None:
        self.data, self.steps, self.batch, self.threshold = data, list(steps), batch, threshold

    def run(self, state: CompressionState) -> PassResult:
        targets = [t for t in state.targets if t.codebook is None]
        if not targets:
            return PassResult(False, "nothing to compress")
        original = gs.export_onnx(state.graph.copy())
        position = {node.name: i for i, node in enumerate(original.graph.node)}
        targets.sort(key=lambda t: min(position.get(node.name, 0) for node, _ in t.uses))
        compressed = onnx.ModelProto()
        compressed.CopyFrom(original)
        initializers = {t.name: t for t in compressed.graph.initializer}
        main_nodes = {id(node) for node in state.graph.nodes}  # a tensor inside an If/Loop/Scan body is no graph output
        for target in targets:
            target.layer_input = layer_input(target, main_nodes)
        for target in progress.track(targets, "sequential layers"):
            with progress.silenced():  # one bar for the layers, not one per layer's steps
                if target.layer_input is not None:
                    stats = collect(compressed, {target.name: target.layer_input}, self.data, batch=self.batch,
                                    threshold=self.threshold, original=original)
                    target.statistics = stats[target.name]
                single = CompressionState(state.graph, [target])
                for step in self.steps:
                    step(single)
            if target.name in initializers:
                initializers[target.name].CopyFrom(numpy_helper.from_array(target.decoded(), target.name))
        return PassResult(False, f"compressed {len(targets)} layers in graph order")
