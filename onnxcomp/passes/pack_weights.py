"""PackWeightsPass: encode each shared weight as a record and rewrite its consumers to custom ops.

Rewrites (ops in domain ``ai.onnxcomp``, see docs/ops.md):
- MatMul with a 2-D weight on the right -> CodebookMatMul(X, record)
- Gemm (transA=0) with a constant B -> CodebookMatMul(A, record[, bias]) and, only where needed, Mul by
  alpha and Add of beta*C; B is stored transposed when every fused use has transB=1, so the record is [K, N]
- Gather (axis 0) of a table -> CodebookGather(record, indices)
- Conv with the weight in slot 1 -> CodebookConv(X, record[, bias[, scale]]) with Conv's attributes; a
  BatchNormalization that alone reads the Conv's output is folded in (scale = gamma / sqrt(var + eps),
  bias = (B - mean) * scale + beta, the same folding onnxruntime applies to a dense Conv), then an activation that
  alone reads the result (Relu, Tanh, Sigmoid, LeakyRelu, Clip with constant bounds, HardSigmoid) becomes the
  node's ``activation`` attribute, as in onnxruntime's FusedConv
- any other consumer -> the output of one shared CodebookDecode(record) node (plus a Transpose if stored
  transposed), placed in the graph of that consumer (an If branch, a Loop or Scan body, or the main graph)
The record bytes become a uint8 constant; the writer later moves it into the sidecar as external data.
Storage: a record costs its header and tables plus the Huffman-coded indices, against 4 bytes per weight.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp import progress
from onnxcomp.core import sidecar

from .base import DOMAIN, CompressionState, GraphPass, PassResult, WeightTarget, read_values
from .select_weights import all_graphs

RECORD_SUFFIX = ".onnxcomp_record"


def _attr(node: gs.Node, name: str, default):
    return node.attrs.get(name, default)


def _fusable_gemm(node: gs.Node, slot: int) -> bool:
    return node.op == "Gemm" and slot == 1 and _attr(node, "transA", 0) == 0


class PackWeightsPass(GraphPass):
    def __init__(self, *, fuse: bool = True) -> None:
        self.fuse = fuse

    def run(self, state: CompressionState) -> PassResult:
        targets = [t for t in state.targets if t.codebook is not None and not t.packed and not t.portable]
        owners = {id(node): graph for graph in all_graphs(state.graph) for node in graph.nodes}
        for target in progress.track(targets, "packing records"):
            self._pack(state.graph, target, owners)
        if targets:
            state.graph.cleanup().toposort()
        return PassResult(bool(targets), f"packed {len(targets)} tensors")

    def encode(self, target: WeightTarget, release: bool = False) -> None:
        """Encode ``target``'s record (choosing its stored orientation); with ``release``, drop its indices and
        refit values too. Streaming compression has ShareWeightsPass call this as each weight is shared, so
        only one weight's arrays are alive at a time."""
        if target.record is not None:
            return
        rank = len(target.shape)
        gemm_uses = [(n, s) for n, s in target.uses if self.fuse and _fusable_gemm(n, s)]
        target.transposed = (
            rank == 2 and bool(gemm_uses) and len(gemm_uses) == len(target.uses)
            and all(_attr(n, "transB", 0) == 1 for n, _ in gemm_uses))
        indices = target.indices.reshape(target.shape)
        dims = target.shape
        positions, values = target.outlier_positions, target.outlier_values
        if target.transposed:
            indices, dims = indices.T, dims[::-1]
            rows, columns = np.divmod(positions, target.shape[1])
            transposed = columns * target.shape[0] + rows
            order = np.argsort(transposed)
            positions, values = transposed[order], values[order]
        bits = max(1, int(np.ceil(np.log2(max(len(target.codebook), 2)))))
        target.record = sidecar.encode_record(target.codebook, indices, dims, bits, positions, values)
        del indices
        if release:
            target.release()

    def _pack(self, graph: gs.Graph, target: WeightTarget, owners: dict[int, gs.Graph]) -> None:
        self.encode(target)
        target.packed = True
        rank = len(target.shape)
        record = gs.Constant(target.name + RECORD_SUFFIX, np.frombuffer(target.record, dtype=np.uint8))
        dense: dict[int, gs.Variable] = {}  # one decode per graph holding a non-fused consumer
        for node, slot in target.uses:
            stored_as_used = target.transposed == (node.op == "Gemm" and _attr(node, "transB", 0) == 1)
            if self.fuse and rank == 2 and stored_as_used and (
                    (node.op == "MatMul" and slot == 1) or _fusable_gemm(node, slot)):
                self._to_matmul(owners.get(id(node), graph), node, record)
            elif self.fuse and node.op == "Conv" and slot == 1 and rank >= 3 and not target.transposed:
                _to_conv(owners.get(id(node), graph), node, record, int(target.shape[0]))
            elif self.fuse and node.op == "Gather" and slot == 0 and _attr(node, "axis", 0) == 0:
                node.op, node.domain, node.attrs = "CodebookGather", DOMAIN, {}
                node.inputs = [record, node.inputs[1]]
            else:
                owner = owners.get(id(node), graph)
                if id(owner) not in dense:
                    suffix = f".{len(dense)}" if dense else ""
                    dense[id(owner)] = self._decode_node(owner, target, record, suffix)
                node.inputs[slot] = dense[id(owner)]

    def _decode_node(self, graph: gs.Graph, target: WeightTarget, record: gs.Constant, suffix: str = "") -> gs.Variable:
        name = target.name + suffix
        dense = gs.Variable(name + ".decoded", dtype=np.float32, shape=list(target.shape))
        if not target.transposed:
            graph.nodes.append(gs.Node("CodebookDecode", name + ".decode", domain=DOMAIN, inputs=[record], outputs=[dense]))
            return dense
        stored = gs.Variable(name + ".decoded_t", dtype=np.float32, shape=list(target.shape[::-1]))
        graph.nodes.append(gs.Node("CodebookDecode", name + ".decode", domain=DOMAIN, inputs=[record], outputs=[stored]))
        graph.nodes.append(gs.Node("Transpose", name + ".transpose", attrs={"perm": [1, 0]}, inputs=[stored], outputs=[dense]))
        return dense

    def _to_matmul(self, graph: gs.Graph, node: gs.Node, record: gs.Constant) -> None:
        """Turn MatMul or Gemm into CodebookMatMul, keeping Gemm's alpha, beta and C exact."""
        x = node.inputs[0]
        if node.op == "MatMul":
            node.op, node.domain, node.attrs, node.inputs = "CodebookMatMul", DOMAIN, {}, [x, record]
            return
        alpha = float(_attr(node, "alpha", 1.0))
        beta = float(_attr(node, "beta", 1.0))
        c = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
        output = node.outputs[0]
        n_out = record_out_features(record)
        bias = None
        if c is not None and alpha == 1.0 and isinstance(c, gs.Constant) and tuple(c.shape) in ((n_out,), (1, n_out)) \
                and np.dtype(c.dtype) == np.float32:
            values = np.asarray(c.values, dtype=np.float32).reshape(n_out)
            bias = c if beta == 1.0 and tuple(c.shape) == (n_out,) else gs.Constant(
                node.name + ".bias", (np.float32(beta) * values).astype(np.float32))
            c = None
        tail = []  # standard nodes applying alpha and beta*C after the product
        current = output
        if c is not None:
            product = gs.Variable(node.name + ".scaled", dtype=np.float32)
            addend = c
            if beta != 1.0:
                addend = gs.Variable(node.name + ".beta_c", dtype=np.float32)
                tail.append(gs.Node("Mul", node.name + ".beta", inputs=[c, gs.Constant(node.name + ".beta_value", np.array(beta, np.float32))], outputs=[addend]))
            tail.append(gs.Node("Add", node.name + ".add_c", inputs=[product, addend], outputs=[current]))
            current = product
        if alpha != 1.0:
            product = gs.Variable(node.name + ".product", dtype=np.float32)
            tail.append(gs.Node("Mul", node.name + ".alpha", inputs=[product, gs.Constant(node.name + ".alpha_value", np.array(alpha, np.float32))], outputs=[current]))
            current = product
        node.op, node.domain, node.attrs = "CodebookMatMul", DOMAIN, {}
        node.inputs = [x, record] + ([bias] if bias is not None else [])
        node.outputs = [current]
        graph.nodes.extend(tail)


CONV_ATTRIBUTES = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def _constant_array(tensor) -> np.ndarray | None:
    """The values of a constant tensor (initializer or Constant node output), else None."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(read_values(tensor))
    if isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(read_values(value))
    return None


def _sole_consumer(graph: gs.Graph, tensor: gs.Variable, ops: tuple[str, ...]) -> gs.Node | None:
    """The one node reading ``tensor`` when it is one of ``ops`` in the default domain and the tensor is no graph output."""
    if len(tensor.outputs) != 1 or any(tensor is out for out in graph.outputs):
        return None
    node = tensor.outputs[0]
    return node if node.op in ops and not node.domain and len(node.outputs) >= 1 else None


def _fold_batch_norm(node: gs.Node, out_channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) with BN(y) = y * scale + shift per channel, or None when BN's parameters are not constant."""
    if len(node.inputs) != 5 or int(_attr(node, "training_mode", 0)) != 0 or len([o for o in node.outputs if o.name]) != 1:
        return None
    gamma, beta, mean, var = (_constant_array(t) for t in node.inputs[1:])
    if any(v is None or v.shape != (out_channels,) for v in (gamma, beta, mean, var)):
        return None
    epsilon = np.float32(_attr(node, "epsilon", 1e-5))
    scale = (gamma.astype(np.float32) / np.sqrt(var.astype(np.float32) + epsilon)).astype(np.float32)
    return scale, (beta.astype(np.float32) - mean.astype(np.float32) * scale).astype(np.float32)


def _activation(node: gs.Node) -> tuple[str, list[float]] | None:
    """(activation, activation_params) of FusedConv for an activation node, or None when it does not qualify."""
    if node.op in ("Relu", "Tanh", "Sigmoid"):
        return node.op, []
    if node.op == "LeakyRelu":
        return "LeakyRelu", [float(_attr(node, "alpha", 0.01))]
    if node.op == "HardSigmoid":
        return "HardSigmoid", [float(_attr(node, "alpha", 0.2)), float(_attr(node, "beta", 0.5))]
    if node.op == "Clip":
        bounds = [float(_attr(node, "min", np.finfo(np.float32).min)), float(_attr(node, "max", np.finfo(np.float32).max))]
        for i, tensor in enumerate(node.inputs[1:3]):
            if not tensor.name:
                continue
            value = _constant_array(tensor)
            if value is None or value.size != 1:
                return None
            bounds[i] = float(value.reshape(()))
        return "Clip", bounds
    return None


def _fresh_name(graph: gs.Graph, base: str) -> str:
    taken = graph.tensors().keys() | {n.name for n in graph.nodes}
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}.{i}"
    return name


def _to_conv(graph: gs.Graph, node: gs.Node, record: gs.Constant, out_channels: int) -> None:
    """Turn Conv(X, W[, B]) into CodebookConv(X, record[, bias[, scale]]), folding a following BatchNormalization and
    then an activation into it (see the module docstring)."""
    attrs = {k: v for k, v in node.attrs.items() if k in CONV_ATTRIBUTES}
    inputs = [node.inputs[0], record]
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    output = node.outputs[0]
    scale = None
    norm = _sole_consumer(graph, output, ("BatchNormalization",))
    folded = _fold_batch_norm(norm, out_channels) if norm is not None else None
    bias_values = _constant_array(bias) if bias is not None else np.zeros(out_channels, np.float32)
    if folded is not None and bias_values is not None and bias_values.shape == (out_channels,):
        scale_values, shift = folded
        scale = gs.Constant(_fresh_name(graph, node.name + ".scale"), scale_values)
        bias = gs.Constant(_fresh_name(graph, node.name + ".bias"),
                           (bias_values.astype(np.float32) * scale_values + shift).astype(np.float32))
        output = norm.outputs[0]
        norm.inputs, norm.outputs = [], []
    activation = _sole_consumer(graph, output, ("Relu", "Tanh", "Sigmoid", "LeakyRelu", "HardSigmoid", "Clip"))
    fused = _activation(activation) if activation is not None else None
    if fused is not None:
        attrs["activation"] = fused[0]
        if fused[1]:
            attrs["activation_params"] = fused[1]
        output = activation.outputs[0]
        activation.inputs, activation.outputs = [], []
    if bias is not None or scale is not None:
        inputs.append(bias if bias is not None else gs.Variable.empty())
    if scale is not None:
        inputs.append(scale)
    node.op, node.domain, node.attrs, node.inputs, node.outputs = "CodebookConv", DOMAIN, attrs, inputs, [output]


def record_out_features(record: gs.Constant) -> int:
    """N of a [K, N] record, read from its header (docs/format.md: dims start at byte 24)."""
    data = np.asarray(record.values, dtype=np.uint8)
    return int(data[32:40].view("<u8")[0])
