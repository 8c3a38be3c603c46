"""PackPortableWeightsPass: express each shared weight in standard ONNX ops, for runtimes without custom ops.

A weight W with codebook c (K float32 values) and indices i becomes ``W = Gather(c, i', axis=0)`` (then
``Cast`` to float16 / bfloat16 for a weight of that type), the last output keeping W's name so every consumer is
unchanged. The lookup sits in the innermost graph enclosing all of W's readers (the main graph, an If branch,
a Loop or Scan body); the names it adds are unique in the model (passes/names.py). The indices are stored with p bits each,
p the smallest of 1, 2, 4, 8, 16 that holds K - 1:
- p = 8 or 16: i is a uint8 / uint16 initializer in W's shape and i' = Cast(i, to=int32);
- p < 8: q = 8 / p indices per byte, first index in the high bits, in a uint8 initializer P of
  ceil(N / q) bytes, unpacked by i' = Reshape(Slice(Reshape(Mod(Div(Reshape(Cast(P), [-1, 1]), d), 2^p)), 0, N)),
  d = [2^(p(q-1)), ..., 2^p, 1]. Slice takes its bounds as inputs from opset 10; older models get p = 8.
Storage: N p / 8 bytes plus 4K, against 4N: 32/p times smaller at most, whatever the sparsity, since there
is no entropy coding. Runtimes fold the constant lookup at load time (onnxruntime does), so the weight
lives dense in memory and runs at dense speed.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto

from onnxcomp import progress

from .base import CompressionState, GraphPass, PassResult, WeightTarget, drop_if_not_smaller
from .names import UniqueNames, all_graphs, common_graph, parents

CODEBOOK_SUFFIX = ".codebook"
INDICES_SUFFIX = ".indices"
SLICE_INPUTS_OPSET = 10


def packing_bits(codebook_size: int) -> int:
    """Bits per stored index: the smallest of 1, 2, 4, 8, 16 that holds indices 0..K-1."""
    return next(p for p in (1, 2, 4, 8, 16) if codebook_size <= 1 << p)


def pack_indices(indices: np.ndarray, bits: int) -> np.ndarray:
    """uint8 bytes holding 8 / bits indices each, the first in the high bits, zero padded at the end."""
    per_byte = 8 // bits
    flat = np.asarray(indices, dtype=np.uint8).ravel()
    padded = np.zeros(-(-len(flat) // per_byte) * per_byte, dtype=np.uint8)
    padded[:len(flat)] = flat
    shifts = bits * np.arange(per_byte - 1, -1, -1, dtype=np.uint8)
    return np.bitwise_or.reduce(padded.reshape(-1, per_byte) << shifts, axis=1).astype(np.uint8)


def portable_bytes(target: WeightTarget, opset: int = SLICE_INPUTS_OPSET) -> int:
    """Bytes the portable form stores for ``target``: packed indices plus the float32 codebook."""
    bits = packing_bits(len(target.codebook))
    if opset < SLICE_INPUTS_OPSET:
        bits = max(bits, 8)
    return -(-target.size * bits // 8) + 4 * len(target.codebook)


class PackPortableWeightsPass(GraphPass):
    def run(self, state: CompressionState) -> PassResult:
        targets = [t for t in state.targets if t.codebook is not None and t.record is None and not t.portable]
        owners = {id(node): graph for graph in all_graphs(state.graph) for node in graph.nodes}
        names, parent = UniqueNames(state.graph), parents(state.graph)
        for target in progress.track(targets, "packing lookups"):
            if drop_if_not_smaller(state, target, portable_bytes(target, state.graph.opset or 0)):
                continue
            graph = common_graph([owners.get(id(node), state.graph) for node, _ in target.uses], parent, state.graph)
            self._pack(graph, target, names, state.graph.opset or 0)
        if targets:
            state.graph.cleanup().toposort()
        return PassResult(bool(targets), f"expressed {len(targets)} tensors as codebook lookups")

    def _pack(self, graph: gs.Graph, target: WeightTarget, names: UniqueNames, opset: int) -> None:
        nodes: list[gs.Node] = []
        codebook = gs.Constant(names(target.name + CODEBOOK_SUFFIX), np.asarray(target.codebook, dtype=np.float32))
        bits = packing_bits(len(target.codebook))
        if opset < SLICE_INPUTS_OPSET:
            bits = max(bits, 8)
        name = target.name
        if bits >= 8:
            stored = target.indices.reshape(target.shape).astype(np.uint8 if bits == 8 else np.uint16)
            indices = gs.Constant(names(name + INDICES_SUFFIX), stored)
            wide = gs.Variable(names(name + ".indices_int32"), dtype=np.int32, shape=list(target.shape))
            nodes.append(gs.Node("Cast", names(name + ".cast_indices"), attrs={"to": TensorProto.INT32}, inputs=[indices], outputs=[wide]))
        else:
            packed = gs.Constant(names(name + INDICES_SUFFIX), pack_indices(target.indices, bits))
            wide = self._unpack(nodes, names, name, packed, bits, target)
        target.constant.name = names(name + ".original")  # frees the name for the lookup's output
        if target.dtype == TensorProto.FLOAT:
            dense = gs.Variable(name, dtype=np.float32, shape=list(target.shape))
            nodes.append(gs.Node("Gather", names(name + ".lookup"), attrs={"axis": 0}, inputs=[codebook, wide], outputs=[dense]))
        else:  # the codebook holds values of the weight's type (ShareWeightsPass): the Cast is exact
            looked_up = gs.Variable(names(name + ".lookup_float"), dtype=np.float32, shape=list(target.shape))
            nodes.append(gs.Node("Gather", names(name + ".lookup"), attrs={"axis": 0}, inputs=[codebook, wide], outputs=[looked_up]))
            dense = gs.Variable(name, dtype=np.float16 if target.dtype == TensorProto.FLOAT16 else target.dtype, shape=list(target.shape))
            nodes.append(gs.Node("Cast", names(name + ".cast"), attrs={"to": target.dtype}, inputs=[looked_up], outputs=[dense]))
        graph.nodes[0:0] = nodes  # reads constants only: first in its graph, before any reader
        for node, slot in target.uses:
            node.inputs[slot] = dense
        target.portable = True

    @staticmethod
    def _unpack(nodes: list[gs.Node], names: UniqueNames, name: str, packed: gs.Constant, bits: int,
                target: WeightTarget) -> gs.Variable:
        """Standard ops turning packed bytes back into int32 indices in the weight's shape."""
        per_byte = 8 // bits

        def variable(suffix: str) -> gs.Variable:
            return gs.Variable(names(f"{name}.{suffix}"), dtype=np.int32)

        def constant(suffix: str, values) -> gs.Constant:
            return gs.Constant(names(f"{name}.{suffix}"), np.asarray(values))

        steps = [  # (op, extra inputs, attributes)
            ("Cast", [], {"to": TensorProto.INT32}),
            ("Reshape", [constant("column_shape", np.array([-1, 1], np.int64))], {}),
            ("Div", [constant("divisors", (1 << (bits * np.arange(per_byte - 1, -1, -1))).astype(np.int32))], {}),
            ("Mod", [constant("modulus", np.array(1 << bits, np.int32))], {}),
            ("Reshape", [constant("flat_shape", np.array([-1], np.int64))], {}),
            ("Slice", [constant("slice_start", np.array([0], np.int64)), constant("slice_end", np.array([target.size], np.int64))], {}),
            ("Reshape", [constant("shape", np.array(target.shape, np.int64))], {}),
        ]
        current: gs.Tensor = packed
        for step, (op, extra, attrs) in enumerate(steps):
            output = variable(f"unpack{step}")
            nodes.append(gs.Node(op, names(f"{name}.unpack{step}"), attrs=attrs, inputs=[current] + extra, outputs=[output]))
            current = output
        return current
