"""SelectWeightsPass: find the float constants worth compressing, whatever reads them.

Every float constant (float32, float16 or bfloat16; an initializer or a Constant node's value, in the main
graph or in any If branch, Loop or Scan body) with at least ``min_elements`` elements is a candidate, and
every node reading it is served: a fused kernel where one exists, else the decoded tensor in its original
dtype (passes/pack_weights.py). What the weight is (its *kind*, which picks the per-kind bits and sparsity)
is decided by its final consumers, found by following the weight through shape-only ops
(``CHAIN_OPS``: Transpose, Reshape, Flatten, Squeeze, Unsqueeze, Identity, Cast, Slice, Split, Concat, ...):
- ``conv``: Conv / ConvTranspose weights;
- ``embedding``: tables read by Gather;
- ``fc``: MatMul, Gemm ``A``/``B``, Einsum, LSTM / GRU / RNN ``W`` and ``R``, attention ops;
- ``other``: anything else (normalization scales, added tables, biases), kept unpruned by default.

A candidate is left dense, with its reason in ``state.skipped`` (and a log line), when it is also a graph
input (callers may override it), a graph output, read by no node, matched by a ``skip`` layer rule
(onnxcomp.recipes.LayerRule), or holds NaN/Inf (which k-means cannot cluster: the output then computes
exactly what the input did). Float tensors of other dtypes (float64) are reported as skipped, and integer
weights of already-quantized ops (QLinearMatMul, ConvInteger, DequantizeLinear, ...) too; they are never
touched here (IntegerWeightsPass codes some losslessly). In an already-quantized model (one with any of
``QUANTIZED_OPS``) float tensors of kind ``other`` (biases, requantisation scales) are left exact too: a lossy bias
of an integer matmul moves the logits the model was quantized around (measured on the zoo's ddddocr-ocr-old: its two
float biases coded lossily cost 0.9 points of exact-match accuracy). Each decision is logged at debug level
(``--verbose``).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.core.recipes import LayerRule, rule_value

from .base import FLOAT_TYPES, CompressionState, ExternalValues, GraphPass, PassResult, WeightTarget, float_values, log, onnx_type
from .names import all_graphs


def non_finite_reason(values: np.ndarray) -> str | None:
    """Why a weight holding NaN or Inf stays dense (None when every value is finite)."""
    non_finite = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
    if not non_finite:
        return None
    return (f"holds {non_finite} NaN/Inf value{'s' if non_finite > 1 else ''}, which cannot be clustered; fix the "
            "model if they are not intended")


def drop_non_finite(state: CompressionState, target: WeightTarget, reason: str) -> None:
    """Leave a weight found to hold NaN/Inf (``reason`` from non_finite_reason) dense: out of the targets, skipped."""
    log.warning("left %s dense: %s", target.name, reason)
    state.targets.remove(target)
    state.skipped.append((target.name, reason))


__all__ = ["SelectWeightsPass", "all_graphs", "final_consumers", "weight_kind", "CHAIN_OPS"]

# Ops that only move or retype a weight's values: the weight's kind comes from what reads their output.
# Value: the input slots carrying the data (None: every slot).
CHAIN_OPS = {"Transpose": (0,), "Reshape": (0,), "Flatten": (0,), "Squeeze": (0,), "Unsqueeze": (0,),
             "Identity": (0,), "Cast": (0,), "CastLike": (0,), "Slice": (0,), "Split": (0,), "Concat": None,
             "Expand": (0,), "Tile": (0,)}
CONV_SLOTS = {"Conv": (1,), "ConvTranspose": (1,)}
# The inputs holding a fully connected layer's weights (None: every input); a bias (Gemm C, LSTM B) is "other".
FC_SLOTS = {"MatMul": (0, 1), "Gemm": (0, 1), "FusedMatMul": (0, 1), "LSTM": (1, 2), "GRU": (1, 2), "RNN": (1, 2),
            "Einsum": None, "Attention": (1,), "MultiHeadAttention": None}
FC_OPS = set(FC_SLOTS)
QUANTIZED_SLOTS = {"QLinearMatMul": (0, 3), "QLinearConv": (0, 3), "MatMulInteger": (0, 1), "ConvInteger": (0, 1),
                   "DequantizeLinear": (0,)}
KIND_ORDER = ("conv", "embedding", "fc", "other")
# Ops computing on integer-quantized weights: a model holding one is already quantized, and its float tensors of kind
# "other" (biases, requantisation scales) stay exact (see SelectWeightsPass).
QUANTIZED_OPS = {"QLinearMatMul", "QLinearConv", "MatMulInteger", "ConvInteger", "DynamicQuantizeLSTM",
                 "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention", "QGemm"}


def uses_of(tensor: gs.Tensor) -> list[tuple[gs.Node, int]]:
    """(node, input slot) for every node reading ``tensor``, in any graph (subgraphs share outer tensors)."""
    return [(node, slot) for node in tensor.outputs for slot, t in enumerate(node.inputs) if t is tensor]


def final_consumers(tensor: gs.Tensor) -> list[tuple[gs.Node, int, tuple[str, ...]]]:
    """(node, slot, chain) for each node that reads ``tensor``'s values, directly or through ``CHAIN_OPS``
    (chain: the ops passed through, in order). A chain op reading it in a non-data slot (a shape) is a final
    consumer."""
    found, seen = [], set()
    queue: list[tuple[gs.Tensor, tuple[str, ...]]] = [(tensor, ())]
    while queue:
        current, chain = queue.pop(0)
        for node, slot in uses_of(current):
            data_slots = CHAIN_OPS.get(node.op) if not node.domain else ()
            link = node.op in CHAIN_OPS and not node.domain and (data_slots is None or slot in data_slots)
            if link and id(node) not in seen and node.outputs:
                seen.add(id(node))
                queue.extend((out, chain + (node.op,)) for out in node.outputs)
            elif not link:
                found.append((node, slot, chain))
    return found


def weight_kind(consumers: list[tuple[gs.Node, int, tuple[str, ...]]]) -> str:
    """The kind of a weight read by ``consumers`` (final_consumers): conv > embedding > fc > other."""
    kinds = set()
    for node, slot, _ in consumers:
        if node.domain:
            kinds.add("other")
        elif slot in CONV_SLOTS.get(node.op, ()):
            kinds.add("conv")
        elif node.op == "Gather" and slot == 0:
            kinds.add("embedding")
        elif node.op in FC_SLOTS and (FC_SLOTS[node.op] is None or slot in FC_SLOTS[node.op]):
            kinds.add("fc")
        else:
            kinds.add("other")
    return next((k for k in KIND_ORDER if k in kinds), "other")


def describe(consumers: list[tuple[gs.Node, int, tuple[str, ...]]]) -> str:
    """``MatMul, Conv via Transpose>Reshape``: the final consumers' ops and the chains leading to them."""
    parts = sorted({node.op + (f" via {'>'.join(chain)}" if chain else "") for node, _, chain in consumers})
    return ", ".join(parts)


def fusable_gemm(node: gs.Node, slot: int) -> bool:
    """Gemm reading the weight as B with A untransposed: CodebookMatMul computes it."""
    return node.op == "Gemm" and not node.domain and slot == 1 and node.attrs.get("transA", 0) == 0


def fused_route(node: gs.Node, slot: int, rank: int, is_float: bool, outputs: set[int],
                flipped: bool = False) -> list[tuple[gs.Node, bool]] | None:
    """The MatMul/Gemm nodes a CodebookMatMul can replace when a rank-2 weight enters ``node`` at ``slot``,
    each with whether it multiplies by the weight's transpose; None when some path cannot be fused.

    The weight may pass through Transpose (perm [1, 0]), Cast to float32 and Identity first, as long as
    every reader of those ops' outputs is itself fusable (the ops then become dead and are removed).
    ``is_float``: the values reaching ``node`` are float32 (CodebookMatMul computes in float32)."""
    if rank != 2 or node.domain:
        return None
    if node.op == "MatMul" and slot == 1:
        return [(node, flipped)] if is_float else None
    if fusable_gemm(node, slot):
        return [(node, flipped != bool(node.attrs.get("transB", 0)))] if is_float else None
    if slot != 0 or node.op not in ("Transpose", "Cast", "Identity") or len(node.outputs) != 1:
        return None
    if node.op == "Transpose":
        if list(node.attrs.get("perm", [1, 0])) != [1, 0]:
            return None
        flipped = not flipped
    elif node.op == "Cast":
        if node.attrs.get("to") != onnx.TensorProto.FLOAT:
            return None
        is_float = True
    out = node.outputs[0]
    readers = uses_of(out)
    if id(out) in outputs or not readers:
        return None
    routes = []
    for reader, reader_slot in readers:
        route = fused_route(reader, reader_slot, rank, is_float, outputs, flipped)
        if route is None:
            return None
        routes.extend(route)
    return routes


class SelectWeightsPass(GraphPass):
    """Chooses the weights to compress. ``check_finite``: read each weight held in the model here to leave one with
    NaN/Inf dense; False defers the check to the first pass that reads the weight anyway (the allocation, the
    global pruning or the sharing, each checks a target not yet ``checked``), as for weights streamed from
    external data: one read of every weight fewer. The pipeline defers it when no calibration runs (calibration
    runs the model on the weights before any of those passes)."""

    def __init__(self, *, min_elements: int = 1024, rules: tuple[LayerRule, ...] = (), check_finite: bool = True) -> None:
        self.min_elements, self.rules, self.check_finite = min_elements, tuple(rules), check_finite
        self.quantized: str | None = None  # the first quantized op of the model (run)

    def run(self, state: CompressionState) -> PassResult:
        chosen = {t.name for t in state.targets}
        before = len(state.targets)
        self.quantized = next((n.op for g in all_graphs(state.graph) for n in g.nodes if n.op in QUANTIZED_OPS), None)
        seen: set[int] = set()
        outputs = {id(t) for g in all_graphs(state.graph) for t in g.outputs}
        for graph in all_graphs(state.graph):
            for tensor in graph.tensors().values():
                if not isinstance(tensor, gs.Constant) or tensor.name in chosen or id(tensor) in seen:
                    continue
                seen.add(id(tensor))
                self._consider(state, tensor, outputs)
        added = len(state.targets) - before
        return PassResult(added > 0, f"selected {added} weights")

    def _consider(self, state: CompressionState, tensor: gs.Constant, outputs: set[int]) -> None:
        uses = uses_of(tensor)
        quantized = [n.op for n, s in uses if s in QUANTIZED_SLOTS.get(n.op, ()) and not n.domain]
        element_type = onnx_type(tensor)
        if element_type not in FLOAT_TYPES:
            size = int(np.prod(tensor.shape, dtype=np.int64))
            if quantized and size >= self.min_elements:
                # IntegerWeightsPass decides about it (and states its own reason)
                self._skip(state, tensor, f"already quantized (feeds {quantized[0]})", log.debug)
            elif element_type == onnx.TensorProto.DOUBLE and size >= self.min_elements:
                self._skip(state, tensor, "dtype float64 (float32, float16 and bfloat16 weights are compressed)", log.info)
            return
        reason = self._skip_reason(tensor, state.graph_inputs, uses, id(tensor) in outputs)
        if reason:
            if not reason.startswith("-"):
                self._skip(state, tensor, reason, log.info)
            return
        # checked by the first pass that reads it: a streamed weight, or any without calibration (check_finite False)
        deferred = isinstance(tensor._values, ExternalValues) or not self.check_finite
        if not deferred:
            reason = non_finite_reason(float_values(tensor))  # read here, not kept: the passes read it when they need it
            if reason:
                self._skip(state, tensor, reason, log.warning)
                return
        consumers = final_consumers(tensor)
        kind = weight_kind(consumers)
        if kind == "other" and self.quantized:
            self._skip(state, tensor, f"a bias or scale of an already-quantized model (it has {self.quantized}): kept exact, "
                       "so the integer ops' outputs stay the original's", log.info)
            return
        log.debug("%s %s %s: compressed as %s (read by %s)", tensor.name, list(tensor.shape),
                  onnx.helper.tensor_dtype_to_np_dtype(element_type) if element_type != onnx.TensorProto.BFLOAT16 else "bfloat16",
                  kind, describe(consumers))
        rank, is_float = len(tensor.shape), element_type == onnx.TensorProto.FLOAT
        routes = [fused_route(node, slot, rank, is_float, outputs) for node, slot in uses]
        state.targets.append(WeightTarget(tensor.name, tensor, kind, uses, dtype=element_type, routes=routes, checked=not deferred))

    @staticmethod
    def _skip(state: CompressionState, tensor: gs.Constant, reason: str, logger) -> None:
        logger("left %s dense: %s", tensor.name, reason)
        state.skipped.append((tensor.name, reason))

    def _skip_reason(self, tensor: gs.Constant, graph_inputs: set[str], uses, is_output: bool) -> str | None:
        """Why a float constant stays dense (None: it is compressed); a reason starting with '-' is not reported
        (a small tensor no conv, fc or embedding op reads: biases and scales are dense by design)."""
        size = int(np.prod(tensor.shape, dtype=np.int64))
        if size < self.min_elements:  # reported for conv/fc/embedding weights; small biases and scales stay quiet
            reason = f"{size} elements, below --min-elements {self.min_elements}"
            if weight_kind(final_consumers(tensor)) == "other":
                log.debug("left %s dense: %s", tensor.name, reason)
                return "-" + reason
            return reason
        if tensor.name in graph_inputs:
            return "it is also a graph input, so callers may override it at run time"
        if rule_value(self.rules, tensor.name, "skip"):
            pattern = next(r.pattern for r in reversed(self.rules) if r.skip and r.matches(tensor.name))
            return f"skipped by the layer rule {pattern!r}"
        if is_output:
            return "it is a graph output: the model returns it as stored"
        if not uses:
            return "no node reads it"
        return None
