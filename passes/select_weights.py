"""SelectWeightsPass: find the float32 constant weights worth compressing.

A weight qualifies when it is a float32 constant with at least ``min_elements`` elements that feeds a weight
slot: Conv/ConvTranspose input 1, Gemm or MatMul input 0 or 1, Gather input 0 (embedding tables). Other
consumers of a qualifying weight receive the decoded dense tensor. The decision uses only shape and dtype,
so no weight data is read here. ``rules`` (onnxcomp.recipes.LayerRule) with ``skip`` leave matching weights
dense.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.recipes import LayerRule, rule_value

from .base import CompressionState, GraphPass, PassResult, WeightTarget, log

WEIGHT_SLOTS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (0, 1), "MatMul": (0, 1), "Gather": (0,)}


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
        graph = state.graph
        graph_inputs = {t.name for t in graph.inputs}
        chosen = {t.name for t in state.targets}
        before = len(state.targets)
        for tensor in graph.tensors().values():
            if not isinstance(tensor, gs.Constant) or tensor.name in chosen:
                continue
            uses = [(node, slot) for node in tensor.outputs for slot, t in enumerate(node.inputs) if t is tensor]
            weight_uses = [(n, s) for n, s in uses if s in WEIGHT_SLOTS.get(n.op, ()) and not n.domain]
            if not weight_uses:
                continue
            reason = self._skip_reason(tensor, graph_inputs)
            if reason:
                log.info("left %s dense: %s", tensor.name, reason)
                state.skipped.append((tensor.name, reason))
                continue
            for node, slot in uses:
                if (node, slot) not in weight_uses:
                    log.info("%s also feeds %s (%s): it gets the decoded dense tensor", tensor.name, node.name, node.op)
            state.targets.append(WeightTarget(tensor.name, tensor, weight_kind(weight_uses), uses))
        added = len(state.targets) - before
        return PassResult(added > 0, f"selected {added} weights")

    def _skip_reason(self, tensor: gs.Constant, graph_inputs: set[str]) -> str | None:
        dtype = np.dtype(tensor.dtype) if tensor.dtype is not None else None
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
