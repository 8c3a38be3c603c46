"""CalibrateWeightsPass: observe each selected weight's input activations on calibration data.

It finds, for every target, the tensor entering its layer (MatMul with the weight on the right, Gemm with
transA=0, 2-D Conv with group 1), runs the still-uncompressed graph in onnxruntime with those tensors as
extra outputs, and stores per-layer statistics (see onnxcomp/calibration.py). Only uses in the main graph
count: a tensor inside an If/Loop/Scan body cannot be made a graph output. Targets with no such use keep
no statistics, and activation-aware steps fall back to magnitude for them, with a log line saying why.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.passes.calibration import LayerInput, collect

from .base import CompressionState, GraphPass, PassResult, WeightTarget, log


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


class CalibrateWeightsPass(GraphPass):
    def __init__(self, *, data: dict[str, np.ndarray], batch: int = 64, threshold: float = 0.0, keep_gram: bool = True) -> None:
        self.data, self.batch, self.threshold, self.keep_gram = data, batch, threshold, keep_gram

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
        if not layers:
            return PassResult(False, "no layer to calibrate")
        model = gs.export_onnx(state.graph.copy())
        stats = collect(model, layers, self.data, batch=self.batch, threshold=self.threshold, keep_gram=self.keep_gram)
        for target in state.targets:
            if target.name in stats:
                target.statistics = stats[target.name]
        return PassResult(False, f"calibrated {len(stats)} layers on {len(next(iter(self.data.values())))} samples")
