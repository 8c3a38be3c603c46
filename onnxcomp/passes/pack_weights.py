"""PackWeightsPass: encode each shared weight as a record and rewrite its consumers to custom ops.

Rewrites (ops in domain ``ai.onnxcomp``, see docs/ops.md):
- MatMul with a 2-D weight on the right -> CodebookMatMul(X, record)
- Gemm (transA=0) with a constant B -> CodebookMatMul(A, record[, bias]) and, only where needed, Mul by
  alpha and Add of beta*C; B is stored transposed when every fused use has transB=1, so the record is [K, N]
- Gather (axis 0) of a table -> CodebookGather(record, indices)
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

from .base import DOMAIN, CompressionState, GraphPass, PassResult, WeightTarget
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


def record_out_features(record: gs.Constant) -> int:
    """N of a [K, N] record, read from its header (docs/format.md: dims start at byte 24)."""
    data = np.asarray(record.values, dtype=np.uint8)
    return int(data[32:40].view("<u8")[0])
