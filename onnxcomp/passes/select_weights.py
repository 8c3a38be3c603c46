"""SelectWeightsPass: find the float32 constant weights worth compressing.

A weight qualifies when it is a float32 constant with at least ``min_elements`` elements that feeds a weight
slot: Conv/ConvTranspose input 1, Gemm or MatMul input 0 or 1, Gather input 0 (embedding tables), in the main
graph or in any control-flow subgraph (If branches, Loop and Scan bodies). Other consumers of a qualifying
weight receive the decoded dense tensor. The decision uses shape and dtype first; only a weight that passes is
read, once, to check that it holds no NaN or Inf (which k-means cannot cluster: such a weight is left dense
with a warning, so the output computes exactly what the input did). Integer weights of already-quantized
ops (QLinearMatMul, ConvInteger, DequantizeLinear, ...) are reported as skipped, never touched. ``rules``
(onnxcomp.recipes.LayerRule) with ``skip`` leave matching weights dense.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.core.recipes import LayerRule, rule_value

from .base import CompressionState, GraphPass, PassResult, WeightTarget, log, read_values

WEIGHT_SLOTS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (0, 1), "MatMul": (0, 1), "Gather": (0,)}
QUANTIZED_SLOTS = {"QLinearMatMul": (0, 3), "QLinearConv": (0, 3), "MatMulInteger": (0, 1), "ConvInteger": (0, 1),
                   "DequantizeLinear": (0,)}


def all_graphs(graph: gs.Graph) -> list[gs.Graph]:
    """``graph`` and every subgraph nested in its nodes' attributes."""
    return [graph, *graph.subgraphs(recursive=True)]


def weight_kind(uses: list[tuple[gs.Node, int]]) -> str:
    ops = {node.op for node, _ in uses}
    if ops & {"Conv", "ConvTranspose"}:
        return "conv"
    if "Gather" in ops:
        return "embedding"
    return "fc"


class SelectWeightsPass(GraphPass):
    def __init__(self, *, min_elements: int = 1024, rules: tuple[LayerRule, ...] = ()) -> None:
        self.min_elements, self.rules = min_elements, tuple(rules)

    def run(self, state: CompressionState) -> PassResult:
        chosen = {t.name for t in state.targets}
        before = len(state.targets)
        seen: set[int] = set()
        for graph in all_graphs(state.graph):
            for tensor in graph.tensors().values():
                if not isinstance(tensor, gs.Constant) or tensor.name in chosen or id(tensor) in seen:
                    continue
                seen.add(id(tensor))
                self._consider(state, tensor)
        added = len(state.targets) - before
        return PassResult(added > 0, f"selected {added} weights")

    def _consider(self, state: CompressionState, tensor: gs.Constant) -> None:
        uses = [(node, slot) for node in tensor.outputs for slot, t in enumerate(node.inputs) if t is tensor]
        weight_uses = [(n, s) for n, s in uses if s in WEIGHT_SLOTS.get(n.op, ()) and not n.domain]
        quantized = [n.op for n, s in uses if s in QUANTIZED_SLOTS.get(n.op, ()) and not n.domain]
        if quantized and not weight_uses:
            self._skip(state, tensor, f"already quantized (feeds {quantized[0]}); onnxcomp compresses float32 weights only", log.info)
            return
        if not weight_uses:
            return
        reason = self._skip_reason(tensor, state.graph_inputs)
        if reason:
            self._skip(state, tensor, reason, log.info)
            return
        values = read_values(tensor)  # read once here, not kept: the passes read it again when they need it
        non_finite = int(np.size(values) - np.isfinite(values).sum())
        del values
        if non_finite:
            self._skip(state, tensor, f"holds {non_finite} NaN/Inf value{'s' if non_finite > 1 else ''}, which cannot be "
                                      "clustered; fix the model if they are not intended", log.warning)
            return
        for node, slot in uses:
            if (node, slot) not in weight_uses:
                log.info("%s also feeds %s (%s): it gets the decoded dense tensor", tensor.name, node.name, node.op)
        state.targets.append(WeightTarget(tensor.name, tensor, weight_kind(weight_uses), uses))

    @staticmethod
    def _skip(state: CompressionState, tensor: gs.Constant, reason: str, logger) -> None:
        logger("left %s dense: %s", tensor.name, reason)
        state.skipped.append((tensor.name, reason))

    def _skip_reason(self, tensor: gs.Constant, graph_inputs: set[str]) -> str | None:
        try:
            dtype = np.dtype(tensor.dtype) if tensor.dtype is not None else None
        except TypeError:  # graphsurgeon gives the ONNX type number for types numpy lacks (bfloat16, float8)
            dtype = onnx.helper.tensor_dtype_to_string(tensor.dtype).removeprefix("TensorProto.").lower()
        if dtype != np.float32:
            return f"dtype {dtype} (only float32 weights are compressed)"
        size = int(np.prod(tensor.shape, dtype=np.int64))
        if size < self.min_elements:
            return f"{size} elements, below --min-elements {self.min_elements}"
        if tensor.name in graph_inputs:
            return "it is also a graph input, so callers may override it at run time"
        if rule_value(self.rules, tensor.name, "skip"):
            pattern = next(r.pattern for r in reversed(self.rules) if r.skip and r.matches(tensor.name))
            return f"skipped by the layer rule {pattern!r}"
        return None
