"""IntegerWeightsPass: lossless entropy coding of the 8-bit integer weights of already-quantized ops.

A model quantized by onnxruntime's ``quantize_dynamic`` (or any tool writing ConvInteger, MatMulInteger or
DynamicQuantizeLSTM) holds its weights as int8 / uint8 initializers. Their values are already on a grid, so a
codebook of the weight's distinct integers with Huffman-coded indices stores them exactly, in about the order-0
entropy of the values (2.5-7 bits per value on the zoo's ddddocr-ocr-old, measured) instead of 8 bits. The
record has value type 2 (uint8) or 3 (int8) (docs/format.md); a ``CodebookDecodeUInt8`` / ``CodebookDecodeInt8``
node (docs/ops.md) decodes it once, at session creation, and hands the exact original tensor to the unchanged
quantized op (a Gather table is read by ``CodebookGatherUInt8`` / ``CodebookGatherInt8`` instead): the outputs are
bit-identical to the input model's.

Which weights (``integer_weights``, each level adds to the one before):
- ``"off"``: none; integer weights stay as they are;
- ``"gather"`` (the default): tables read by Gather (axis 0; quantize_dynamic quantizes embeddings so): the Gather
  becomes ``CodebookGatherUInt8`` / ``CodebookGatherInt8``, which copies the rows asked for out of its decoded copy,
  as Gather does out of the initializer: no run-time cost;
- ``"conv"``: ConvInteger ``w``;
- ``"all"``: MatMulInteger ``B`` and DynamicQuantizeLSTM ``W`` / ``R``.
``conv`` and ``all`` cost run time: onnxruntime treats a constant integer weight specially when it creates the
session (it prepacks MatMulInteger ``B`` and DynamicQuantizeLSTM ``W`` / ``R``, and ConvInteger runs faster on a
constant weight too), and a decoded weight is not a constant to it. Measured with one thread (docs/benchmarks.md,
section integer-weights): the zoo's yolov8n and ddddocr-det int8 anchors with ``conv`` 1.38-1.41x smaller,
1.05-1.07x the run time; ddddocr-ocr-old with ``all`` 2.18x smaller, 1.49x the run time (feeding the weights as graph
inputs: ConvInteger 1.03-1.11x, MatMulInteger 1.28x, DynamicQuantizeLSTM 1.37x). Peak RSS grows by about the
records' bytes (the session holds the record and the decoded copy): 1.09-1.24x.
QLinearConv / QLinearMatMul weights and DequantizeLinear inputs (QDQ models) are never touched: onnxruntime
prepacks the first two and fuses DequantizeLinear -> Conv / MatMul into them only for constant weights.

A weight qualifies when it is an int8 / uint8 constant of at least ``min_elements`` elements, not a graph input
or output, matched by no ``skip`` layer rule, and every node reading it reads it in one of the chosen slots; its
record must be smaller than its bytes. The pass runs after PackWeightsPass and adds a WeightTarget (kind
``integer``, dtype int8 / uint8, record set, packed) per weight, so the writer, the report, inspect and decompress
treat it like any record.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.core import sidecar
from onnxcomp.core.recipes import LayerRule, rule_value

from .base import DOMAIN, CompressionState, GraphPass, PassResult, WeightTarget, log, onnx_type, read_values
from .names import UniqueNames, all_graphs, common_graph, parents
from .pack_weights import RECORD_SUFFIX
from .select_weights import uses_of

# (domain, op) -> input slots holding a weight, by policy level: "gather" codes GATHER_SLOTS (tables; a Gather on
# axis 0 becomes CodebookGatherUInt8/Int8, which copies the rows asked for), "conv" adds CONV_SLOTS, "all" adds
# PREPACKED_SLOTS (the readers onnxruntime prepacks when the weight is a constant).
GATHER_SLOTS = {("", "Gather"): (0,)}
CONV_SLOTS = {("", "ConvInteger"): (1,)}
PREPACKED_SLOTS = {("", "MatMulInteger"): (1,), ("com.microsoft", "DynamicQuantizeLSTM"): (1, 2)}
INTEGER_WEIGHTS = ("off", "gather", "conv", "all")
LEVELS = {"off": {}, "gather": GATHER_SLOTS, "conv": {**GATHER_SLOTS, **CONV_SLOTS},
          "all": {**GATHER_SLOTS, **CONV_SLOTS, **PREPACKED_SLOTS}}
DECODE_OPS = {onnx.TensorProto.UINT8: ("CodebookDecodeUInt8", sidecar.UINT8),
              onnx.TensorProto.INT8: ("CodebookDecodeInt8", sidecar.INT8)}
GATHER_OPS = {onnx.TensorProto.UINT8: "CodebookGatherUInt8", onnx.TensorProto.INT8: "CodebookGatherInt8"}


def integer_record(values: np.ndarray, value_type: int) -> tuple[bytes, np.ndarray, int]:
    """The lossless record of an int8 / uint8 tensor ``values`` (any shape): codebook = its distinct values
    (as float32, sorted, except that 0 comes first when present: sparse coding needs it at index 0), one index per element, bits = ceil(log2 K) (at least 1). Returns (record, codebook, bits)."""
    codebook, indices = np.unique(np.asarray(values).ravel(), return_inverse=True)
    if not len(codebook):  # an empty tensor: a codebook needs one entry
        codebook = np.zeros(1, dtype=np.asarray(values).dtype)
    zero = int(np.searchsorted(codebook, 0))
    if zero and zero < len(codebook) and codebook[zero] == 0:  # 0 first, so the encoder may try sparse (gap) coding
        order = np.concatenate([[zero], np.arange(zero), np.arange(zero + 1, len(codebook))])
        codebook, indices = codebook[order], np.argsort(order)[indices]
    bits = max(1, int(np.ceil(np.log2(max(len(codebook), 2)))))
    record = sidecar.encode_record(codebook.astype(np.float32), indices, tuple(int(d) for d in values.shape), bits,
                                   value_type=value_type)
    return record, codebook.astype(np.float32), bits


class IntegerWeightsPass(GraphPass):
    def __init__(self, *, policy: str = "gather", min_elements: int = 1024, rules: tuple[LayerRule, ...] = ()) -> None:
        if policy not in INTEGER_WEIGHTS:
            raise ValueError(f"integer_weights must be one of {', '.join(INTEGER_WEIGHTS)}")
        self.policy, self.min_elements, self.rules = policy, min_elements, tuple(rules)
        self.slots = LEVELS[policy]

    def run(self, state: CompressionState) -> PassResult:
        outputs = {id(t) for g in all_graphs(state.graph) for t in g.outputs}
        owners = {id(node): graph for graph in all_graphs(state.graph) for node in graph.nodes}
        names, parent = UniqueNames(state.graph), parents(state.graph)
        seen: set[int] = set()
        packed = 0
        for graph in all_graphs(state.graph):
            for tensor in list(graph.tensors().values()):
                if not isinstance(tensor, gs.Constant) or id(tensor) in seen or onnx_type(tensor) not in DECODE_OPS:
                    continue
                seen.add(id(tensor))
                packed += self._consider(state, tensor, outputs, owners, parent, names)
        if packed:
            state.graph.cleanup().toposort()
        return PassResult(packed > 0, f"coded {packed} integer weights")

    def _reason(self, state: CompressionState, tensor: gs.Constant, uses, is_output: bool) -> str | None:
        """Why an integer weight of a quantized op stays as it is (None: it is coded); "" for tensors no quantized
        op reads as a weight (not reported)."""
        quantized = [(n, s) for n, s in uses if s in LEVELS["all"].get((n.domain or "", n.op), ())]
        if not quantized:
            return ""
        if int(np.prod(tensor.shape, dtype=np.int64)) < self.min_elements:
            return ""
        op = quantized[0][0].op
        if self.policy == "off":
            return f"already quantized (feeds {op}); --integer-weights gather, conv or all codes it losslessly (docs/guide.md)"
        if tensor.name in state.graph_inputs:
            return "it is also a graph input, so callers may override it at run time"
        if is_output:
            return "it is a graph output: the model returns it as stored"
        if rule_value(self.rules, tensor.name, "skip"):
            return "skipped by a layer rule"
        other = [n.op for n, s in uses if s not in self.slots.get((n.domain or "", n.op), ())]
        if len(other) > len(uses) - len(quantized):  # a quantized reader of a higher policy level
            return (f"already quantized (feeds {other[0]}, which runs slower on a decoded weight than on a constant; "
                    "--integer-weights conv or all codes it losslessly too)")
        if other:
            return f"already quantized, and read by {other[0]} too, which onnxcomp does not serve decoded integers"
        return None

    def _consider(self, state, tensor, outputs, owners, parent, names) -> int:
        uses = uses_of(tensor)
        reason = self._reason(state, tensor, uses, id(tensor) in outputs)
        if reason != "":  # this pass decides about it: its reason replaces SelectWeightsPass's generic one
            state.skipped[:] = [(n, r) for n, r in state.skipped if n != tensor.name]
        if reason:
            log.info("left %s as it is: %s", tensor.name, reason)
            state.skipped.append((tensor.name, reason))
        if reason is not None:
            return 0
        element_type = onnx_type(tensor)
        op, value_type = DECODE_OPS[element_type]
        values = np.asarray(read_values(tensor))
        record, codebook, bits = integer_record(values, value_type)
        if len(record) >= values.size:
            reason = f"coded losslessly it would take {len(record)} bytes, not fewer than its {values.size}"
            log.info("left %s as it is: %s", tensor.name, reason)
            state.skipped.append((tensor.name, reason))
            return 0
        target = WeightTarget(tensor.name, tensor, "integer", uses, codebook=codebook, bits=bits, record=record,
                              packed=True, dtype=element_type)
        target.record_name = names(tensor.name + RECORD_SUFFIX)
        record_tensor = gs.Constant(target.record_name, np.frombuffer(record, dtype=np.uint8))
        decoded_uses = []
        for node, slot in uses:
            if node.op == "Gather" and not node.domain and slot == 0 and node.attrs.get("axis", 0) == 0 and values.ndim:
                node.op, node.domain, node.attrs = GATHER_OPS[element_type], DOMAIN, {}
                node.inputs = [record_tensor, node.inputs[1]]
            else:
                decoded_uses.append((node, slot))
        if decoded_uses:
            graph = common_graph([owners[id(node)] for node, _ in decoded_uses], parent, state.graph)
            decoded = gs.Variable(names(tensor.name + ".decoded"), dtype=values.dtype, shape=list(values.shape))
            graph.nodes.insert(0, gs.Node(op, names(tensor.name + ".decode"), domain=DOMAIN, inputs=[record_tensor],
                                          outputs=[decoded]))
            for node, slot in decoded_uses:
                node.inputs[slot] = decoded
        state.targets.append(target)
        log.debug("%s %s: %d distinct values, record %d of %d bytes (%s)", tensor.name, list(values.shape), len(codebook),
                  len(record), values.size, op)
        return 1
